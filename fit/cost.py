"""What a fit costs: FLOPs per iteration and per tile, GPU seconds estimated from them, fits per GPU.

FLOPs are counted by ``torch.utils.flop_counter`` on the meta device (shapes only, no arithmetic), for one
optimiser step of the settings (forward + backward, the perceptual loss's VGG16 where it is on, averaged
over ``perceptual_every``, ``windows_per_step`` windows per step), and for the inference pass that takes
every date's output from its window. Seconds on a GPU that was not measured are *estimates* from these
FLOPs and an achieved throughput that must be stated with them (:data:`GPU_THROUGHPUT_TFLOPS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fit.config import FitConfig
from fit.losses import PerceptualLoss, masked_l2
from fit.network import EncoderDecoder3D, spatial_plan
from fit.vgg import VGG16

#: The tile costs are quoted for (the paper's): 30 dates of 384×768 px, all 13 L1C band names, 2 S1 channels.
REFERENCE_DATES = 30
REFERENCE_SIZE = (384, 768)
REFERENCE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
S1_CHANNELS = 2
#: The tile the fit's host seconds (``FitConfig.host_seconds_per_tile_reference``) are quoted for: the
#: real sample's 10 bands tiled to 30 dates of 384×768 px (``bench/fit.py --sections overhead``).
HOST_REFERENCE_DATES = 30
HOST_REFERENCE_SIZE = (384, 768)
HOST_REFERENCE_BANDS = 10
#: The guide's gap channels (days back and forward) where ``guide_gaps`` is on.
GAP_CHANNELS = 2
#: The S1-change channels (VV, VH) where ``s1_change`` is on.
S1_CHANGE_CHANNELS = 2
#: NVIDIA H100 SXM5 dense BF16 tensor-core peak, TFLOP/s (NVIDIA H100 Tensor Core GPU datasheet: 1,979
#: with sparsity, half that dense). A fit never reaches it: see :data:`GPU_THROUGHPUT_TFLOPS`.
H100_BF16_DENSE_PEAK_TFLOPS = 989.4
#: Achieved throughputs the GPU seconds are estimated at, not measured. "conservative": the rate the
#: issue's own "127,000 TFLOP is 1-2 GPU-hours per tile" implies at its 2-hour end (127,000 / 7,200 s,
#: fp32-like 3D-convolution efficiency); "bf16 10% of peak": an assumed tenth of the H100's dense bf16
#: peak for narrow (16-128 channel) 3D convolutions under bf16 autocast and channels-last 3D.
GPU_THROUGHPUT_TFLOPS: dict[str, float] = {
    "conservative": 127_000 / 7_200,
    "bf16 10% of peak": 0.1 * H100_BF16_DENSE_PEAK_TFLOPS,
}
#: Share of a GPU's memory kept free when packing fits onto it (allocator fragmentation, CUDA context).
GPU_MEMORY_RESERVE = 0.1


@dataclass(frozen=True)
class TileFlops:
    """FLOPs of one fit of a reference tile: per optimiser step, for the training, for inference."""

    preset: str
    per_iteration: float
    iterations: int
    training: float
    inference: float

    @property
    def total(self) -> float:
        return self.training + self.inference

    def gpu_seconds(self, tflops: float) -> float:
        """Seconds at an achieved ``tflops`` TFLOP/s: an estimate, never a measurement."""
        if tflops <= 0:
            raise ValueError(f"achieved throughput must be positive, got {tflops} TFLOP/s")
        return self.total / (tflops * 1e12)


def _count(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def step_functions(
    config: FitConfig,
    dates: int,
    size: tuple[int, int],
    bands: Sequence[str],
    device: str | torch.device = "meta",
    *,
    perceptual: bool | None = None,
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(one training step on random data, one inference window) of ``config``'s network on ``device``.

    ``perceptual`` forces the VGG16 term on or off (default: on where the settings weight it). The VGG
    has seeded random weights: its cost does not depend on their values.
    """
    plan = spatial_plan(*size, config.depth)
    depth = plan.depth
    extra = (GAP_CHANNELS if config.guide_gaps else 0) + (S1_CHANGE_CHANNELS if config.s1_change else 0)
    guide_channels = len(bands) + extra if config.guide else 0
    in_channels = S1_CHANNELS + guide_channels
    net = EncoderDecoder3D(
        in_channels,
        len(bands),
        config.channels_down[:depth],
        config.channels_up[:depth],
        config.skip_channels[:depth],
    ).to(device)
    use_vgg = config.perceptual_weight > 0 if perceptual is None else perceptual
    vgg = PerceptualLoss(VGG16(), bands).to(device) if use_vgg else None
    batch = config.windows_per_step
    x = torch.rand(batch, in_channels, dates, *plan.padded_shape, device=device)
    y = torch.rand(batch, len(bands), dates, *plan.padded_shape, device=device)
    w = torch.ones(batch, 1, dates, *plan.padded_shape, device=device)

    def step() -> torch.Tensor:
        out = net(x)
        loss = masked_l2(out, y, w)
        if vgg is not None:
            terms = [vgg(out[i : i + 1], y[i : i + 1], w[i : i + 1]) for i in range(batch)]
            loss = loss + config.perceptual_weight * torch.stack(terms).mean()
        loss.backward()
        return loss

    def infer() -> torch.Tensor:
        with torch.no_grad():
            return net(x[:1])

    return step, infer


def tile_flops(
    config: FitConfig,
    *,
    n_dates: int = REFERENCE_DATES,
    size: tuple[int, int] = REFERENCE_SIZE,
    bands: Sequence[str] = REFERENCE_BANDS,
    iterations: int | None = None,
) -> TileFlops:
    """FLOPs of one fit of ``config`` on a tile of ``n_dates`` × ``size`` (the paper's tile by default).

    ``iterations`` replaces the schedule's step count, e.g. with the steps an early-stopped fit took.
    """
    dates = min(config.window, n_dates)
    step, infer = step_functions(config, dates, size, bands)
    per_iteration = _count(step)
    if config.perceptual_weight > 0 and config.perceptual_every > 1:
        # The VGG term runs on one step in ``perceptual_every``: average the two kinds of step.
        plain, _ = step_functions(config, dates, size, bands, perceptual=False)
        plain_flops = _count(plain)
        per_iteration = plain_flops + (per_iteration - plain_flops) / config.perceptual_every
    steps = config.total_iterations(n_dates) if iterations is None else iterations
    # With ``shrink``, one more inference pass: the held-out check, then the output from every trusted pixel.
    passes = 2 if config.shrink != "off" else 1
    inference = _count(infer) * config.n_windows(n_dates) * passes
    return TileFlops(config.name, per_iteration, steps, per_iteration * steps, inference)


def fits_per_gpu(peak_bytes: int, gpu_bytes: int, reserve: float = GPU_MEMORY_RESERVE) -> int:
    """How many fits of ``peak_bytes`` peak memory one GPU of ``gpu_bytes`` holds side by side."""
    if peak_bytes <= 0 or gpu_bytes <= 0:
        raise ValueError(f"memory sizes must be positive (peak {peak_bytes} B, GPU {gpu_bytes} B)")
    return max(0, int(gpu_bytes * (1.0 - reserve) // peak_bytes))


def host_seconds(config: FitConfig, *, n_dates: int, size: tuple[int, int], bands: int) -> float | None:
    """One CPU core's seconds of ``config``'s work beside the network on a tile of ``n_dates`` × ``bands``
    × ``size``: its reference figure scaled by the samples (that work is per sample: interpolation in
    time, filters, per-sample features). None when the preset carries no measured figure."""
    if config.host_seconds_per_tile_reference is None:
        return None
    reference = HOST_REFERENCE_DATES * HOST_REFERENCE_SIZE[0] * HOST_REFERENCE_SIZE[1] * HOST_REFERENCE_BANDS
    return config.host_seconds_per_tile_reference * n_dates * size[0] * size[1] * bands / reference
