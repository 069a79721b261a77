"""Masked pixels never teach the network: their gradients are exactly zero, for both loss terms.

The perceptual loss here runs on SEEDED RANDOM VGG16 weights (not ImageNet's): masking is a property of
the receptive fields, not of the weight values.
"""

from __future__ import annotations

import pytest
import torch

from fit.losses import PerceptualLoss, masked_l2
from fit.vgg import VGG16

BANDS = ["B02", "B03", "B04", "B08", "B11"]


def case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.rand(1, len(BANDS), 2, 32, 32, generator=gen, requires_grad=True)
    target = torch.rand(1, len(BANDS), 2, 32, 32, generator=gen)
    clear = torch.ones(1, 1, 2, 32, 32)
    clear[..., 8:20, 10:24] = 0  # a cloud
    clear[:, :, 1, :, :5] = 0  # and a strip on the second date
    return pred, target, clear


@pytest.fixture(scope="module")
def perceptual() -> PerceptualLoss:
    torch.manual_seed(1)
    return PerceptualLoss(VGG16(), BANDS)


def test_l2_gradients_under_the_mask_are_exactly_zero() -> None:
    pred, target, clear = case()
    masked_l2(pred, target, clear).backward()
    hole = (clear == 0).expand_as(pred)
    assert torch.count_nonzero(pred.grad[hole]) == 0
    assert torch.count_nonzero(pred.grad[~hole]) == int((~hole).sum())


def test_perceptual_gradients_under_the_mask_are_exactly_zero(perceptual: PerceptualLoss) -> None:
    pred, target, clear = case()
    perceptual(pred, target, clear).backward()
    hole = (clear == 0).expand_as(pred)
    assert torch.count_nonzero(pred.grad[hole]) == 0
    assert torch.count_nonzero(pred.grad[~hole]) > 0  # the clear pixels far from the holes still learn


def test_target_values_under_the_mask_do_not_matter(perceptual: PerceptualLoss) -> None:
    pred, target, clear = case()
    cloudy = torch.where(clear.bool(), target, torch.ones_like(target))  # bright "clouds" in the holes
    with torch.no_grad():
        assert masked_l2(pred, target, clear) == masked_l2(pred, cloudy, clear)
        assert perceptual(pred, target, clear) == perceptual(pred, cloudy, clear)
        # ... while the same change counts where the pixels are clear
        everywhere = torch.ones_like(clear)
        assert perceptual(pred, target, everywhere) != perceptual(pred, cloudy, everywhere)


def test_vgg_stays_frozen(perceptual: PerceptualLoss) -> None:
    pred, target, clear = case()
    perceptual(pred, target, clear).backward()
    assert all(p.grad is None for p in perceptual.parameters())
