"""VGG16 without torchvision: torchvision's layout, its weight file, and the band triplets.

The weight files written here are SEEDED RANDOM WEIGHTS in torchvision's format, not ImageNet weights
(those are 528 MB and cannot be downloaded on the test machines): they test loading and masking, never
what the perceptual loss means.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fit.errors import WeightsInvalidError, WeightsMissingError
from fit.vgg import (
    VGG16,
    VGG16_SHA256_PREFIX,
    VGG16_URL,
    band_triplets,
    default_weights_path,
    find_weights,
    load_vgg16,
)

#: torchvision's vgg16 state dict, features part: index -> conv weight shape.
TORCHVISION_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip


def write_random_vgg_weights(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """RANDOM (seeded) weights in torchvision's vgg16 file format, with a classifier like the real file."""
    torch.manual_seed(seed)
    state = dict(VGG16().state_dict())
    state["classifier.0.weight"] = torch.zeros(4, 4)  # the real file has a classifier; it must be ignored
    torch.save(state, path)
    return state


def test_layout_matches_torchvision_keys_and_shapes() -> None:
    state = VGG16().state_dict()
    expected = {f"features.{i}.{p}" for i in TORCHVISION_CONVS for p in ("weight", "bias")}
    assert set(state) == expected
    for index, (out_ch, in_ch) in TORCHVISION_CONVS.items():
        assert tuple(state[f"features.{index}.weight"].shape) == (out_ch, in_ch, 3, 3)
    assert len(VGG16().features) == 31


def test_loads_a_torchvision_format_file(tmp_path: Path) -> None:
    path = tmp_path / "vgg16-random.pth"
    state = write_random_vgg_weights(path)
    model = load_vgg16(path)
    assert torch.equal(model.features[28].weight, state["features.28.weight"])


def test_hub_cache_is_used_when_no_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = default_weights_path()
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsMissingError, match="torch hub cache"):
        find_weights(None)
    cached.parent.mkdir(parents=True)
    write_random_vgg_weights(cached)
    assert find_weights(None) == cached


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError) as err:
        load_vgg16(tmp_path / "nowhere.pth")
    message = str(err.value)
    assert VGG16_URL in message and VGG16_SHA256_PREFIX in message
    assert "--vgg-weights" in message and "nowhere.pth" in message and "hub" in message


def test_wrong_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsInvalidError, match="cannot read VGG16 weights"):
        load_vgg16(junk)
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsInvalidError, match="not torchvision's vgg16"):
        load_vgg16(other)


L2A_13 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
WORLDCEREAL_10 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
GREENEARTHNET_4 = ["B02", "B03", "B04", "B8A"]


def names(bands: list[str]) -> list[tuple[str, ...]]:
    return [tuple(bands[i] for i in t) for t in band_triplets(bands)]


def test_band_triplets_13_10_4() -> None:
    assert names(L2A_13) == [
        ("B04", "B03", "B02"), ("B08", "B11", "B12"), ("B05", "B06", "B07"), ("B8A", "B01", "B09"),
        ("B10", "B10", "B10"),
    ]  # fmt: skip
    assert names(WORLDCEREAL_10) == [
        ("B04", "B03", "B02"), ("B08", "B11", "B12"), ("B05", "B06", "B07"), ("B8A", "B8A", "B8A"),
    ]  # fmt: skip
    assert names(GREENEARTHNET_4) == [("B04", "B03", "B02"), ("B8A", "B8A", "B8A")]
    # Unknown names are grouped in order; every band is seen at least once.
    assert names(["red", "green", "blue", "nir"]) == [("red", "green", "blue"), ("nir", "nir", "nir")]
