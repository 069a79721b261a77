"""The in-memory fit: one tile's arrays in, its declouded series out. No I/O here.

:func:`decloud` reads like the method: trust only refined-clear pixels, build the network's input (S1 or
the noise ablation, optionally with a temporal-interpolation guide), fit one network to the tile's own
clear pixels window by window, then take every date's output from the window it is centred in.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import math
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy import ndimage
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fit.baselines import mosaic_mean, observation_gaps, temporal_linear
from fit.config import FitConfig
from fit.date_field import date_residual_field
from fit.errors import AllCloudyError, FitConfigError, FitInputError, WarmStartError
from fit.losses import PerceptualLoss, masked_l2
from fit.masks import BLUE as BLUE_BAND
from fit.masks import refine_masks
from fit.network import EncoderDecoder3D, SpatialPlan, crop_spatial, pad_spatial, spatial_plan
from fit.schedule import output_windows, visit_groups, windows
from fit.uncertainty import ErrorModel, fit_error_model, predict_sigma, propagate
from fit.vgg import VGG16, load_vgg16
from tiler.store import MaskClass

#: S1 backscatter range of the paper's normalisation (dB), rescaled to [0, 1] (Ebel et al. Sec. 4).
S1_DB_RANGE: tuple[float, float] = (-25.0, 0.0)
#: Keeps logit(guide) finite where a guide reflectance is exactly 0 or 1.
GUIDE_EPS = 1e-3
#: Scale of the guide-gap channels (days): ~0.4 at Sentinel-2's 5-day revisit, ~0.95 at 30 days.
GAP_SCALE_DAYS = 10.0
#: How many progress events a fit sends at most (each one reads the loss back from the device).
PROGRESS_EVENTS = 200
#: Points of the loss curve kept in results and store attributes.
LOSS_CURVE_POINTS = 200
#: Second word of the seed of the held-out pixel draw, so it never repeats the visit order's draws.
HOLDOUT_STREAM = 1
#: Second word of the seed of the hidden-pixel draws (training on the task itself).
HIDE_STREAM = 2
#: Second word of the seed of the ridge guide's sample draw (large tiles only).
RIDGE_STREAM = 3
#: Scale of the S1-change channels: a 2.5 dB change (0.1 of the normalised range) becomes 0.5.
S1_CHANGE_SCALE = 5.0
#: The ridge guide's local means of the S1 change (pixels per side), as in issue #12's per-tile MLP.
RIDGE_NEIGHBOURHOODS: tuple[int, ...] = (3, 9)
#: The ridge guide's penalty, relative to the mean of the (standardised) features' Gram diagonal.
RIDGE_PENALTY = 1e-2
#: At most this many samples fit the ridge guide (a seeded random draw beyond it: the fit is tiny).
RIDGE_MAX_SAMPLES = 200_000
#: Fewer visible samples than this (per feature) and the ridge guide stays the plain interpolation.
RIDGE_MIN_SAMPLES_PER_FEATURE = 10
#: Regimes of the guide for ``shrink="regime"``: it interpolates between visible observations on both
#: sides of the date, or extrapolates from one side (the series' first and last dates, mostly), where
#: its error is several times larger and a correction that helps there says nothing about the rest.
GUIDE_REGIMES: tuple[str, ...] = ("interpolated", "extrapolated")
#: Fewer held-out samples than this in a regime and its correction is not kept (factor 0: the guide):
#: one 6×6 px date's worth; a factor fitted on fewer is chance.
SHRINK_MIN_SAMPLES = 36
#: ... and fewer held-out dates than this with that many samples each: a correction is kept only where
#: it helps on at least two separate dates (on the 6×6 px suite tile one date's factor of ~1 cost 4.6 dB
#: on the painted dates).
SHRINK_MIN_DATES = 2


@dataclass(frozen=True)
class ProgressEvent:
    """Where a fit stands; sent to the ``progress`` callback at most :data:`PROGRESS_EVENTS` times."""

    iteration: int
    total: int
    loss: float
    pass_index: int
    window: int
    elapsed_s: float

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / max(self.iteration, 1) * (self.total - self.iteration)


Progress = Callable[[ProgressEvent], None]
#: ``snapshot(passes_done, steps_done, prediction)``: the prediction the network makes after that many
#: passes, exactly as the fit would return it had it stopped there (quality per compute in one fit).
Snapshot = Callable[[int, int, np.ndarray], None]


@dataclass(frozen=True)
class DecloudResult:
    """The fit's output and what it took. ``prediction`` is reflectance in [0, 1], (time, band, y, x)."""

    prediction: np.ndarray
    clear: np.ndarray
    loss_curve: np.ndarray
    iterations: int
    windows: int
    network_depth: int
    seconds: float
    device: str
    peak_memory_bytes: int
    peak_memory_kind: str
    #: Optimiser steps the full schedule would take; ``iterations`` is fewer when it stopped early.
    scheduled_iterations: int = 0
    #: Mean L2 error on the held-out clear pixels over the last pass (NaN without a hold-out).
    holdout_loss: float = float("nan")
    stopped_early: bool = False
    #: What ran: "fp32" or "bf16"; "contiguous" or "channels_last"; the compile mode.
    precision: str = "fp32"
    memory_format: str = "contiguous"
    compile: str = "off"
    #: Started from a neighbour's weights; the final weights (CPU tensors), for the next neighbour.
    warm_started: bool = False
    weights: Mapping[str, torch.Tensor] | None = None
    #: (y, x): the pixel has S2 data on at least one date. Elsewhere (outside the imagery's footprint)
    #: ``prediction`` is the network's extrapolation of nothing observed, and a stored result says no data.
    observed: np.ndarray | None = None
    #: With ``shrink``: the factor each band's correction to the guide was scaled by (0 = the guide);
    #: with ``shrink="regime"`` that of the interpolated regime, all of them in ``shrinkage_regimes``.
    shrinkage: tuple[float, ...] | None = None
    #: With ``guide_model="ridge"`` and ``shrink``: the factor each band's ridge correction was scaled by.
    ridge_shrinkage: tuple[float, ...] | None = None
    #: With ``date_field`` and ``shrink``: the share of the same-date field each band's guide took.
    date_field_shrinkage: tuple[float, ...] | None = None
    #: With ``shrink``: mean squared error on the held-out pixels of the guide and of the output.
    holdout_guide_mse: float = float("nan")
    holdout_fit_mse: float = float("nan")
    #: Predicted standard deviation of ``prediction`` (reflectance), (time, band, y, x) float32, from the
    #: held-out samples' errors (fit.uncertainty); 0 on kept pixels, (1 − w)·σ on feathered ones. None
    #: without held-out samples (``holdout_fraction=0``).
    sigma: np.ndarray | None = None
    #: The error model behind ``sigma`` (its kind, samples, per-band scales).
    error_model: ErrorModel | None = None
    #: With ``shrink="regime"``: per regime (:data:`GUIDE_REGIMES`), each band's factor.
    shrinkage_regimes: tuple[tuple[float, ...], ...] | None = None

    @property
    def final_loss(self) -> float:
        return float(self.loss_curve[-1, 1]) if len(self.loss_curve) else float("nan")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else must be a device torch knows."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise FitConfigError(f"unknown device {device!r} (--device): use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise FitConfigError(f"device {device!r} asked for (--device) but CUDA is not available here")
    return resolved


def normalise_s1(s1_db: np.ndarray, days: np.ndarray) -> np.ndarray:
    """dB -> [0, 1] over :data:`S1_DB_RANGE`; missing dates (NaN) filled from the pixel's neighbours in time.

    Radar changes slowly next to clouds, so a missing date takes the linear interpolation of the pixel's
    previous and next acquisitions; a pixel with no radar at all takes the per-channel median.
    """
    low, high = S1_DB_RANGE
    scaled = (np.clip(s1_db, low, high) - low) / (high - low)
    valid = np.isfinite(scaled).all(axis=1)
    if valid.all():
        return scaled.astype(np.float32)
    return temporal_linear(np.where(valid[:, None], scaled, 0.0), valid, days).astype(np.float32)


def guide_series(reflectance: np.ndarray, clear: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Leave-one-out temporal linear interpolation of the clear observations, for every date and pixel.

    Each date is interpolated from the *other* dates' clear observations, also where it is clear itself:
    on the pixels the network learns from, the guide is then a real prediction with real errors (not a
    copy of the target), so what the network learns (correcting interpolation with radar and context) is
    what it must do under the clouds.
    """
    guide = temporal_linear(reflectance, clear, days, leave_one_out=True)
    if not np.isfinite(guide).all():
        guide = np.where(np.isfinite(guide), guide, mosaic_mean(reflectance, clear, days))
    # In place and without a copy when already float32: a full tile's guide is ~350 MB.
    guide = guide.astype(np.float32, copy=False)
    return np.clip(guide, 0.0, 1.0, out=guide)


def guide_gaps(clear: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(time, 2, y, x): how far the guide reaches back and forward, as 1 − exp(−gap / GAP_SCALE_DAYS).

    The guide's error grows with the gap it interpolates across; with the gaps as input, the network can
    learn to correct a 5-day interpolation less than a 40-day one. Leave-one-out, like the guide.
    """
    gaps = observation_gaps(clear, days, leave_one_out=True)
    return (1.0 - np.exp(-gaps / GAP_SCALE_DAYS)).astype(np.float32)


def guide_regimes(visible: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(time, y, x): each sample's regime of the leave-one-out guide, an index into :data:`GUIDE_REGIMES`
    (0: visible observations on both sides in time, 1: on one side only or none)."""
    gaps = observation_gaps(visible, days, leave_one_out=True)
    return (~np.isfinite(gaps).all(axis=1)).astype(np.int8)


def s1_change(radar: np.ndarray, visible: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(time, 2, y, x): the radar at each date minus the radar interpolated through the optical neighbours.

    The guide interpolates each date from the previous and next *visible* optical dates; this is how far
    the radar moved away from the same interpolation (leave-one-out, like the guide), i.e. the change the
    guide cannot see, × :data:`S1_CHANGE_SCALE`. ``radar``: the normalised input (S1, or the noise map).
    """
    interpolated = temporal_linear(radar, visible, days, leave_one_out=True)
    interpolated = np.where(np.isfinite(interpolated), interpolated, radar)
    return ((radar - interpolated) * S1_CHANGE_SCALE).astype(np.float32)


def _ridge_features(
    guide: np.ndarray, radar: np.ndarray, visible: np.ndarray, days: np.ndarray
) -> list[np.ndarray]:
    """Per date, (y·x, features): the guide, the radar interpolated through the guide's neighbours,
    its change, that change's local means, and the gaps the interpolation spans."""
    interpolated = temporal_linear(radar, visible, days, leave_one_out=True)
    interpolated = np.where(np.isfinite(interpolated), interpolated, radar)
    change = radar - interpolated
    gaps = guide_gaps(visible, days)
    out = []
    for date in range(guide.shape[0]):
        means = [
            ndimage.uniform_filter(change[date], size=(1, n, n), mode="nearest") for n in RIDGE_NEIGHBOURHOODS
        ]
        # The interpolation's error grows with the gap it spans: every radar term also times the gap.
        reach = gaps[date].mean(axis=0, keepdims=True)
        radar_terms = np.concatenate([change[date], *means], axis=0)
        terms = (guide[date], guide[date] * reach, interpolated[date], radar_terms, radar_terms * reach)
        columns = np.concatenate([*terms, gaps[date]], axis=0)
        out.append(columns.reshape(columns.shape[0], -1).T.astype(np.float64))
    return out


def ridge_guide(
    reflectance: np.ndarray,
    guide: np.ndarray,
    visible: np.ndarray,
    radar: np.ndarray,
    days: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """The interpolation corrected by a per-tile ridge regression of its error on the radar.

    Per band, the error of the leave-one-out interpolation on the ``visible`` samples is regressed on the
    guide, the radar interpolated through the same optical neighbours, the radar's change from that
    (also its 3×3 and 9×9 px local means) and the gaps in days; every date is then predicted without its
    own observation (leave-one-out, like the guide). Issue #12 measured this kind of model +0.5…2 dB
    above interpolation on held-out series. Too few visible samples: the guide unchanged.
    """
    n_dates = guide.shape[0]
    columns = _ridge_features(guide, radar, visible, days)
    n_features = columns[0].shape[1]
    picked = [np.flatnonzero(visible[t].ravel()) for t in range(n_dates)]
    n_samples = sum(len(p) for p in picked)
    if n_samples < RIDGE_MIN_SAMPLES_PER_FEATURE * (n_features + 1):
        return guide
    x = np.concatenate([c[p] for c, p in zip(columns, picked, strict=True)])
    bands = guide.shape[1]
    error = np.concatenate(
        [(reflectance[t] - guide[t]).reshape(bands, -1).T[p] for t, p in enumerate(picked)]
    ).astype(np.float64)
    if n_samples > RIDGE_MAX_SAMPLES:
        keep = np.random.default_rng([seed, RIDGE_STREAM]).choice(n_samples, RIDGE_MAX_SAMPLES, replace=False)
        x, error = x[keep], error[keep]
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
    gram = z.T @ z
    penalty = RIDGE_PENALTY * np.trace(gram) / len(gram) * np.eye(len(gram))
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    coefficients = np.linalg.solve(gram + penalty, z.T @ error)  # (features + 1, bands)
    corrected = np.empty_like(guide)
    for t, c in enumerate(columns):
        zt = np.concatenate([(c - mean) / std, np.ones((len(c), 1))], axis=1)
        corrected[t] = guide[t] + (zt @ coefficients).T.reshape(guide[t].shape)
    return np.clip(corrected, 0.0, 1.0).astype(np.float32)


def cloud_shapes(refined: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """(time, y, x): the series' own clouds, shadows and other untrusted pixels that have data."""
    return (refined != MaskClass.NODATA) & ~clear


def paint_shapes(
    clear: np.ndarray, shapes: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """(time, y, x): about ``fraction`` of the ``clear`` samples, in the series' own cloud ``shapes``.

    Dates are visited in a random order; each takes the shape of another random date that has clouds,
    shifted by a random offset (wrapping around), and loses its clear pixels under it, until the share is
    reached. A series with no cloud at all falls back to random single pixels.
    """
    hidden = np.zeros_like(clear)
    goal = fraction * clear.sum()
    sources = np.flatnonzero(shapes.any(axis=(1, 2)))
    if goal <= 0:
        return hidden
    if not sources.size:
        return clear & (rng.random(clear.shape) < fraction)
    height, width = clear.shape[1:]
    for date in rng.permutation(clear.shape[0]):
        if hidden.sum() >= goal:
            break
        if not clear[date].any():
            continue
        others = sources[sources != date]
        if not others.size:
            continue
        source = int(rng.choice(others))
        shift = (int(rng.integers(height)), int(rng.integers(width)))
        hidden[date] = clear[date] & np.roll(shapes[source], shift, axis=(0, 1))
    return hidden


def feather_weights(kept: np.ndarray, width_px: int) -> np.ndarray:
    """(time, y, x): the observed value's weight in the output, 0 where filled, ramping to 1 at
    ``width_px + 1`` pixels (Euclidean) from the nearest filled pixel of the same date."""
    weights = np.zeros(kept.shape, dtype=np.float32)
    for date, keep in enumerate(kept):
        if keep.all():
            weights[date] = 1.0
        elif keep.any():
            distance = ndimage.distance_transform_edt(keep)
            weights[date] = np.clip(distance / (width_px + 1), 0.0, 1.0)
    return weights


def trusted_clear(
    reflectance: np.ndarray, mask: np.ndarray, bands: Sequence[str], config: FitConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(refined mask, clear pixels the fit may learn from): nodata and refined clouds excluded."""
    mask = np.array(mask, dtype=np.uint8, copy=True)
    nodata = ~np.isfinite(reflectance).all(axis=1) | (reflectance <= 0).any(axis=1)
    mask[nodata] = MaskClass.NODATA
    refined = refine_masks(np.nan_to_num(reflectance), mask, bands, config.masks)
    return refined, refined == MaskClass.CLEAR


@contextlib.contextmanager
def _deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Seeded, deterministic kernels for the fit, restoring the caller's settings afterwards."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only on CUDA: reflection-pad backward has no deterministic CUDA kernel; CPU runs are exact.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max allocated"
    # ru_maxrss is in KiB on Linux: the process's peak resident memory, the fit's and everything else's.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


@dataclass(frozen=True)
class DevicePath:
    """How the fit runs on its device: autocast precision, activation layout, compile mode."""

    precision: str
    memory_format: str
    compile: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.memory_format == "channels_last" else torch.contiguous_format


def device_path(config: FitConfig, device: torch.device) -> DevicePath:
    """Resolve the config's ``auto`` choices for ``device``.

    bf16 autocast and channels-last 3D are what make cuDNN's tensor-core convolution kernels apply on
    NVIDIA GPUs; on a CPU, oneDNN's bf16 3D convolutions are several times *slower* than fp32 (measured,
    docs/fit.md "Cost"), so ``auto`` keeps fp32 and the default layout there.
    """
    cuda = device.type == "cuda"
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    memory_format = config.memory_format
    if memory_format == "auto":
        memory_format = "channels_last" if cuda else "contiguous"
    return DevicePath(precision, memory_format, config.compile)


class EarlyStop:
    """Stops a fit once its error on held-out clear pixels stops improving.

    The error of each window visit is the held-out L2 of that visit's last forward pass (no extra
    compute); a pass's worth of visits is averaged so the comparison is over the same windows. The fit
    stops when that average has not improved on its best by ``min_delta`` (relative) for ``patience``
    visits.
    """

    def __init__(self, visits_per_pass: int, patience: int, min_delta: float) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=visits_per_pass)
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.since_best = 0

    @property
    def current(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def update(self, holdout_loss: float) -> bool:
        """Record one visit's held-out error; True when the fit should stop."""
        self.recent.append(holdout_loss)
        if len(self.recent) < (self.recent.maxlen or 1):
            return False
        mean = self.current
        if mean < self.best * (1.0 - self.min_delta):
            self.best, self.since_best = mean, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def split_holdout(
    clear: np.ndarray, fraction: float, seed: int, shapes: np.ndarray | None = None, dates: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels to learn from, held-out pixels): a random ``fraction`` of the clear ones, never learned.

    With ``shapes`` (the series' cloud shapes, :func:`cloud_shapes`), the held-out pixels are those
    shapes painted onto clear dates (:func:`paint_shapes`) instead of single random pixels. ``dates``:
    also hold out that many whole dates, drawn among the interior dates with the most trusted pixels
    (:func:`holdout_whole_dates`).
    """
    if fraction <= 0 and dates <= 0:
        return clear, np.zeros_like(clear)
    rng = np.random.default_rng([seed, HOLDOUT_STREAM])
    if fraction <= 0:
        held = np.zeros_like(clear)
    elif shapes is not None:
        held = paint_shapes(clear, shapes, fraction, rng)
    else:
        held = clear & (rng.random(clear.shape) < fraction)
    if dates > 0:
        held = held | holdout_whole_dates(clear, dates, rng)
    return clear & ~held, held


#: Whole dates held out are drawn among the interior dates at least this clear (share of their pixels
#: trusted), so that their truth is the surface and not haze the masks missed.
HOLDOUT_DATE_MIN_CLEAR = 0.9


def holdout_whole_dates(clear: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(time, y, x): every trusted pixel of ``count`` dates drawn at random among the interior ones (not
    the first or last: a fill there extrapolates) that are at least :data:`HOLDOUT_DATE_MIN_CLEAR` clear;
    fewer where fewer qualify, and never so many that fewer than 3 clear dates are left to learn from."""
    held = np.zeros_like(clear)
    share = clear.mean(axis=(1, 2))
    candidates = np.flatnonzero(share >= HOLDOUT_DATE_MIN_CLEAR)
    candidates = candidates[(candidates > 0) & (candidates < clear.shape[0] - 1)]
    count = min(count, len(candidates), max(0, int((share > 0).sum()) - 3))
    if count > 0:
        held[rng.choice(candidates, count, replace=False)] = True
    return held & clear


def _lr_factor(config: FitConfig, total: int) -> Callable[[int], float]:
    if config.lr_decay == "none":
        return lambda step: 1.0
    low = config.lr_final_ratio
    return lambda step: low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def decloud(
    s2: np.ndarray,
    mask: np.ndarray,
    s1: np.ndarray | None,
    config: FitConfig,
    *,
    bands: Sequence[str],
    days: np.ndarray | None = None,
    device: str = "auto",
    seed: int = 0,
    vgg: VGG16 | None = None,
    vgg_weights: str | None = None,
    progress: Progress | None = None,
    name: str = "tile",
    init_weights: Mapping[str, torch.Tensor] | None = None,
    keep_weights: bool = False,
    snapshot: Snapshot | None = None,
    snapshot_passes: Sequence[int] = (),
) -> DecloudResult:
    """Fit one network to a tile's clear pixels and return its cloud-free series.

    ``s2``: reflectance in [0, 1] (the schema's uint16 / 10000; 0 or NaN = no data), (time, band, y, x).
    ``mask``: the schema's classes (time, y, x). ``s1``: backscatter in dB (time, 2, y, x), NaN where
    missing; needed for ``config.input == "s1"``. ``days``: acquisition days (time,), default 0, 1, 2, ...
    ``init_weights``: a converged neighbour's network weights to start from (warm start: the schedule
    then runs ``config.warm_passes`` passes); ``keep_weights``: return the final weights in the result.
    ``snapshot``: called after each pass listed in ``snapshot_passes`` (1 = after the first) with the
    prediction the fit would return had it stopped there; the fit itself is unchanged by it (one
    inference pass per snapshot, no optimiser state or random draw touched).
    """
    s2 = np.asarray(s2, dtype=np.float32)
    n_dates, n_bands, height, width = _check_shapes(s2, mask, s1, bands, name)
    days = np.arange(n_dates, dtype=np.float64) if days is None else np.asarray(days, dtype=np.float64)
    torch_device = resolve_device(device)
    refined, clear = trusted_clear(s2, mask, bands, config)
    observed = (refined != MaskClass.NODATA).any(axis=0)
    if not clear.any():
        raise AllCloudyError(
            f"tile {name!r}: no clear pixel in any of its {n_dates} dates after mask refinement: there is "
            "nothing to learn the surface from. Ingest a longer period or a less cloudy season, or check "
            "the tile's masks; nothing was written"
        )
    radar = _network_input(s1, config, days, (n_dates, height, width), seed, name)
    reflectance = np.nan_to_num(s2)

    # The ridge guide's correction, per band, as far as it helps on the held-out pixels (all of it
    # without a hold-out); set below, once the held-out pixels are drawn.
    ridge_factor = np.ones((1, n_bands, 1, 1), dtype=np.float32)
    # With shrink="regime": one factor per guide regime and band instead (set below).
    ridge_regimes: np.ndarray | None = None
    # The same-date field's share per band, as far as it helps on the held-out pixels (set below).
    date_factor = np.ones((1, n_bands, 1, 1), dtype=np.float32)

    # The last field computed, by its visible set: the same set comes back in a row (the factor's check,
    # the training's input, the shrink's guide), ~5 CPU s a full tile each; one entry only, since a
    # full tile's field is ~350 MB and a new hidden set every pass would otherwise pile them up.
    last_field: dict[bytes, np.ndarray] = {}
    blue = list(bands).index(BLUE_BAND) if BLUE_BAND in bands else None

    def date_field(guide: np.ndarray, visible: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(np.packbits(visible).tobytes(), digest_size=16).digest()
        if key not in last_field:
            last_field.clear()
            last_field[key] = date_residual_field(
                reflectance, guide, visible, blue=blue, device=torch_device, similar=config.date_field_similar
            )
        return last_field[key]

    def assemble(visible: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The network's input and the guide when only ``visible`` samples are known."""
        guide = guide_series(reflectance, visible, days) if config.guide else None
        if guide is not None and config.guide_model == "ridge":
            ridge = ridge_guide(reflectance, guide, visible, radar, days, seed)
            if ridge_regimes is None:
                guide = (guide + ridge_factor * (ridge - guide)).astype(np.float32)
            else:
                guide = _apply_factors(guide, ridge, ridge_regimes, guide_regimes(visible, days))
        if guide is not None and config.date_field and date_factor.any():
            guide = np.clip(guide + date_factor * date_field(guide, visible), 0.0, 1.0).astype(np.float32)
        parts = [radar]
        if guide is not None and config.guide_gaps:
            parts.append(guide_gaps(visible, days))
        if guide is not None and config.s1_change:
            parts.append(s1_change(radar, visible, days))
        return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)), guide

    shapes = cloud_shapes(refined, clear)
    # Held-out pixels feed nothing the fit sees: not the loss, not the interpolation guide.
    learn, held = split_holdout(
        clear,
        config.holdout_fraction,
        seed,
        shapes if config.holdout_shapes == "clouds" else None,
        config.holdout_dates,
    )
    if config.guide_model == "ridge" and config.shrink != "off" and held.any():
        linear = guide_series(reflectance, learn, days)
        ridge = ridge_guide(reflectance, linear, learn, radar, days, seed)
        if config.shrink == "regime":
            ridge_regimes = fit_regime_shrinkage(ridge, linear, reflectance, held, guide_regimes(learn, days))
            ridge_factor[:] = ridge_regimes[0].reshape(ridge_factor.shape)
        else:
            ridge_factor[:] = fit_shrinkage(ridge, linear, reflectance, held).reshape(ridge_factor.shape)
    if config.date_field and config.shrink != "off":
        date_factor[:] = 0.0  # the guide without the field: assemble() now returns it
        seen = assemble(learn)[1]
        assert seen is not None  # date_field needs the guide (FitConfig checks it)
        field = date_field(seen, learn)
        # Checked on held-out samples of dates that show pixels (the field is 0 on a date held out
        # whole); too few of them (a tile a few pixels wide): on the visible samples, whose field was
        # computed without their own value.
        check = held & learn.any(axis=(1, 2), keepdims=True)
        if check.sum() < SHRINK_MIN_SAMPLES:
            check = learn
        date_factor[:] = fit_shrinkage(seen + field, seen, reflectance, check).reshape(date_factor.shape)
    hide_rng = np.random.default_rng([seed, HIDE_STREAM])

    def draw_hidden() -> np.ndarray:
        return paint_shapes(learn, shapes, config.hide_fraction, hide_rng)

    hidden = draw_hidden() if config.hide_fraction > 0 else np.zeros_like(learn)
    inputs, guide = assemble(learn & ~hidden)
    if config.perceptual_weight > 0 and vgg is None:
        vgg = load_vgg16(vgg_weights)

    plan = spatial_plan(height, width, config.depth)
    depth = plan.depth
    path = device_path(config, torch_device)
    started = time.perf_counter()
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    with _deterministic(seed, torch_device):
        net = EncoderDecoder3D(
            inputs.shape[1] + (n_bands if guide is not None else 0),
            n_bands,
            config.channels_down[:depth],
            config.channels_up[:depth],
            config.skip_channels[:depth],
        )
        if guide is not None and config.start_at_guide:
            net.zero_head()
        if init_weights is not None:
            _load_init_weights(net, init_weights, name)
        # Module.to(memory_format=...) is valid at run time; torch's stubs omit the keyword.
        net = net.to(torch_device, memory_format=path.torch_memory_format)  # type: ignore[call-overload]
        # With a perceptual weight, vgg was loaded above when not given.
        perceptual = (
            PerceptualLoss(cast(VGG16, vgg), bands).to(torch_device) if config.perceptual_weight > 0 else None
        )

        kept_weight = feather_weights(clear, config.feather_px)[:, None] if config.feather_px else None

        def finish(raw: np.ndarray) -> np.ndarray:
            prediction = np.clip(raw, 0.0, 1.0)
            if kept_weight is not None:
                prediction = kept_weight * reflectance + (1.0 - kept_weight) * prediction
            elif config.keep_clear:
                prediction = np.where(clear[:, None], reflectance, prediction)
            return prediction.astype(np.float32)

        on_pass: Snapshot | None = None
        if snapshot is not None:

            def on_pass(
                passes_done: int, steps_done: int, raw: np.ndarray, report: Snapshot = snapshot
            ) -> None:
                report(passes_done, steps_done, finish(raw))

        def regimes(visible: np.ndarray) -> np.ndarray:
            return guide_regimes(visible, days)

        samples = _Samples(clear, learn, held, hidden, assemble, draw_hidden, days, regimes, blue)
        fitted = _fit(
            net,
            perceptual,
            inputs,
            s2,
            guide,
            samples,
            plan,
            config,
            torch_device,
            path,
            seed,
            progress,
            warm=init_weights is not None,
            on_pass=on_pass,
            snapshot_passes=frozenset(snapshot_passes),
        )
        prediction = finish(fitted.prediction)
        sigma = None
        if fitted.sigma is not None:
            kept = clear[:, None].astype(np.float32) if config.keep_clear else None
            sigma = propagate(fitted.sigma, kept_weight if kept_weight is not None else kept)
    seconds = time.perf_counter() - started
    peak, peak_kind = _peak_memory(torch_device)
    weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()} if keep_weights else None
    return DecloudResult(
        prediction=prediction,
        clear=clear,
        loss_curve=fitted.curve,
        iterations=fitted.iterations,
        windows=len(fitted.spans),
        network_depth=depth,
        seconds=seconds,
        device=str(torch_device),
        peak_memory_bytes=peak,
        peak_memory_kind=peak_kind,
        scheduled_iterations=config.total_iterations(n_dates, warm=init_weights is not None),
        holdout_loss=fitted.holdout_loss,
        stopped_early=fitted.stopped_early,
        precision=path.precision,
        memory_format=path.memory_format,
        compile=path.compile,
        warm_started=init_weights is not None,
        weights=weights,
        observed=observed,
        shrinkage=fitted.shrinkage,
        ridge_shrinkage=(
            tuple(float(f) for f in ridge_factor.ravel()) if config.guide_model == "ridge" else None
        ),
        date_field_shrinkage=tuple(float(f) for f in date_factor.ravel()) if config.date_field else None,
        holdout_guide_mse=fitted.holdout_guide_mse,
        holdout_fit_mse=fitted.holdout_fit_mse,
        sigma=sigma,
        error_model=fitted.error_model,
        shrinkage_regimes=fitted.shrinkage_regimes,
    )


def _load_init_weights(net: EncoderDecoder3D, weights: Mapping[str, torch.Tensor], name: str) -> None:
    """Start from a neighbour's weights; a network of another shape is refused with what differs."""
    try:
        net.load_state_dict(dict(weights), strict=True)
    except RuntimeError as err:
        raise WarmStartError(
            f"tile {name!r}: the warm-start weights do not fit this tile's network "
            f"({str(err).splitlines()[0]}...): start from a neighbour fitted with the same preset, bands "
            "and input, or fit without init_weights (--init-weights)"
        ) from err


def _check_shapes(
    s2: np.ndarray, mask: np.ndarray, s1: np.ndarray | None, bands: Sequence[str], name: str
) -> tuple[int, int, int, int]:
    if s2.ndim != 4:
        raise FitInputError(f"tile {name!r}: s2 must be (time, band, y, x), got shape {s2.shape}")
    n_dates, n_bands, height, width = s2.shape
    if np.shape(mask) != (n_dates, height, width):
        raise FitInputError(
            f"tile {name!r}: mask has shape {np.shape(mask)}, expected {(n_dates, height, width)}"
        )
    if s1 is not None and (np.shape(s1)[:1] + np.shape(s1)[2:] != (n_dates, height, width)):
        raise FitInputError(
            f"tile {name!r}: s1 has shape {np.shape(s1)}, expected ({n_dates}, 2, {height}, {width})"
        )
    if len(bands) != n_bands:
        raise FitInputError(f"tile {name!r}: {len(bands)} band names for {n_bands} bands in s2")
    return n_dates, n_bands, height, width


def _network_input(
    s1: np.ndarray | None,
    config: FitConfig,
    days: np.ndarray,
    shape: tuple[int, int, int],
    seed: int,
    name: str,
) -> np.ndarray:
    """(time, channels, y, x): normalised S1, or the fixed noise map of the ablation (2 channels too)."""
    n_dates, height, width = shape
    if config.input == "noise":
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((n_dates, 2, height, width)) * config.noise_scale).astype(np.float32)
    if s1 is None or not np.isfinite(s1).any():
        raise FitInputError(
            f"tile {name!r}: input 's1' asked for but the tile has no radar (s1 is missing or all NaN); "
            "ingest S1 for it, or fit with --input noise (the paper's ablation)"
        )
    return normalise_s1(np.asarray(s1, dtype=np.float32), days)


@dataclass(frozen=True)
class _Fitted:
    prediction: np.ndarray
    curve: np.ndarray
    spans: list[tuple[int, int]]
    iterations: int
    holdout_loss: float
    stopped_early: bool
    shrinkage: tuple[float, ...] | None = None
    holdout_guide_mse: float = float("nan")
    holdout_fit_mse: float = float("nan")
    #: σ of ``prediction`` before kept / feathered pixels (fit.uncertainty), and its model.
    sigma: np.ndarray | None = None
    error_model: ErrorModel | None = None
    shrinkage_regimes: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class _Samples:
    """Which (date, pixel) samples the fit may use how, and how to rebuild its input from them.

    ``clear``: trusted; ``learn``: trusted minus held out; ``held``: held out (never seen, never learned);
    ``hidden``: the current hidden set (a subset of ``learn`` kept out of every input but in the loss);
    ``assemble(visible)``: (network input, guide) when only ``visible`` samples are known;
    ``draw_hidden()``: a fresh hidden set; ``days``: the dates (days), for the uncertainty's features.
    """

    clear: np.ndarray
    learn: np.ndarray
    held: np.ndarray
    hidden: np.ndarray
    assemble: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    draw_hidden: Callable[[], np.ndarray]
    days: np.ndarray
    #: ``regimes(visible)``: each sample's guide regime when only ``visible`` samples are known.
    regimes: Callable[[np.ndarray], np.ndarray] | None = None
    #: The index of the blue band (B02) among the bands, if there is one (the σ model's haze test).
    blue: int | None = None


def fit_shrinkage(
    prediction: np.ndarray, guide: np.ndarray, target: np.ndarray, held: np.ndarray
) -> np.ndarray:
    """Per band, the factor a in [0, 1] that minimises the squared error of guide + a·(prediction − guide)
    on the ``held`` (time, y, x) pixels: 0 where the correction does not help there, 1 where it all does."""
    correction = np.moveaxis(prediction - guide, 1, -1)[held].astype(np.float64)  # (n, band)
    residual = np.moveaxis(target - guide, 1, -1)[held].astype(np.float64)
    power = (correction**2).sum(axis=0)
    factor = np.where(power > 0, (correction * residual).sum(axis=0) / np.where(power > 0, power, 1.0), 0.0)
    return np.clip(factor, 0.0, 1.0)


def fit_regime_shrinkage(
    prediction: np.ndarray,
    guide: np.ndarray,
    target: np.ndarray,
    held: np.ndarray,
    regimes: np.ndarray,
    n_regimes: int = len(GUIDE_REGIMES),
    min_samples: int = SHRINK_MIN_SAMPLES,
    min_dates: int = SHRINK_MIN_DATES,
) -> np.ndarray:
    """(regime, band): per regime of the guide, the factor of :func:`fit_shrinkage` on its held-out
    samples, capped by every held-out date's own best factor (dates with ``min_samples`` of them in
    the regime): the correction never goes further than any of those dates wants, so none of them ends
    worse than its guide. A regime with fewer than ``min_dates`` such dates keeps no correction (0)."""
    factors = np.zeros((n_regimes, prediction.shape[1]))
    for regime in range(n_regimes):
        pick = held & (regimes == regime)
        dates = np.flatnonzero(pick.sum(axis=(1, 2)) >= min_samples)
        if len(dates) < min_dates:
            continue
        bound = np.ones(prediction.shape[1])
        for date in dates:
            one = np.zeros_like(pick)
            one[date] = pick[date]
            bound = np.minimum(bound, fit_shrinkage(prediction, guide, target, one))
        factors[regime] = np.minimum(fit_shrinkage(prediction, guide, target, pick), bound)
    return factors


def _apply_factors(
    guide: np.ndarray, raw: np.ndarray, factors: np.ndarray, regimes: np.ndarray | None
) -> np.ndarray:
    """guide + factor × (raw − guide), the factor per band (``factors`` (band,)) or per regime and band."""
    per_band = np.asarray(factors).astype(np.float32)
    if regimes is None:
        scale = per_band.reshape(1, -1, 1, 1)
    else:  # each regime's factors where the sample is in it: (time, band, y, x), no float64 gather
        scale = np.empty(guide.shape, dtype=np.float32)
        for regime, values in enumerate(per_band):
            np.copyto(scale, values.reshape(1, -1, 1, 1), where=(regimes == regime)[:, None])
    return (guide + scale * (raw - guide)).astype(np.float32)


def _fit(
    net: EncoderDecoder3D,
    perceptual: PerceptualLoss | None,
    inputs: np.ndarray,
    s2: np.ndarray,
    guide: np.ndarray | None,
    samples: _Samples,
    plan: SpatialPlan,
    config: FitConfig,
    device: torch.device,
    path: DevicePath,
    seed: int,
    progress: Progress | None,
    *,
    warm: bool = False,
    on_pass: Snapshot | None = None,
    snapshot_passes: frozenset[int] = frozenset(),
) -> _Fitted:
    """The schedule itself: the prediction (time, band, y, x), the loss curve, the windows, the steps.

    ``on_pass(passes, steps, raw prediction)`` is called after each pass in ``snapshot_passes``.
    """
    n_dates = s2.shape[0]

    def series(a: np.ndarray) -> torch.Tensor:
        # (time, channels, y, x) -> (1, channels, time, y', x') padded, on the device
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(1, 0, 2, 3)[None]
        return pad_spatial(t, plan).to(device)

    def pixel_weights(pixels: np.ndarray) -> torch.Tensor:
        # Weights are zero outside the tile: padding is never learned from.
        w = torch.zeros((1, 1, n_dates, *plan.padded_shape), device=device)
        left, _, top, _ = plan.pads
        w[..., top : top + plan.height, left : left + plan.width] = torch.from_numpy(
            pixels.astype(np.float32)
        ).to(device)
        return w

    def network_input(
        inputs: np.ndarray, guide: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = series(inputs)
        if guide is None:
            return x, None
        g = series(guide)
        return torch.cat([x, g], dim=1), torch.logit(g.clamp(GUIDE_EPS, 1 - GUIDE_EPS))

    def train_weight(hidden: np.ndarray) -> torch.Tensor:
        if not hidden.any():
            return pixel_weights(samples.learn)
        # masked_l2 squares the weight: a hidden pixel counts hide_weight times a visible one.
        return pixel_weights(samples.learn & ~hidden) + math.sqrt(config.hide_weight) * pixel_weights(hidden)

    reflectance = np.nan_to_num(s2)
    target = series(reflectance)
    learn, held = samples.learn, samples.held
    hiding = config.hide_fraction > 0
    x_all, offset = network_input(inputs, guide)
    weight = train_weight(samples.hidden)
    held_weight = pixel_weights(held) if held.any() else None
    # What the network predicts from: with hiding, the input of every sample it may learn from.
    x_seen, offset_seen = network_input(*samples.assemble(learn)) if hiding else (x_all, offset)

    spans = windows(n_dates, config.window, config.stride)
    passes = config.warm_passes if warm and config.warm_passes is not None else config.passes
    total = config.total_iterations(n_dates, warm=warm)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_factor(config, total))
    losses = torch.zeros(total, device=device)
    jitter = torch.Generator(device=device).manual_seed(seed) if config.input_jitter else None
    steps_per_pass = config.steps_per_pass(n_dates)
    stopper = (
        EarlyStop(steps_per_pass, max(1, round(config.stop_patience * steps_per_pass)), config.stop_min_delta)
        if held_weight is not None
        else None
    )
    forward = _compiled(net, path)
    # The averaged copy predicts; the network itself trains (and is what keep_weights returns).
    averaged = (
        AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(config.weight_average), use_buffers=True)
        if config.weight_average > 0
        else None
    )
    predictor = forward if averaged is None else averaged
    report_every = max(1, total // PROGRESS_EVENTS)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    step = 0
    stopped_early = False
    net.train()

    def batch(t: torch.Tensor, group: Sequence[int]) -> torch.Tensor:
        # Windows of one group side by side in the batch dimension (all windows have the same length).
        parts = [t[:, :, spans[w][0] : spans[w][1]] for w in group]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return out.contiguous(memory_format=path.torch_memory_format)

    chosen = output_windows(n_dates, spans)

    def predict(x_in: torch.Tensor | None = None, off_in: torch.Tensor | None = None) -> np.ndarray:
        # Every date from the window that covers it best; BatchNorm stays in training mode (each window
        # is normalised by its own statistics, as during the fit).
        if x_in is None:
            x_in, off_in = x_seen, offset_seen
        prediction = torch.empty_like(target)
        with torch.no_grad():
            for window, (start, _) in enumerate(spans):
                dates = np.flatnonzero(chosen == window)
                if not dates.size:
                    continue
                off = None if off_in is None else batch(off_in, [window])
                with _autocast(device, path):
                    out = predictor(batch(x_in, [window]), off)
                prediction[:, :, dates] = out.float()[:, :, dates - start]
        return crop_spatial(prediction, plan)[0].permute(1, 0, 2, 3).cpu().numpy()

    current_pass = 0
    for pass_index, group in visit_groups(len(spans), passes, config.windows_per_step, rng):
        if pass_index != current_pass:
            if on_pass is not None and pass_index in snapshot_passes:
                # BatchNorm's running statistics move on every training-mode forward: put them back so a
                # snapshot leaves the fit and its saved weights exactly as they would be without it.
                model = net if averaged is None else averaged
                buffers = {k: b.clone() for k, b in model.named_buffers()}
                on_pass(pass_index, step, predict())
                model.load_state_dict(buffers, strict=False)
            if config.hide_resample:
                hidden = samples.draw_hidden()
                x_all, offset = network_input(*samples.assemble(learn & ~hidden))
                weight = train_weight(hidden)
            current_pass = pass_index
        x, y, w = batch(x_all, group), batch(target, group), batch(weight, group)
        off = None if offset is None else batch(offset, group)
        for inner in range(config.iterations_per_window):
            x_in = x
            if jitter is not None:
                x_in = x + config.input_jitter * torch.randn(x.shape, generator=jitter, device=device)
            with _autocast(device, path):
                out = forward(x_in, off)
            out = out.float()
            loss = masked_l2(out, y, w)
            if perceptual is not None and step % config.perceptual_every == 0:
                with _autocast(device, path):
                    # PerceptualLoss takes one window at a time; a group's term is the mean over its windows.
                    terms = [perceptual(out[i : i + 1], y[i : i + 1], w[i : i + 1]) for i in range(len(x))]
                loss = loss + config.perceptual_weight * torch.stack(terms).mean()
            if stopper is not None and inner == config.iterations_per_window - 1:
                assert held_weight is not None  # stopper exists only with held-out pixels
                h = batch(held_weight, group)
                held_error = float((((out.detach() - y) * h).square().sum() / h.sum().clamp_min(1)).item())
                stopped_early = stopper.update(held_error)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(net)
            losses[step] = loss.detach()
            step += 1
            if progress is not None and (step % report_every == 0 or step == total or stopped_early):
                progress(
                    ProgressEvent(
                        iteration=step,
                        total=total,
                        loss=float(losses[step - 1].item()),
                        pass_index=pass_index,
                        window=group[0],
                        elapsed_s=time.perf_counter() - started,
                    )
                )
        if stopped_early:
            break

    del x_all, offset, weight
    result = predict()
    if on_pass is not None and current_pass + 1 in snapshot_passes:
        on_pass(current_pass + 1, step, result)
    shrinkage, guide_mse, fit_mse = None, float("nan"), float("nan")
    error_model: ErrorModel | None = None
    sigma: np.ndarray | None = None
    by_regime: tuple[tuple[float, ...], ...] | None = None
    if config.shrink != "off" and guide is not None:
        # Never worse than the guide: the correction is kept per band only as far as it helps on the
        # held-out pixels, which no input, guide or loss has seen. Then the output's guide and input
        # use every trusted pixel (the held-out ones too: they are observations like any other).
        seen_guide = samples.assemble(learn)[1]
        assert seen_guide is not None  # shrink needs the guide (FitConfig checks it)
        seen_regimes = full_regimes = None
        if config.shrink == "regime":
            assert samples.regimes is not None  # decloud passes them
            seen_regimes, full_regimes = samples.regimes(learn), samples.regimes(samples.clear)
            factor = fit_regime_shrinkage(result, seen_guide, reflectance, held, seen_regimes)
            by_regime = tuple(tuple(float(f) for f in row) for row in factor)
            shrinkage = by_regime[0]
        else:
            factor = fit_shrinkage(result, seen_guide, reflectance, held)
            shrinkage = tuple(float(f) for f in factor)
        checked = _apply_factors(seen_guide, result, factor, seen_regimes)
        guide_mse = float(((seen_guide - reflectance) ** 2).transpose(0, 2, 3, 1)[held].mean())
        fit_mse = float(((checked - reflectance) ** 2).transpose(0, 2, 3, 1)[held].mean())
        del x_seen, offset_seen
        full_input, full_guide = samples.assemble(samples.clear)
        assert full_guide is not None
        raw = predict(*network_input(full_input, full_guide))
        final = _apply_factors(full_guide, raw, factor, full_regimes)
        # The held-out samples' errors, made without them, model the output's (fit.uncertainty).
        error_model = fit_error_model(
            reflectance, checked, seen_guide, learn, held, samples.days, seed, samples.blue
        )
        sigma = (
            None
            if error_model is None
            else predict_sigma(error_model, reflectance, final, full_guide, samples.clear, samples.days)
        )
        result = final
    elif held.any():
        # No shrinkage: the output itself was predicted from the learned samples only.
        seen_guide = None if guide is None else (samples.assemble(learn)[1] if hiding else guide)
        error_model = fit_error_model(
            reflectance, result, seen_guide, learn, held, samples.days, seed, samples.blue
        )
        sigma = (
            None
            if error_model is None
            else predict_sigma(error_model, reflectance, result, seen_guide, learn, samples.days)
        )
    return _Fitted(
        prediction=result,
        curve=_downsample_curve(losses[:step].cpu().numpy()),
        spans=spans,
        iterations=step,
        holdout_loss=stopper.current if stopper is not None else float("nan"),
        stopped_early=stopped_early,
        shrinkage=shrinkage,
        holdout_guide_mse=guide_mse,
        holdout_fit_mse=fit_mse,
        sigma=sigma,
        error_model=error_model,
        shrinkage_regimes=by_regime,
    )


def _autocast(device: torch.device, path: DevicePath) -> contextlib.AbstractContextManager[object]:
    dtype = path.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _compiled(
    net: EncoderDecoder3D, path: DevicePath
) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The network's forward, compiled when asked (``reduce-overhead`` replays CUDA graphs on CUDA)."""
    if path.compile == "off":
        return net
    try:
        return torch.compile(net, mode=path.compile, dynamic=False)  # type: ignore[return-value]
    except RuntimeError as err:
        raise FitConfigError(
            f"torch.compile (compile={path.compile!r}) is not available here: {err}; fit with compile 'off'"
        ) from err


def _downsample_curve(losses: np.ndarray) -> np.ndarray:
    """(iteration, mean loss) at up to :data:`LOSS_CURVE_POINTS` points: bin means keep the trend."""
    if losses.size == 0:
        return np.zeros((0, 2))
    edges = np.linspace(0, losses.size, min(LOSS_CURVE_POINTS, losses.size) + 1).astype(int)
    points = [(int(stop), float(losses[start:stop].mean())) for start, stop in itertools.pairwise(edges)]
    return np.array(points, dtype=np.float64)
