"""The paper's evaluation protocol, its partial-cloud variant, and the baselines to beat.

Protocol (Ebel et al. Sec. 4): take dates that are truly clear, paint onto them the clouds of another
date of the same series, fit on the painted series, and score the prediction against the original
image. ``cloudiest`` paints the clouds of the most cloud-covered date (the paper's choice; on real series
that is often the whole image); ``partial`` paints those of a partly cloudy date, the case where the
clear part of the target date itself can guide the fill.

Targets are dates at least :data:`TARGET_MIN_CLEAR` clear *after* mask refinement (SCL alone calls dates
clear that are not), spread over the series. All targets are painted at once and fitted in one run; each
is scored on its own and the scores are averaged per image. Painted pixels take the source date's values
and the source date's SCL class (so SCL-trusting methods see what they would see on real data: SCL's
misses stay misses); the painted region is where the *refined* mask of the source date is cloud or shadow.

Two protocols (``protocol``): ``realistic`` (the default, end to end) paints as above, so a method that
trusts a mask may trust part of the painted clouds (the refinement misses some: 3–17 % of the painted
pixels in ``partial`` mode on the bundled sample); ``oracle`` marks every painted pixel cloud, so no
method ever trusts one: reconstruction quality alone, the paper's protocol.

Scores are reported on the painted region and on the whole image (the target's clear pixels), for the
fit with each input (``s1``, ``noise``), for each baseline with SCL's masks and with the refined masks,
and for the painted input itself (what the user would have without any filling). Each row also carries
the seam ratio (:func:`fit.metrics.seam_ratio`) across the boundary between the pixels the method kept
as observed and those it filled, over the target's truly clear pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from fit.arrays import TileArrays
from fit.baselines import BASELINE_NAMES, baselines_for
from fit.config import FitConfig
from fit.declouder import DecloudResult, Progress, Snapshot, decloud, trusted_clear
from fit.errors import EvaluationError
from fit.metrics import Calibration, Scores, calibration, region_samples, score, seam_ratio
from fit.vgg import VGG16
from tiler.store import MaskClass

PaintMode = Literal["cloudiest", "partial"]
PAINT_MODES: tuple[str, ...] = ("cloudiest", "partial")
Protocol = Literal["realistic", "oracle"]
#: ``realistic``: painted pixels carry the source date's SCL classes; ``oracle``: they are marked cloud.
PROTOCOLS: tuple[str, ...] = ("realistic", "oracle")
#: A target date must be at least this clear after refinement (a few edge pixels may be flagged).
TARGET_MIN_CLEAR = 0.98
#: The partial mode's source date: cloud cover within these bounds, the one closest to half.
PARTIAL_COVER = (0.15, 0.85)
PARTIAL_IDEAL = 0.5
#: The paper's series length (N = 30): the default number of dates an evaluation uses.
PAPER_SERIES = 30

PAINTED = "painted"
WHOLE = "whole"


@dataclass(frozen=True)
class MethodScores:
    """One method's scores, averaged over the targets, on the painted region and the whole image."""

    method: str
    variant: str
    painted: Scores
    whole: Scores
    seconds: float
    #: :func:`fit.metrics.seam_ratio` across the kept/filled boundary, averaged over the targets (NaN
    #: where a target has no such boundary, e.g. a fully painted one).
    seam: float = float("nan")
    #: The fit's predicted σ against its true errors on the painted pixels of every target, pooled
    #: (:func:`fit.metrics.calibration`); None for the baselines and for a fit without σ.
    calibration: Calibration | None = None

    @property
    def label(self) -> str:
        return f"{self.method} ({self.variant})"


@dataclass(frozen=True)
class Evaluation:
    """What was painted where, and every method's scores."""

    tile: str
    preset: str
    paint: str
    dates: tuple[str, ...]
    targets: tuple[str, ...]
    source: str
    painted_fraction: float
    rows: tuple[MethodScores, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    protocol: str = "realistic"
    #: Share of the painted pixels (on the targets) that the fit still trusts: 0 under ``oracle``.
    painted_trusted_fraction: float = float("nan")

    def row(self, method: str, variant: str) -> MethodScores:
        for r in self.rows:
            if (r.method, r.variant) == (method, variant):
                return r
        raise KeyError(f"no row {method} ({variant})")

    def best_baseline(self, region: str = PAINTED, variant: str | None = None) -> MethodScores:
        """The baseline with the highest PSNR in ``region``, over both mask kinds (or ``variant``'s)."""
        candidates = [r for r in self.rows if r.method in BASELINE_NAMES and variant in (None, r.variant)]
        return max(candidates, key=lambda r: getattr(r, region).psnr)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [
            {"method": r.method, "variant": r.variant, "seconds": r.seconds, "seam": r.seam,
             PAINTED: r.painted.to_dict(), WHOLE: r.whole.to_dict(),
             "calibration": None if r.calibration is None else r.calibration.to_dict()}
            for r in self.rows
        ]  # fmt: skip
        best = self.best_baseline()
        out["best_baseline_painted"] = best.label
        fits = [r for r in self.rows if r.method == "fit"]
        out["fit_margin_db_painted"] = {r.variant: r.painted.psnr - best.painted.psnr for r in fits}
        refined = self.best_baseline(variant="refined")
        out["best_refined_baseline_painted"] = refined.label
        out["fit_margin_db_painted_refined"] = {
            r.variant: r.painted.psnr - refined.painted.psnr for r in fits
        }
        return out


def calibration_lines(evaluation: Evaluation) -> list[str]:
    """One line per fit with a σ: its calibration on the painted pixels (for the command line)."""
    lines = []
    for r in evaluation.rows:
        c = r.calibration
        if c is not None:
            lines.append(
                f"fit ({r.variant}) sigma on the {c.pixels} painted pixels: {c.coverage:.1%} of |error| "
                f"within 1 sigma (68.3 % = calibrated), Spearman sigma vs |error| {c.spearman:.2f}, "
                f"RMSE {c.rmse_drop:.1%} lower without the 10 % most uncertain pixels"
            )
    return lines


def choose_targets(clear_fraction: np.ndarray, k: int, name: str) -> list[int]:
    """``k`` dates at least :data:`TARGET_MIN_CLEAR` clear, spread evenly over the candidates in time."""
    candidates = np.flatnonzero(clear_fraction >= TARGET_MIN_CLEAR)
    if candidates.size == 0:
        best = float(clear_fraction.max()) if clear_fraction.size else 0.0
        raise EvaluationError(
            f"tile {name!r}: no date is at least {TARGET_MIN_CLEAR:.0%} clear after mask refinement "
            f"(clearest: {best:.0%}), so there is no target to paint clouds on; evaluate a longer or "
            "another range of dates (--dates START:STOP)"
        )
    k = min(k, candidates.size)
    # The middle of k equal shares of the candidates: one target is the middle one, not the first.
    picks = np.unique(((np.arange(k) + 0.5) * candidates.size / k).astype(int))
    return [int(candidates[i]) for i in picks]


def choose_source(cloud_fraction: np.ndarray, targets: Sequence[int], paint: str, name: str) -> int:
    """The date whose clouds are painted: the cloudiest, or the partly cloudy one closest to half."""
    cover = np.array(cloud_fraction, dtype=np.float64)
    cover[list(targets)] = np.nan
    if paint == "cloudiest":
        if not np.nanmax(cover) > 0:
            raise EvaluationError(f"tile {name!r}: no date has clouds to paint; nothing to evaluate")
        return int(np.nanargmax(cover))
    low, high = PARTIAL_COVER
    eligible = np.flatnonzero((cover >= low) & (cover <= high))
    if not eligible.size:
        raise EvaluationError(
            f"tile {name!r}: no date is between {low:.0%} and {high:.0%} cloudy for --paint partial; "
            "use --paint cloudiest or another range of dates (--dates START:STOP)"
        )
    return int(eligible[np.argmin(np.abs(cover[eligible] - PARTIAL_IDEAL))])


@dataclass(frozen=True)
class PaintedSeries:
    tile: TileArrays
    targets: list[int]
    source: int
    region: np.ndarray  # (y, x): painted pixels
    truth_clear: np.ndarray  # (time, y, x): refined-clear pixels of the original series


def paint(
    tile: TileArrays, config: FitConfig, *, k: int, mode: str, protocol: str = "realistic"
) -> PaintedSeries:
    """Paint the source date's clouds onto ``k`` truly clear dates (the tile itself is not modified).

    ``protocol``: ``realistic`` gives the painted pixels the source date's SCL classes, ``oracle`` marks
    them cloud (nothing painted can then be trusted by anyone).
    """
    if mode not in PAINT_MODES:
        raise EvaluationError(f"unknown paint mode {mode!r} (--paint): use one of {', '.join(PAINT_MODES)}")
    if protocol not in PROTOCOLS:
        raise EvaluationError(
            f"unknown protocol {protocol!r} (--protocol): use one of {', '.join(PROTOCOLS)}"
        )
    refined, clear = trusted_clear(tile.reflectance, tile.mask, tile.bands, config)
    cloudy = (refined == MaskClass.CLOUD) | (refined == MaskClass.SHADOW)
    targets = choose_targets(clear.mean(axis=(1, 2)), k, tile.name)
    source = choose_source(cloudy.mean(axis=(1, 2)), targets, mode, tile.name)
    region = cloudy[source]
    reflectance, mask = tile.reflectance.copy(), tile.mask.copy()
    for t in targets:
        reflectance[t][:, region] = tile.reflectance[source][:, region]
        mask[t][region] = MaskClass.CLOUD if protocol == "oracle" else tile.mask[source][region]
    painted = TileArrays(tile.name, reflectance, mask, tile.s1, tile.bands, tile.times)
    return PaintedSeries(painted, targets, source, region, clear)


def painted_calibration(
    case: PaintedSeries, truth: np.ndarray, prediction: np.ndarray, sigma: np.ndarray
) -> Calibration:
    """:func:`fit.metrics.calibration` over the painted, truly clear pixels of every target, pooled."""
    errors, sigmas = zip(
        *(region_samples(truth[t], prediction[t], sigma[t], case.region & case.truth_clear[t])
          for t in case.targets),
        strict=True,
    )  # fmt: skip
    return calibration(np.concatenate(errors, axis=1), np.concatenate(sigmas, axis=1))


def evaluate(
    tile: TileArrays,
    config: FitConfig,
    *,
    paint_mode: str = "cloudiest",
    protocol: str = "realistic",
    targets: int = 1,
    inputs: Sequence[str] = ("s1", "noise"),
    device: str = "auto",
    seed: int = 0,
    vgg: VGG16 | None = None,
    vgg_weights: str | None = None,
    progress: Callable[[str, Any], None] | None = None,
    snapshot_passes: Sequence[int] = (),
    on_snapshot: Callable[[int, int, MethodScores], None] | None = None,
    init_weights: Mapping[str, torch.Tensor] | None = None,
    on_fit: Callable[[str, PaintedSeries, DecloudResult], None] | None = None,
) -> Evaluation:
    """Run the protocol on ``tile`` (cut it to the dates to use first) and score every method.

    ``progress(stage, event)`` is called with the stage ("fit s1", ...) and the fit's progress event.
    ``on_snapshot(passes, steps, scores)`` is called with the fit's scores after each pass listed in
    ``snapshot_passes`` (quality against compute along one fit; ``scores.seconds`` is NaN there).
    ``init_weights``: start the fits from a neighbour's weights (a warm start: ``config.warm_passes``).
    ``protocol``: ``realistic`` (painted pixels keep the source's SCL classes) or ``oracle`` (marked cloud).
    ``on_fit(input, painted series, result)``: called with each fit's result (e.g. for a quicklook).
    The fit rows carry the calibration of the fit's σ on the painted pixels (``MethodScores.calibration``).
    """
    case = paint(tile, config, k=targets, mode=paint_mode, protocol=protocol)
    series = case.tile
    truth = np.nan_to_num(tile.reflectance)
    rows: list[MethodScores] = []
    refined_clear = trusted_clear(series.reflectance, series.mask, series.bands, config)[1]

    def scored(
        method: str, variant: str, filled: np.ndarray, seconds: float, kept: np.ndarray
    ) -> MethodScores:
        painted_scores, whole_scores, seams = [], [], []
        for t in case.targets:
            whole = case.truth_clear[t]
            painted_scores.append(score(truth[t], filled[t], case.region & whole))
            whole_scores.append(score(truth[t], filled[t], whole))
            seams.append(seam_ratio(filled[t], truth[t], kept[t], valid=whole))
        seam = float(np.nanmean(seams)) if np.isfinite(seams).any() else float("nan")
        return MethodScores(
            method, variant, Scores.mean(painted_scores), Scores.mean(whole_scores), seconds, seam
        )

    for kind in inputs:
        fit_config = config.replace(input=kind)
        callback: Progress | None = None
        if progress is not None:
            callback = (lambda stage: lambda event: progress(stage, event))(f"fit {kind}")
        snapshot: Snapshot | None = None
        if on_snapshot is not None:

            def snapshot(
                passes: int,
                steps: int,
                prediction: np.ndarray,
                kind: str = kind,
                report: Callable[[int, int, MethodScores], None] = on_snapshot,
            ) -> None:
                report(passes, steps, scored("fit", kind, prediction, float("nan"), refined_clear))

        result = decloud(
            series.reflectance,
            series.mask,
            series.s1,
            fit_config,
            bands=series.bands,
            days=series.days,
            device=device,
            seed=seed,
            vgg=vgg,
            vgg_weights=vgg_weights,
            progress=callback,
            name=tile.name,
            snapshot=snapshot,
            snapshot_passes=snapshot_passes,
            init_weights=init_weights,
        )
        row = scored("fit", kind, result.prediction, result.seconds, result.clear)
        if result.sigma is not None:
            row = replace(row, calibration=painted_calibration(case, truth, result.prediction, result.sigma))
        rows.append(row)
        if on_fit is not None:
            on_fit(kind, case, result)

    observed = np.nan_to_num(series.reflectance)
    nodata = ~np.isfinite(series.reflectance).all(axis=1) | (series.reflectance <= 0).any(axis=1)
    masks = {
        "refined": refined_clear,
        "scl": (series.mask == MaskClass.CLEAR) & ~nodata,
    }
    baselines = baselines_for(series.s1)
    for variant, valid in masks.items():
        for method, fill in baselines.items():
            started = time.perf_counter()
            filled = fill(observed, valid, series.days)
            rows.append(scored(method, variant, filled, time.perf_counter() - started, valid))
    rows.append(scored("painted input", "no filling", observed, 0.0, refined_clear))
    trusted_painted = [refined_clear[t][case.region].mean() for t in case.targets if case.region.any()]

    dates = tile.iso_dates()
    return Evaluation(
        tile=tile.name,
        preset=config.name,
        paint=paint_mode,
        dates=(dates[0], dates[-1]),
        targets=tuple(dates[t] for t in case.targets),
        source=dates[case.source],
        painted_fraction=float(case.region.mean()),
        rows=tuple(rows),
        settings=config.to_dict(),
        protocol=protocol,
        painted_trusted_fraction=float(np.mean(trusted_painted)) if trusted_painted else float("nan"),
    )
