"""The 3D encoder-decoder of Zhang et al. 2019 ("An internal learning approach to video inpainting").

Layout (REFERENCE.md "The network"; public code Haotianz94/IL_video_inpainting, encoder_decoder_3d.py):
a U-Net built like Deep Image Prior's ``skip`` network, with 3D convolutions over (time, y, x). Per level:

- down: conv (3,5,5) stride (1,2,2) -> BN -> act -> conv (3,5,5) -> BN -> act. Time is never strided.
- skip: conv 1×1×1 to ``skip`` channels -> BN -> act, concatenated with the upsampled deeper branch.
- up: BN on the concatenation -> conv (3,3,3) -> BN -> act -> conv 1×1×1 -> BN -> act.

Upsampling is nearest ×2 in space only; padding reflects in y/x and replicates in time; LeakyReLU(0.2);
the output is a 1×1×1 conv and a sigmoid. Zhang's "BatchNorm3D" is BatchNorm2d with the frames as the
batch (batch size 1), i.e. statistics over (time, y, x) per channel: exactly what ``BatchNorm3d`` computes
on a batch of one.

Spatial sizes: each level halves y and x, and the deepest level's 5×5 reflection padding needs at least 3
pixels, so a network of depth ``d`` needs sides that are multiples of ``2**d`` and at least ``3 * 2**d``
(192 for the paper's 6 levels). :func:`spatial_plan` picks the depth and padding for any tile size, and
:func:`pad_spatial` / :func:`crop_spatial` pad and crop back (see :class:`SpatialPlan` for the rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Zhang et al.'s kernel sizes (time, y, x): down-path convolutions, up-path convolution, skip branch.
KERNEL_DOWN: tuple[int, int, int] = (3, 5, 5)
KERNEL_UP: tuple[int, int, int] = (3, 3, 3)
KERNEL_SKIP: tuple[int, int, int] = (1, 1, 1)
#: LeakyReLU slope of Zhang's (and Deep Image Prior's) networks.
LEAKY_SLOPE = 0.2
#: Smallest side, in pixels, at the deepest level: 5×5 reflection padding (2 px) needs more than 2.
MIN_BOTTOM_SIZE = 3


class PaddedConv3d(nn.Module):
    """A Conv3d that pads time by replication and space by reflection (Zhang's ``pad='reflection'``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        kt, ky, kx = kernel
        self.pad_t, self.pad_y, self.pad_x = (kt - 1) // 2, (ky - 1) // 2, (kx - 1) // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_t:
            x = F.pad(x, (0, 0, 0, 0, self.pad_t, self.pad_t), mode="replicate")
        if self.pad_y or self.pad_x:
            x = F.pad(x, (self.pad_x, self.pad_x, self.pad_y, self.pad_y, 0, 0), mode="reflect")
        return self.conv(x)


def _conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int] = (1, 1, 1),
) -> list[nn.Module]:
    return [
        PaddedConv3d(in_channels, out_channels, kernel, stride),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(LEAKY_SLOPE),
    ]


class _Level(nn.Module):
    """One level: its skip branch beside (down -> deeper levels -> upsample), then the up convolutions."""

    def __init__(
        self,
        in_channels: int,
        down: int,
        up: int,
        skip: int,
        deeper: nn.Module | None,
        deeper_out: int,
    ) -> None:
        super().__init__()
        self.skip = nn.Sequential(*_conv_bn_act(in_channels, skip, KERNEL_SKIP)) if skip else None
        self.down = nn.Sequential(
            *_conv_bn_act(in_channels, down, KERNEL_DOWN, stride=(1, 2, 2)),
            *_conv_bn_act(down, down, KERNEL_DOWN),
        )
        self.deeper = deeper
        concat = skip + deeper_out
        self.up = nn.Sequential(
            nn.BatchNorm3d(concat),
            *_conv_bn_act(concat, up, KERNEL_UP),
            *_conv_bn_act(up, up, KERNEL_SKIP),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.deeper is not None:
            y = self.deeper(y)
        y = F.interpolate(y, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.up(y)


class EncoderDecoder3D(nn.Module):
    """Zhang et al.'s 3D encoder-decoder: (batch, in, time, y, x) -> (batch, out, time, y, x) in (0, 1).

    ``channels_down``, ``channels_up`` and ``skip_channels`` have one entry per level (the depth); the
    paper's network is ``(16, 32, 64, 128, 128, 128)`` down and up with 4 skip channels per level.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels_down: Sequence[int],
        channels_up: Sequence[int],
        skip_channels: Sequence[int],
    ) -> None:
        super().__init__()
        depth = len(channels_down)
        if not depth or len(channels_up) != depth or len(skip_channels) != depth:
            raise ValueError(
                f"network widths must have one entry per level and at least one level: down "
                f"{tuple(channels_down)}, up {tuple(channels_up)}, skip {tuple(skip_channels)}"
            )
        self.depth = depth
        deeper: nn.Module | None = None
        deeper_out = 0
        # Build from the deepest level outwards; each level's input width is the previous level's "down".
        for level in reversed(range(depth)):
            level_in = in_channels if level == 0 else channels_down[level - 1]
            deeper_out_here = channels_down[level] if deeper is None else deeper_out
            deeper = _Level(
                level_in,
                channels_down[level],
                channels_up[level],
                skip_channels[level],
                deeper,
                deeper_out_here,
            )
            deeper_out = channels_up[level]
        assert deeper is not None  # depth >= 1 (checked above), so the loop built at least one level
        self.body: nn.Module = deeper
        self.head = nn.Conv3d(channels_up[0], out_channels, KERNEL_SKIP)

    def zero_head(self) -> None:
        """Zero the output layer: the first output is ``sigmoid(offset)`` exactly (with a guide as the
        offset, the guide itself), and training grows the correction from nothing."""
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """``offset`` (logits, broadcast to the output) shifts the output before the sigmoid: with
        ``logit(guide)`` the network learns a correction to a guide image instead of the image itself."""
        logits = self.head(self.body(x))
        if offset is not None:
            logits = logits + offset
        return torch.sigmoid(logits)


@dataclass(frozen=True)
class SpatialPlan:
    """How a tile of ``height``×``width`` is fed to a network of at most ``max_depth`` levels.

    The rule (never refuse a size): use the deepest network, up to ``max_depth``, whose bottom level keeps
    at least :data:`MIN_BOTTOM_SIZE` pixels on the tile's smaller side without padding beyond one level's
    rounding; pad each side up to a multiple of ``2**depth`` (and to at least ``3 * 2**depth``) by
    reflection, or by replication where the padding is as large as the side itself (reflection cannot
    mirror more than the side). Tiles of 384×768 keep the paper's 6 levels and need no padding; a 64×64
    tile gets 4 levels and no padding instead of 6 levels on a 192×192 canvas (9× the compute); 100×37
    gets 4 levels on 112×48.
    """

    height: int
    width: int
    max_depth: int

    @property
    def depth(self) -> int:
        side = min(self.height, self.width)
        depth = self.max_depth
        # ceil(side / 2**d) >= MIN_BOTTOM_SIZE  <=>  side > (MIN_BOTTOM_SIZE - 1) * 2**d
        while depth > 1 and side <= (MIN_BOTTOM_SIZE - 1) * 2**depth:
            depth -= 1
        return depth

    def _padded(self, side: int) -> int:
        unit = 2**self.depth
        return max(math.ceil(side / unit) * unit, MIN_BOTTOM_SIZE * unit)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return (self._padded(self.height), self._padded(self.width))

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding in pixels; split evenly so both edges see real context."""
        ph = self.padded_shape[0] - self.height
        pw = self.padded_shape[1] - self.width
        return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


def spatial_plan(height: int, width: int, max_depth: int) -> SpatialPlan:
    if height <= 0 or width <= 0:
        raise ValueError(f"tile size {height}×{width} must be positive")
    return SpatialPlan(height, width, max_depth)


def pad_spatial(x: torch.Tensor, plan: SpatialPlan) -> torch.Tensor:
    """Pad the last two dims of ``x`` to ``plan.padded_shape`` (reflection, or replication if too thin)."""
    left, right, top, bottom = plan.pads
    if not (left or right or top or bottom):
        return x
    mode = "reflect" if max(left, right) < plan.width and max(top, bottom) < plan.height else "replicate"
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    return F.pad(flat, (left, right, top, bottom), mode=mode).reshape(*shape[:-2], *plan.padded_shape)


def crop_spatial(x: torch.Tensor, plan: SpatialPlan) -> torch.Tensor:
    left, _, top, _ = plan.pads
    return x[..., top : top + plan.height, left : left + plan.width]
