"""The offline demo on the bundled real sample: fit, evaluate, a before/after quicklook, the metrics.

:func:`run_demo` is the library function behind ``declouder demo``; later stages extend the demo to the
whole pipeline by calling it (or its pieces) from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fit.arrays import TileArrays
from fit.config import FitConfig, resolve_config
from fit.declouder import DecloudResult, trusted_clear
from fit.errors import FitInputError
from fit.evaluate import Evaluation, PaintedSeries, evaluate
from fit.metrics import seam_ratio
from fit.tile import FitResult, fit_tile
from tiler.store import DECLOUDED, DECLOUDED_SIGMA, S2_SCALE, SIGMA_NODATA, MaskClass, open_tile, write_tile

#: The real WorldCereal 31UES sample committed with the sources (tests/data, see its SOURCE.txt).
BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "worldcereal_31ues.zarr"
#: The demo's dates in the sample: 30 (the paper's N) from 2018-08-04 to 2019-02-20.
DEMO_DATES = (0, 30)
#: True-colour bands and the quicklook's common stretch (percentiles of the clear reference).
RGB_BANDS = ("B04", "B03", "B02")
STRETCH_PERCENTILES = (2.0, 98.0)
#: Quicklook pixels per tile pixel (64 px tiles are too small to see), and the gap between panels.
QUICKLOOK_ZOOM = 4
PANEL_GAP = 6
LABEL_HEIGHT = 14
#: The cloudy date shown: cloud cover as close to this as the series has (clouds and ground both visible).
SHOWN_CLOUD_COVER = 0.5
#: The uncertainty quicklook's grey scale ends at this percentile of its panels' values (a few extreme
#: pixels would otherwise leave the rest black); its legend bar says the range in reflectance.
UNCERTAINTY_PERCENTILE = 99.0
LEGEND_HEIGHT = 26


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    tile_url: str
    fitted_url: str
    fit: FitResult
    evaluation: Evaluation
    quicklook: Path
    metrics: Path
    seconds: float
    #: The quicklook's seam: :func:`quicklook_seam`'s ratio on the cloudy date shown (NaN: no boundary).
    seam_ratio: float = float("nan")
    #: :func:`write_uncertainty_quicklook`'s PNG; None when the fit gives no σ (no held-out samples).
    uncertainty: Path | None = None


def run_demo(
    out_dir: str | Path,
    *,
    tile_url: str | None = None,
    preset: str | FitConfig = "fast",
    dates: tuple[int, int] = DEMO_DATES,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[str, Any], None] | None = None,
) -> DemoResult:
    """Fit the sample's 30 dates, evaluate them (both inputs, the baselines), write a quicklook and JSON."""
    started = time.perf_counter()
    config = resolve_config(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = tile_url or str(BUNDLED_SAMPLE)
    if tile_url is None and not BUNDLED_SAMPLE.exists():
        raise FitInputError(
            f"the bundled sample {BUNDLED_SAMPLE} is not here (an install without the source tree?); "
            "run the demo from a clone of the repository, or pass a tile store with --tile"
        )
    ds = open_tile(source).isel(time=slice(*dates)).load()
    tile_path = str(out / "tile.zarr")
    write_tile(ds, tile_path, overwrite=True)

    fitted_path = str(out / "fitted.zarr")

    def stage(name: str) -> Callable[[Any], None] | None:
        return None if progress is None else (lambda event: progress(name, event))

    fit = fit_tile(tile_path, fitted_path, preset=config, device=device, seed=seed, overwrite=True,
                   progress=stage("fit s1"))  # fmt: skip
    tile = TileArrays.from_dataset(ds)
    fits: dict[str, tuple[PaintedSeries, DecloudResult]] = {}
    evaluation = evaluate(tile, config, device=device, seed=seed, progress=progress,
                          on_fit=lambda kind, case, result: fits.update({kind: (case, result)}))  # fmt: skip
    fitted = open_tile(fitted_path, require=[DECLOUDED]).load()
    declouded = fitted[DECLOUDED].values / S2_SCALE
    quicklook = write_quicklook(tile, declouded, config, out / "quicklook.png")
    seam = quicklook_seam(tile, declouded, config)
    metrics = out / "metrics.json"
    record = {"fit": fit.__dict__, "evaluation": evaluation.to_dict(), "quicklook": seam}
    uncertainty = None
    if DECLOUDED_SIGMA in fitted and "s1" in fits:
        case, result = fits["s1"]
        sigma = fitted[DECLOUDED_SIGMA].values
        sigma = np.where(sigma == SIGMA_NODATA, np.nan, sigma / S2_SCALE)
        uncertainty, shown = write_uncertainty_quicklook(
            tile, sigma, case, result, config, out / "uncertainty.png"
        )
        record["uncertainty"] = {"path": str(uncertainty), **shown}
    metrics.write_text(json.dumps(record, indent=2) + "\n")
    return DemoResult(out, tile_path, fitted_path, fit, evaluation, quicklook, metrics,
                      time.perf_counter() - started, seam["seam_ratio"], uncertainty)  # fmt: skip


def shown_dates(tile: TileArrays, config: FitConfig) -> tuple[int, int, np.ndarray]:
    """(the cloudy date shown, the clear date nearest to it, the trusted pixels (time, y, x))."""
    refined, clear = trusted_clear(tile.reflectance, tile.mask, tile.bands, config)
    cloud_cover = ((refined == MaskClass.CLOUD) | (refined == MaskClass.SHADOW)).mean(axis=(1, 2))
    clear_fraction = clear.mean(axis=(1, 2))
    cloudy = int(np.argmin(np.abs(cloud_cover - SHOWN_CLOUD_COVER)))
    clearest = clear_fraction.max()
    references = np.flatnonzero(clear_fraction >= clearest - 1e-9)
    reference = int(references[np.argmin(np.abs(tile.days[references] - tile.days[cloudy]))])
    return cloudy, reference, clear


def quicklook_seam(tile: TileArrays, declouded: np.ndarray, config: FitConfig) -> dict[str, Any]:
    """The seam ratio of the quicklook's cloudy date (:func:`fit.metrics.seam_ratio`).

    A real cloudy date has no truth under its clouds, so the clear date nearest in time (the quicklook's
    right panel) stands in for it: the declouded image's step across the boundary between the kept
    (trusted) and the filled pixels, over that clear date's step at the same pixel pairs.
    """
    cloudy, reference, clear = shown_dates(tile, config)
    dates = tile.iso_dates()
    truth = tile.reflectance[reference]
    valid = np.isfinite(truth).all(axis=0) & np.isfinite(declouded[cloudy]).all(axis=0)
    ratio = seam_ratio(np.nan_to_num(declouded[cloudy]), np.nan_to_num(truth), clear[cloudy], valid=valid)
    return {
        "date": dates[cloudy],
        "reference": dates[reference],
        "kept_fraction": float(clear[cloudy].mean()),
        "seam_ratio": ratio,
    }


def write_quicklook(tile: TileArrays, declouded: np.ndarray, config: FitConfig, path: Path) -> Path:
    """Three panels: a cloudy date, its declouded result, and the clear date nearest to it."""
    cloudy, reference, _ = shown_dates(tile, config)
    rgb = [tile.bands.index(b) for b in RGB_BANDS]
    panels = {
        f"cloudy {tile.iso_dates()[cloudy]}": np.nan_to_num(tile.reflectance[cloudy][rgb]),
        "declouded": declouded[cloudy][rgb],
        f"clear {tile.iso_dates()[reference]}": np.nan_to_num(tile.reflectance[reference][rgb]),
    }
    ref_image = np.nan_to_num(tile.reflectance[reference][rgb])
    low, high = (np.percentile(ref_image, p, axis=(1, 2)) for p in STRETCH_PERCENTILES)
    height, width = (s * QUICKLOOK_ZOOM for s in tile.reflectance.shape[2:])
    canvas = Image.new("RGB", (3 * width + 2 * PANEL_GAP, height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels.items()):
        scaled = np.clip((image - low[:, None, None]) / np.maximum(high - low, 1e-6)[:, None, None], 0, 1)
        panel = Image.fromarray(np.rint(scaled * 255).astype(np.uint8).transpose(1, 2, 0))
        panel = panel.resize((width, height), Image.Resampling.NEAREST)
        x = i * (width + PANEL_GAP)
        canvas.paste(panel, (x, LABEL_HEIGHT))
        draw.text((x + 2, 1), label, fill="black")
    canvas.save(path)
    return path


def _rgb_rms(values: np.ndarray, rgb: list[int]) -> np.ndarray:
    """(band, y, x) -> (y, x): sqrt of the mean over the true-colour bands of the squared values."""
    return np.sqrt(np.mean(np.square(values[rgb]), axis=0))


def write_uncertainty_quicklook(
    tile: TileArrays,
    sigma: np.ndarray,
    case: PaintedSeries,
    result: DecloudResult,
    config: FitConfig,
    path: Path,
) -> tuple[Path, dict[str, Any]]:
    """Three grey panels on one scale (black 0, white the legend's top, in reflectance), each the RMS
    over the true-colour bands: the stored σ of the quicklook's cloudy date (``sigma``, NaN = no data),
    then the evaluation's painted date: the fit's σ there and its true |error| against the original.
    Returns the path and what is shown (dates, the scale's top, mean σ and |error| on the painted pixels).
    """
    cloudy, _, _ = shown_dates(tile, config)
    target = case.targets[0]
    rgb = [tile.bands.index(b) for b in RGB_BANDS]
    assert result.sigma is not None  # called only for a fit with σ
    truth = np.nan_to_num(tile.reflectance[target])
    error = _rgb_rms(np.abs(result.prediction[target] - truth), rgb)
    painted_sigma = _rgb_rms(result.sigma[target], rgb)
    shown_sigma = _rgb_rms(np.nan_to_num(sigma[cloudy]), rgb)
    shown_sigma[~np.isfinite(sigma[cloudy]).all(axis=0)] = np.nan
    dates = tile.iso_dates()
    panels = {
        f"sigma {dates[cloudy]}": shown_sigma,
        f"sigma painted {dates[target]}": painted_sigma,
        f"|error| painted {dates[target]}": error,
    }
    stack = np.concatenate([p[np.isfinite(p)].ravel() for p in panels.values()])
    top = float(np.percentile(stack, UNCERTAINTY_PERCENTILE)) if stack.size else 0.0
    top = top if top > 0 else 1e-4
    height, width = (s * QUICKLOOK_ZOOM for s in sigma.shape[2:])
    total_width = 3 * width + 2 * PANEL_GAP
    canvas = Image.new("RGB", (total_width, height + LABEL_HEIGHT + LEGEND_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, image) in enumerate(panels.items()):
        grey = np.rint(np.clip(np.nan_to_num(image) / top, 0, 1) * 255).astype(np.uint8)
        panel = Image.fromarray(np.stack([grey] * 3, axis=-1))
        nodata = ~np.isfinite(image)
        if nodata.any():  # no data: red
            pixels = np.asarray(panel).copy()
            pixels[nodata] = (200, 0, 0)
            panel = Image.fromarray(pixels)
        panel = panel.resize((width, height), Image.Resampling.NEAREST)
        x = i * (width + PANEL_GAP)
        canvas.paste(panel, (x, LABEL_HEIGHT))
        draw.text((x + 2, 1), label, fill="black")
    # The legend: a grey ramp from 0 to the top of the scale, with both ends written in reflectance.
    bar_top = height + LABEL_HEIGHT + 2
    ramp = np.rint(np.linspace(0, 255, width)).astype(np.uint8)
    canvas.paste(Image.fromarray(np.stack([np.tile(ramp, (8, 1))] * 3, axis=-1)), (0, bar_top))
    draw.text((width + 4, bar_top - 2), f"0 .. {top:.3f} reflectance (RMS of B04, B03, B02)", fill="black")
    canvas.save(path)
    region = case.region & case.truth_clear[target]
    shown = {
        "date": dates[cloudy],
        "painted_date": dates[target],
        "scale_top": top,
        "painted_mean_sigma": float(painted_sigma[region].mean()) if region.any() else float("nan"),
        "painted_mean_abs_error": float(error[region].mean()) if region.any() else float("nan"),
    }
    return path, shown
