"""The 3D encoder-decoder: the paper's size, any tile size, time never strided."""

from __future__ import annotations

import pytest
import torch

from fit.config import PAPER_CHANNELS, PAPER_SKIPS
from fit.network import EncoderDecoder3D, crop_spatial, pad_spatial, spatial_plan


def paper_network(in_channels: int = 2, out_channels: int = 13, depth: int = 6) -> EncoderDecoder3D:
    return EncoderDecoder3D(
        in_channels, out_channels, PAPER_CHANNELS[:depth], PAPER_CHANNELS[:depth], PAPER_SKIPS[:depth]
    )


def test_paper_network_has_9_09_million_parameters() -> None:
    # REFERENCE.md: 9.09 M parameters with 2 input and 13 output channels.
    n = sum(p.numel() for p in paper_network().parameters())
    assert round(n / 1e6, 2) == 9.09


def fit_shape(height: int, width: int, dates: int = 5, narrow: bool = False) -> torch.Size:
    plan = spatial_plan(height, width, 6)
    net = paper_network(2, 10, plan.depth)
    if narrow:  # widths do not change any spatial shape; 2 channels per level keep 384×768 cheap on a CPU
        net = EncoderDecoder3D(2, 10, (2,) * plan.depth, (2,) * plan.depth, (1,) * plan.depth)
    x = torch.rand(1, 2, dates, height, width)
    with torch.no_grad():
        out = crop_spatial(net(pad_spatial(x, plan)), plan)
    return out.shape


@pytest.mark.parametrize(("height", "width"), [(64, 64), (100, 37)])
def test_output_shape_small_and_odd_tiles(height: int, width: int) -> None:
    assert fit_shape(height, width) == (1, 10, 5, height, width)


def test_output_shape_full_tile() -> None:
    # Shapes only: the paper's 6 levels at 384×768, with narrow widths (same strides, pads and upsampling).
    plan = spatial_plan(384, 768, 6)
    assert plan.depth == 6 and plan.padded_shape == (384, 768)
    assert fit_shape(384, 768, narrow=True) == (1, 10, 5, 384, 768)


@pytest.mark.parametrize("dates", [1, 3, 7])
def test_time_is_never_strided(dates: int) -> None:
    assert fit_shape(64, 64, dates=dates)[2] == dates


@pytest.mark.parametrize(
    ("size", "depth", "padded"),
    [
        ((384, 768), 6, (384, 768)),  # the paper's tile: no padding, 6 levels
        ((192, 192), 6, (192, 192)),  # the smallest size the 6-level network takes as it is
        ((64, 64), 4, (64, 64)),  # 4 levels instead of a 192×192 canvas
        ((100, 37), 4, (112, 48)),
        ((2, 3), 1, (6, 6)),  # thinner than the reflection can mirror: replicated
    ],
)
def test_spatial_plan(size: tuple[int, int], depth: int, padded: tuple[int, int]) -> None:
    plan = spatial_plan(*size, 6)
    assert (plan.depth, plan.padded_shape) == (depth, padded)
    x = torch.arange(size[0] * size[1], dtype=torch.float32).reshape(1, 1, 1, *size)
    padded_x = pad_spatial(x, plan)
    assert padded_x.shape[-2:] == padded
    assert torch.equal(crop_spatial(padded_x, plan), x)  # cropping gives the tile back exactly


def test_output_is_a_probability_and_offset_shifts_it() -> None:
    net = paper_network(2, 3, 2)
    x = torch.rand(1, 2, 3, 24, 24)
    with torch.no_grad():
        out = net(x)
        shifted = net(x, offset=torch.full((1, 3, 3, 24, 24), 30.0))
    assert out.min() > 0 and out.max() < 1
    assert torch.allclose(shifted, torch.ones_like(shifted), atol=1e-6)


def test_widths_must_match_depth() -> None:
    with pytest.raises(ValueError, match="one entry per level"):
        EncoderDecoder3D(2, 3, (8, 16), (8,), (4, 4))
