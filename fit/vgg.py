"""VGG16 ``features`` in plain torch, laid out exactly like torchvision's, and how bands are fed to it.

torchvision's ``vgg16`` names its convolutions ``features.N`` with N the index in one ``nn.Sequential``
(configuration "D": conv 64, 64, pool, 128, 128, pool, 256 ×3, pool, 512 ×3, pool, 512 ×3, pool). This
module builds the same Sequential, so torchvision's ImageNet file ``vgg16-397923af.pth`` loads as it is,
without torchvision (whose PyPI build does not import beside this project's torch).

The perceptual loss uses relu1_2, relu2_2 and relu3_3 (indices 3, 8, 15: REFERENCE.md "Losses").

Bands to RGB triplets (ImageNet VGG takes 3 channels; the paper's 13-channel VGG is not public): the
prediction and the target are cut into band triplets by name, each fed as one image. The triplets, in
order: (B04, B03, B02) true colour, (B08, B11, B12) NIR/SWIR, (B05, B06, B07) red edge, (B8A, B01, B09).
A triplet is used when at least one of its bands is present; missing members are filled by repeating the
present ones in order. Bands named in no triplet are then grouped by three in band order, the last group
filled by repetition. So 13 L2A bands (with B10) give 5 triplets, WorldCereal's 10 give 4 (the last one
B8A ×3), GreenEarthNet's 4 (B02 B03 B04 B8A) give 2: (B04, B03, B02) and (B8A, B8A, B8A).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fit.errors import WeightsInvalidError, WeightsMissingError

#: torchvision's ImageNet VGG16 weights; the hex in the name is the start of the file's sha256.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_SHA256_PREFIX = "397923af"
#: torchvision's configuration "D" (vgg16): output widths, "M" for a 2×2 max pool.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
#: relu1_2, relu2_2, relu3_3: the layers of Zhang et al.'s perceptual loss (indices in ``features``).
PERCEPTUAL_LAYERS: tuple[int, ...] = (3, 8, 15)
#: ImageNet normalisation torchvision's weights expect, for inputs in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Band triplets by Sentinel-2 name, in the order they are tried (see the module docstring).
BAND_TRIPLETS: tuple[tuple[str, str, str], ...] = (
    ("B04", "B03", "B02"),
    ("B08", "B11", "B12"),
    ("B05", "B06", "B07"),
    ("B8A", "B01", "B09"),
)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``, index for index (31 modules)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """Holds ``features`` under that attribute name, so ``features.N.weight`` keys load unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()


def default_weights_path() -> Path:
    """Where torch's hub cache keeps the file: ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def find_weights(path: str | os.PathLike[str] | None) -> Path:
    """The weights file to use: ``path`` if given, else the torch hub cache. Raises if it is not there."""
    candidate = Path(path) if path is not None else default_weights_path()
    if candidate.is_file():
        return candidate
    where = f"the file {candidate} given" if path is not None else f"no file at {candidate} (torch hub cache)"
    raise WeightsMissingError(
        f"the perceptual loss needs torchvision's ImageNet VGG16 weights, and there is {where}. "
        f"Download {VGG16_URL} (528 MB; its sha256 starts with {VGG16_SHA256_PREFIX}) on a machine with "
        f"internet access, then either pass --vgg-weights PATH (vgg_weights=PATH) or put it at "
        f"{default_weights_path()}; or choose settings without the perceptual loss "
        f"(perceptual_weight 0, e.g. --preset fast)"
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_vgg16(path: str | os.PathLike[str] | None = None) -> VGG16:
    """Load torchvision's VGG16 weights (the ``features.*`` part) into :class:`VGG16`."""
    weights = find_weights(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsInvalidError(
            f"cannot read VGG16 weights from {weights}: {err}. Expected torchvision's {VGG16_FILENAME} "
            f"(from {VGG16_URL})"
        ) from err
    if not isinstance(state, dict):
        raise WeightsInvalidError(f"{weights} holds a {type(state).__name__}, not a state dict of VGG16")
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    model = VGG16()
    try:
        model.load_state_dict(features, strict=True)
    except RuntimeError as err:
        raise WeightsInvalidError(
            f"{weights} is not torchvision's vgg16 state dict (its 'features.N' weights do not match): "
            f"{str(err).splitlines()[0]}. Expected {VGG16_FILENAME} from {VGG16_URL}"
        ) from err
    return model


def band_triplets(bands: Sequence[str]) -> list[tuple[int, int, int]]:
    """Indices of the band triplets fed to VGG (rule in the module docstring)."""
    names = [str(b) for b in bands]
    index = {name: i for i, name in enumerate(names)}
    triplets: list[tuple[int, int, int]] = []
    used: set[str] = set()
    for triplet in BAND_TRIPLETS:
        present = [index[b] for b in triplet if b in index]
        if present:
            triplets.append(_fill3(present))
            used.update(b for b in triplet if b in index)
    rest = [index[b] for b in names if b not in used]
    for start in range(0, len(rest), 3):
        triplets.append(_fill3(rest[start : start + 3]))
    return triplets


def _fill3(indices: Sequence[int]) -> tuple[int, int, int]:
    filled = [indices[i % len(indices)] for i in range(3)]
    return (filled[0], filled[1], filled[2])
