"""The fit's loss: masked L2 over clear pixels plus λ × masked VGG16 perceptual loss (Ebel et al. Sec. 3).

Tensors are (1, bands, time, y, x); ``clear`` is (1, 1, time, y, x) with 1 where a pixel may teach the
network (clear in the refined mask, inside the tile) and 0 elsewhere. Nothing under a 0 reaches the loss:
its gradient is exactly zero, for the L2 term by the product and for the perceptual term because a VGG
feature counts only if its whole receptive field is clear (the hole mask is carried through each layer,
dilated by every 3×3 convolution and pooled by every 2×2 max pool, as in Zhang et al.'s perceptual.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fit.vgg import IMAGENET_MEAN, IMAGENET_STD, PERCEPTUAL_LAYERS, VGG16, band_triplets


def masked_l2(pred: torch.Tensor, target: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
    """Zhang et al.'s masked L2: MSE(out · m, img · m), the mean over all pixels (holes included)."""
    return ((pred - target) * clear).square().mean()


class PerceptualLoss(nn.Module):
    """Masked VGG16 perceptual loss at relu1_2, relu2_2, relu3_3, over band triplets and dates.

    The VGG is frozen; target features are computed without gradients. Each date of each band triplet is
    one 3-channel image, ImageNet-normalised (inputs are reflectance in [0, 1]).
    """

    # Buffers registered in __init__ (declared here for the type checker).
    triplets: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, vgg: VGG16, bands: Sequence[str]) -> None:
        super().__init__()
        last = max(PERCEPTUAL_LAYERS)
        self.layers = nn.Sequential(*list(vgg.features.children())[: last + 1])
        for param in self.layers.parameters():
            param.requires_grad_(False)
        self.layers.eval()
        self.register_buffer("triplets", torch.tensor(band_triplets(bands), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        # (1, B, T, H, W) -> (K * T, 3, H, W): every triplet of every date is one image.
        triplets = x[0, self.triplets]  # (K, 3, T, H, W)
        k, _, t, h, w = triplets.shape
        images = triplets.permute(0, 2, 1, 3, 4).reshape(k * t, 3, h, w)
        return (images - self.mean) / self.std

    def forward(self, pred: torch.Tensor, target: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
        k = self.triplets.shape[0]
        hole = (1.0 - clear[0]).permute(1, 0, 2, 3).repeat(k, 1, 1, 1)  # (K * T, 1, H, W)
        x = self._images(pred)
        with torch.no_grad():
            y = self._images(target)
        loss = pred.new_zeros(())
        for index, layer in enumerate(self.layers):
            x = layer(x)
            with torch.no_grad():
                y = layer(y)
                if isinstance(layer, nn.Conv2d):
                    hole = F.max_pool2d(hole, kernel_size=3, stride=1, padding=1)
                elif isinstance(layer, nn.MaxPool2d):
                    hole = F.max_pool2d(hole, kernel_size=2, stride=2)
            if index in PERCEPTUAL_LAYERS:
                loss = loss + ((x - y) * (1.0 - hole)).square().mean()
        return loss
