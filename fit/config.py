"""Fit settings: one frozen, self-validating dataclass, and the named presets.

``paper`` is Ebel et al.'s method as published (REFERENCE.md "Losses and schedule"); ``fast`` is the
default, the best quality per unit of compute measured on the real sample (docs/fit.md has the
numbers); ``smoke`` runs in seconds on a CPU, for tests and the demo's first look.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from fit.errors import FitConfigError
from fit.masks import MaskRefinement

InputKind = Literal["s1", "noise"]
INPUT_KINDS: tuple[str, ...] = ("s1", "noise")
LrDecay = Literal["none", "cosine"]
#: Arithmetic of the fit: "auto" = bf16 autocast where the device runs it fast (CUDA with bf16), else fp32.
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: Activation layout: "auto" = channels-last 3D on CUDA (cuDNN's fast layout for bf16), contiguous on CPU.
MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
#: torch.compile of the training step: "off", "default", or "reduce-overhead" (CUDA graphs on CUDA).
CompileMode = Literal["off", "default", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead")
#: Shape of a held-out or hidden set: single random pixels, or the series' own cloud shapes.
HoldoutShapes = Literal["pixels", "clouds"]
HOLDOUT_SHAPES: tuple[str, ...] = ("pixels", "clouds")
#: How the correction is checked on the held-out pixels: "off", one shrinkage factor per band, or one per
#: band and regime of the guide (interpolating between observations on both sides, or extrapolating).
Shrink = Literal["off", "band", "regime"]
SHRINKS: tuple[str, ...] = ("off", "band", "regime")
#: The guide: temporal linear interpolation, or that corrected by a per-tile ridge on the radar.
GuideModel = Literal["linear", "ridge"]
GUIDE_MODELS: tuple[str, ...] = ("linear", "ridge")

#: Zhang et al.'s widths, down and up, one per level, and their 4-channel skips (REFERENCE.md).
PAPER_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 128, 128)
PAPER_SKIPS: tuple[int, ...] = (4, 4, 4, 4, 4, 4)
#: The tile the cost figures are quoted for: the paper's N = 30 dates of 384×768 pixels.
REFERENCE_TILE = "30 dates, 384x768 px, 13 bands"


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides what a fit computes (and so what it costs)."""

    name: str = "custom"
    # -- schedule (Ebel et al. Sec. 4, Zhang et al.'s inpainting_test.py) --
    window: int = 5
    stride: int = 1
    passes: int = 20
    iterations_per_window: int = 100
    lr: float = 0.01
    #: "cosine": anneal the learning rate over the whole schedule down to ``lr * lr_final_ratio``.
    lr_decay: LrDecay = "none"
    lr_final_ratio: float = 0.01
    # -- loss --
    perceptual_weight: float = 0.01
    # -- network (Zhang et al. 2019) --
    channels_down: tuple[int, ...] = PAPER_CHANNELS
    channels_up: tuple[int, ...] = PAPER_CHANNELS
    skip_channels: tuple[int, ...] = PAPER_SKIPS
    # -- input --
    input: InputKind = "s1"
    #: Scale of the fixed Gaussian noise map of the ``noise`` ablation (Zhang: noise × 0.1).
    noise_scale: float = 0.1
    #: Std of fresh noise added to the input at every iteration (Deep Image Prior's option; 0 = off).
    input_jitter: float = 0.0
    #: Feed the per-pixel temporal linear interpolation of the clear observations as extra input
    #: channels, and predict a correction to it rather than the image itself.
    guide: bool = False
    #: With the guide: also feed how many days it interpolates across (back, forward), 2 channels.
    guide_gaps: bool = False
    #: With the guide: start the fit exactly at the guide (the output layer's weights and bias at zero), so
    #: the network moves away from the interpolation only as far as the clear pixels pull it.
    start_at_guide: bool = False
    #: With the guide: also feed the S1 change, S1 at the date minus S1 interpolated through the same
    #: optical neighbours the guide uses (2 channels; with ``input="noise"`` the same of the noise map).
    s1_change: bool = False
    #: "ridge": the guide is the interpolation corrected by a per-tile ridge regression of its error on
    #: the radar (its change from the interpolation through the same neighbours, local means, gaps),
    #: fitted on the visible clear samples (``fit.declouder.ridge_guide``); "linear": the interpolation.
    guide_model: GuideModel = "linear"
    #: Add to the guide, per date, its error on the date's own visible pixels interpolated in space
    #: (``fit.date_field``): what made the date differ from its neighbours in time, seen next to the
    #: cloud. With ``shrink``, each band takes it only as far as it helps on the held-out pixels.
    date_field: bool = False
    #: With ``date_field``: where few visible pixels are near, take the mean error of this many visible
    #: pixels of the date most similar to the pixel over the whole window (its nearest neighbours in the
    #: space of the guide's trajectories, ``fit.date_field.similar_mean``) instead of the date's mean
    #: alone (0 = the date's mean).
    date_field_similar: int = 0
    # -- training on the task itself (docs/fit.md "The method", step 6) --
    #: Share of the trusted (date, pixel) samples hidden from every input the network sees (the
    #: observation and every date's guide) while it trains, in the series' own cloud shapes, with the
    #: loss on them as well as on the visible clear pixels (0 = off: the guide leaks through neighbours).
    hide_fraction: float = 0.0
    #: Loss weight of a hidden pixel relative to a visible clear one.
    hide_weight: float = 1.0
    #: Draw a new hidden set (and recompute the guides) at the start of every pass.
    hide_resample: bool = False
    # -- masks and output --
    masks: MaskRefinement = field(default_factory=MaskRefinement)
    #: Keep the observed values where the (refined) mask is clear; the network fills only the rest.
    keep_clear: bool = False
    #: With ``keep_clear``: blend observed into fitted over this many pixels next to the filled region
    #: (a linear ramp of the observed value's weight, 1/(n+1) beside a filled pixel up to 1 at n+1 px);
    #: 0 = the hard switch.
    feather_px: int = 0
    # -- cost levers (docs/fit.md "Cost") --
    #: Share of the clear pixels held out of the loss; their L2 error decides when to stop (0 = off).
    holdout_fraction: float = 0.0
    #: The held-out set: random single pixels, or the series' own cloud shapes painted onto clear dates
    #: (a test of filling, as under a cloud, not of copying a neighbour).
    holdout_shapes: HoldoutShapes = "pixels"
    #: Also hold out this many whole dates (the clearest interior ones, drawn at random): a fill often
    #: faces a fully hidden date, and a held-out set of cloud shapes never hides one.
    holdout_dates: int = 0
    #: Never worse than the guide: with "band", each band's correction to the guide is scaled by the
    #: factor in [0, 1] that fits the held-out pixels best (0 where the correction does not help there);
    #: needs ``guide`` and ``holdout_fraction > 0``. The output's guide then uses every trusted pixel.
    shrink: Shrink = "off"
    #: Stop once the held-out error, averaged over the last pass's windows, has not improved by
    #: ``stop_min_delta`` (relative) for ``stop_patience`` passes' worth of window visits.
    stop_patience: float = 1.0
    stop_min_delta: float = 0.01
    #: Add the perceptual term on every n-th iteration only (1 = every iteration, as published).
    perceptual_every: int = 1
    #: Windows trained together in one step, as a batch (1 = one window at a time, as published).
    windows_per_step: int = 1
    #: Passes to run when the fit starts from a neighbour's weights (``init_weights``); None = ``passes``.
    warm_passes: int | None = None
    #: Predict with an exponential moving average of the weights over the steps (this decay per step;
    #: 0 = off, the published last-step weights): it smooths the step-to-step swings of Adam at a high lr.
    weight_average: float = 0.0
    # -- the device path (GPU levers; no effect on what is computed beyond rounding) --
    precision: Precision = "auto"
    memory_format: MemoryFormat = "auto"
    compile: CompileMode = "off"
    # -- cost, for planning campaigns (``declouder estimate``) --
    seconds_per_tile_reference: float | None = None
    reference_device: str | None = None
    #: Seconds of ONE CPU core for the fit's work beside the network on a host-reference tile of 30 dates
    #: × 10 bands × 384×768 px (fit.cost.HOST_REFERENCE_*): masks, guide, same-date field, shrinkage, σ;
    #: the similar-pixel search left out (on a GPU it runs there). A GPU holding one fit waits that long
    #: per tile; ``declouder estimate`` prices it with the campaign's fits per GPU. None: not measured.
    host_seconds_per_tile_reference: float | None = None

    def __post_init__(self) -> None:
        depth = len(self.channels_down)
        checks = {
            "window >= 1": self.window >= 1,
            "1 <= stride <= window": 1 <= self.stride <= self.window,
            "passes >= 1": self.passes >= 1,
            "iterations_per_window >= 1": self.iterations_per_window >= 1,
            "lr > 0": self.lr > 0,
            "lr_decay in (none, cosine)": self.lr_decay in ("none", "cosine"),
            "0 <= lr_final_ratio <= 1": 0 <= self.lr_final_ratio <= 1,
            "perceptual_weight >= 0": self.perceptual_weight >= 0,
            "at least one network level": depth >= 1,
            "channels_up and skip_channels have one entry per level": (
                len(self.channels_up) == depth and len(self.skip_channels) == depth
            ),
            "positive widths": min((*self.channels_down, *self.channels_up), default=0) >= 1
            and min(self.skip_channels, default=0) >= 0,
            f"input in {INPUT_KINDS}": self.input in INPUT_KINDS,
            "noise_scale > 0": self.noise_scale > 0,
            "input_jitter >= 0": self.input_jitter >= 0,
            "guide_gaps and start_at_guide only with guide": self.guide
            or not (self.guide_gaps or self.start_at_guide),
            "s1_change only with guide": self.guide or not self.s1_change,
            f"guide_model in {GUIDE_MODELS}": self.guide_model in GUIDE_MODELS,
            "guide_model ridge only with guide": self.guide or self.guide_model == "linear",
            "0 <= hide_fraction < 0.5": 0 <= self.hide_fraction < 0.5,
            "hide_fraction > 0 only with guide": self.guide or self.hide_fraction == 0,
            "date_field only with guide": self.guide or not self.date_field,
            "date_field_similar >= 0": self.date_field_similar >= 0,
            "date_field_similar > 0 only with date_field": self.date_field or self.date_field_similar == 0,
            "hide_weight >= 0": self.hide_weight >= 0,
            "hide_resample only with hide_fraction > 0": self.hide_fraction > 0 or not self.hide_resample,
            "feather_px >= 0": self.feather_px >= 0,
            "feather_px > 0 only with keep_clear": self.keep_clear or self.feather_px == 0,
            f"holdout_shapes in {HOLDOUT_SHAPES}": self.holdout_shapes in HOLDOUT_SHAPES,
            f"shrink in {SHRINKS}": self.shrink in SHRINKS,
            "shrink needs guide and holdout_fraction > 0": self.shrink == "off"
            or (self.guide and self.holdout_fraction > 0),
            "0 <= holdout_fraction < 0.5": 0 <= self.holdout_fraction < 0.5,
            "holdout_dates >= 0": self.holdout_dates >= 0,
            "stop_patience > 0": self.stop_patience > 0,
            "stop_min_delta >= 0": self.stop_min_delta >= 0,
            "perceptual_every >= 1": self.perceptual_every >= 1,
            "windows_per_step >= 1": self.windows_per_step >= 1,
            "warm_passes >= 1 or None": self.warm_passes is None or self.warm_passes >= 1,
            "0 <= weight_average < 1": 0 <= self.weight_average < 1,
            f"precision in {PRECISIONS}": self.precision in PRECISIONS,
            f"memory_format in {MEMORY_FORMATS}": self.memory_format in MEMORY_FORMATS,
            f"compile in {COMPILE_MODES}": self.compile in COMPILE_MODES,
            "seconds_per_tile_reference > 0 with its reference_device": (
                self.seconds_per_tile_reference is None
                or (self.seconds_per_tile_reference > 0 and bool(self.reference_device))
            ),
            "host_seconds_per_tile_reference > 0 or None": (
                self.host_seconds_per_tile_reference is None or self.host_seconds_per_tile_reference > 0
            ),
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise FitConfigError(f"fit settings {self.name!r} break: {'; '.join(broken)}")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    def n_windows(self, n_dates: int) -> int:
        """Windows a series of ``n_dates`` is cut into (one window when it is shorter than ``window``)."""
        from fit.schedule import windows

        return len(windows(n_dates, self.window, self.stride))

    def steps_per_pass(self, n_dates: int) -> int:
        """Groups of windows trained together in one pass (``windows_per_step`` windows per group)."""
        return -(-self.n_windows(n_dates) // self.windows_per_step)

    def total_iterations(self, n_dates: int, *, warm: bool = False) -> int:
        """Optimiser steps of the full schedule (early stopping may end it sooner)."""
        passes = self.warm_passes if warm and self.warm_passes is not None else self.passes
        return passes * self.steps_per_pass(n_dates) * self.iterations_per_window

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, e.g. for a store's attributes."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitConfig:
        values = dict(values)
        masks = MaskRefinement(**values.pop("masks", {}))
        for key in ("channels_down", "channels_up", "skip_channels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(masks=masks, **values)


#: ``fast``'s feather width (px): a kept pixel next to a fill is 1/4 observed, 3/4 fitted, the fourth
#: pixel in fully observed. On the quick suite the seam ratio at the fill's edge fell from 1.39 / 1.62
#: (hard switch) to 1.27 / 1.05-1.14 with it (wc-summer / wc-winter partial, oracle; docs/fit.md).
FEATHER_PX = 3

#: Device the reference seconds below are quoted for. They are ESTIMATES, not measurements (no GPU was
#: available to measure them): FLOPs per 30-date 384×768 tile counted by fit.cost.tile_flops
#: (``python bench/fit_cost.py --sections flops``) at the conservative achieved throughput of
#: fit.cost.GPU_THROUGHPUT_TFLOPS (17.6 TFLOP/s). Replace them with the seconds per tile that
#: ``python bench/fit_cost.py --device cuda --sections speed`` measures on the campaign's card.
ESTIMATED_ON = "H100 (estimate from FLOPs at 17.6 TFLOP/s; not measured)"
#: ``fast``'s host seconds per host-reference tile (see ``host_seconds_per_tile_reference``).
HOST_SECONDS_FAST = 68.0

PAPER = FitConfig(name="paper", seconds_per_tile_reference=26_480.0, reference_device=ESTIMATED_ON)

SMOKE = FitConfig(
    name="smoke",
    passes=1,
    iterations_per_window=1,
    perceptual_weight=0.0,
    guide=True,
    channels_down=(8, 16, 16),
    channels_up=(8, 16, 16),
    skip_channels=(4, 4, 4),
    keep_clear=True,
)

FAST = FitConfig(
    name="fast",
    passes=2,
    iterations_per_window=5,
    lr_decay="cosine",
    perceptual_weight=0.0,
    guide=True,
    keep_clear=True,
    # Never worse than the guide, as far as held-out pixels tell: start at it, hold out 10 % of the
    # trusted samples in real cloud shapes and 2 whole clear dates, keep each band's correction per guide
    # regime only as far as it helps on them, and never further than any held-out date wants (docs/fit.md,
    # method step 9; the quick suite's worst case went from -5.96 to -2.61 dB with it, "Suite: fast with
    # the regime guard").
    start_at_guide=True,
    holdout_fraction=0.1,
    holdout_shapes="clouds",
    holdout_dates=2,
    shrink="regime",
    # The guide also takes each date's own visible pixels' error, interpolated in space, as far as the
    # held-out pixels confirm it (method step 3; the quick suite's mean margin went from -0.28 to +0.87 dB
    # and its worst case from -2.61 to -0.83 dB with it, docs/fit.md "The same-date field").
    date_field=True,
    # Deep inside a cloud, the field takes what the 16 most similar visible pixels of the date did, not
    # the date's mean (the guide alone on the six partly painted oracle tuning cases, seeds 0-2: mean /
    # worst over the best of linear and ridge +1.69 / -0.32 -> +2.30 / +0.40 dB, `python bench/field.py`;
    # the suite's oracle mean +0.85 -> +1.16 dB, bench/quality.py; docs/fit.md "Similar pixels").
    date_field_similar=16,
    # Blend observed into fitted over 3 px at the fill's edge (method step 10).
    feather_px=FEATHER_PX,
    # 215 TFLOP per reference tile (260 steps of 0.775 TFLOP + two inference passes): see ESTIMATED_ON.
    seconds_per_tile_reference=12.2,
    reference_device=ESTIMATED_ON,
    # Measured (not estimated) with `python bench/fit.py --sections overhead --threads 1` on one core of
    # the 2-core development CPU, 2026-11-30: the work beside the network less the similar-pixel search
    # (docs/fit.md "Work beside the network"). Several times the network's estimated GPU seconds: a GPU
    # holding one fit mostly waits on its host (campaign resources.gpus_per_fit).
    host_seconds_per_tile_reference=HOST_SECONDS_FAST,
)

#: The presets by name; ``fast`` is the default everywhere.
PRESETS: dict[str, FitConfig] = {c.name: c for c in (PAPER, FAST, SMOKE)}
DEFAULT_PRESET = "fast"


def resolve_config(preset: str | FitConfig) -> FitConfig:
    """A preset name or a ready :class:`FitConfig` -> the settings to fit with."""
    if isinstance(preset, FitConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise FitConfigError(
            f"unknown preset {preset!r}: choose one of {', '.join(sorted(PRESETS))} (--preset)"
        ) from None
