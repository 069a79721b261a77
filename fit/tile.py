"""Fit one tile store: read it, decloud it, write the input variables plus ``s2_declouded``.

The output store is written by :func:`tiler.store.write_tile`, so it is marked complete only once every
chunk is on storage; everything that can fail on bad input (preset, device, weights, an existing output)
fails before the tile is read or the fit starts, and nothing is written when the fit fails.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch
import xarray as xr

from fit.arrays import TileArrays
from fit.config import FitConfig, resolve_config
from fit.declouder import DecloudResult, Progress, decloud, resolve_device
from fit.errors import FitConfigError, WarmStartError
from fit.vgg import load_vgg16
from tiler.errors import OutputExistsError
from tiler.store import (
    DECLOUDED,
    DECLOUDED_SIGMA,
    INPUT_VARIABLES,
    S2,
    S2_NODATA,
    S2_SCALE,
    SIGMA_NODATA,
    MaskClass,
    open_tile,
    tile_status,
    write_tile,
)

#: Smallest value written to ``s2_declouded`` where the pixel was ever observed: 0 means "no data" in the
#: schema, and only pixels with no S2 data on any date (outside the imagery's footprint) get it.
DECLOUDED_MIN = S2_NODATA + 1
#: Suffix of the file beside a fitted store that holds the fit's final network weights (warm starts).
WEIGHTS_SUFFIX = ".weights.pt"


@dataclass(frozen=True)
class FitResult:
    """What one tile's fit did and cost."""

    tile_id: str
    out_url: str
    preset: str
    input: str
    iterations: int
    windows: int
    network_depth: int
    seconds: float
    device: str
    peak_memory_bytes: int
    peak_memory_kind: str
    final_loss: float
    #: Share of (date, pixel)s the fit learned from, and of SCL-clear ones the refinement took away.
    clear_fraction: float
    refined_away_fraction: float
    #: Steps the full schedule would take (``iterations`` is fewer when the fit stopped early).
    scheduled_iterations: int = 0
    stopped_early: bool = False
    precision: str = "fp32"
    warm_started: bool = False
    #: Where the final weights were saved (``save_weights``), for a neighbour's warm start.
    weights_url: str | None = None


def weights_url(out_url: str) -> str:
    """The weights file saved beside the fitted store ``out_url``: ``<out_url>.weights.pt``."""
    return out_url.rstrip("/") + WEIGHTS_SUFFIX


def save_weights_to(
    weights: Mapping[str, torch.Tensor], url: str, storage_options: Mapping[str, Any] | None
) -> None:
    """Write a network's weights to any fsspec URL (serialised in memory, then one write)."""
    buffer = io.BytesIO()
    torch.save(dict(weights), buffer)
    with fsspec.open(url, "wb", **dict(storage_options or {})) as f:
        f.write(buffer.getvalue())


def load_weights(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """Read weights saved by :func:`save_weights` (tensors only: ``weights_only`` loading)."""
    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError as err:
        raise WarmStartError(
            f"warm-start weights {url!r} not found (--init-weights): fit the neighbour with save_weights "
            "(--save-weights) first, or fit this tile without init_weights"
        ) from err
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise WarmStartError(
            f"cannot read warm-start weights {url!r}: {err}; expected a file written by fit_tile's "
            "save_weights"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WarmStartError(f"{url!r} holds no network weights (a dict of tensors); refit its tile")
    return state


def to_stored(reflectance: np.ndarray) -> np.ndarray:
    """Reflectance in [0, 1] -> the schema's uint16 (× 10000), never the no-data value 0."""
    return np.clip(np.rint(reflectance * S2_SCALE), DECLOUDED_MIN, S2_SCALE).astype(np.uint16)


def sigma_to_stored(sigma: np.ndarray, declouded: np.ndarray) -> np.ndarray:
    """σ in reflectance -> uint16 × 10000 (rounded, at most SIGMA_NODATA − 1); SIGMA_NODATA where the
    stored ``declouded`` value is no data or σ is not finite."""
    scaled = np.where(np.isfinite(sigma), sigma, 0.0) * S2_SCALE
    stored = np.clip(np.rint(scaled), 0, SIGMA_NODATA - 1).astype(np.uint16)
    stored[(declouded == S2_NODATA) | ~np.isfinite(sigma)] = SIGMA_NODATA
    return stored


def fit_tile(
    in_url: str,
    out_url: str,
    *,
    preset: str | FitConfig = "fast",
    input: str = "s1",
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    vgg_weights: str | None = None,
    progress: Progress | None = None,
    init_weights: str | None = None,
    save_weights: bool = False,
) -> FitResult:
    """Fit the tile at ``in_url`` and write it with ``s2_declouded`` to ``out_url`` (tile schema).

    Warm start (a campaign-level option): ``init_weights`` is the URL of a fitted neighbour's weights
    (see :func:`weights_url`), the fit then runs ``warm_passes`` passes; ``save_weights`` writes this
    fit's final weights to ``weights_url(out_url)`` once the store is complete.
    """
    config = resolve_config(preset)
    if input not in ("s1", "noise"):
        raise FitConfigError(
            f"unknown input {input!r} (--input): use s1 (the paper's model) or noise (its ablation)"
        )
    config = config.replace(input=input)
    status = tile_status(out_url, storage_options)
    if status != "missing" and not overwrite:
        raise OutputExistsError(
            f"fit of {in_url!r}: output {out_url!r} already exists ({status}); pass --overwrite "
            "(overwrite=True) to replace it, or choose another --out"
        )
    resolve_device(device)
    vgg = load_vgg16(vgg_weights) if config.perceptual_weight > 0 else None
    init = load_weights(init_weights, storage_options) if init_weights is not None else None

    ds = open_tile(in_url, storage_options=storage_options).load()
    tile = TileArrays.from_dataset(ds, name=str(ds.attrs.get("tile_id", in_url)))
    result = decloud(
        tile.reflectance,
        tile.mask,
        tile.s1,
        config,
        bands=tile.bands,
        days=tile.days,
        device=device,
        seed=seed,
        vgg=vgg,
        progress=progress,
        name=tile.name,
        init_weights=init,
        keep_weights=save_weights,
    )
    out = _output_dataset(ds, result, config, seed)
    write_tile(out, out_url, overwrite=overwrite, storage_options=storage_options, name=tile.name)
    saved = None
    if save_weights and result.weights is not None:
        saved = weights_url(out_url)
        save_weights_to(result.weights, saved, storage_options)
    scl_clear = tile.mask == MaskClass.CLEAR
    return FitResult(
        tile_id=tile.name,
        out_url=out_url,
        preset=config.name,
        input=config.input,
        iterations=result.iterations,
        windows=result.windows,
        network_depth=result.network_depth,
        seconds=result.seconds,
        device=result.device,
        peak_memory_bytes=result.peak_memory_bytes,
        peak_memory_kind=result.peak_memory_kind,
        final_loss=result.final_loss,
        clear_fraction=float(result.clear.mean()),
        refined_away_fraction=float((scl_clear & ~result.clear).sum() / max(int(scl_clear.sum()), 1)),
        scheduled_iterations=result.scheduled_iterations,
        stopped_early=result.stopped_early,
        precision=result.precision,
        warm_started=result.warm_started,
        weights_url=saved,
    )


def _output_dataset(ds: xr.Dataset, result: DecloudResult, config: FitConfig, seed: int) -> xr.Dataset:
    out = ds[[v for v in INPUT_VARIABLES if v in ds]].copy()
    stored = to_stored(result.prediction)
    if result.observed is not None:
        # Never observed on any date: nothing to decloud, and nothing to invent (the mosaic then takes
        # the pixel from a neighbouring tile that saw it, or leaves it no data).
        stored[:, :, ~result.observed] = S2_NODATA
    out[DECLOUDED] = (ds[S2].dims, stored)
    out[DECLOUDED].attrs.update(ds[S2].attrs)
    out[DECLOUDED].attrs["description"] = "cloud-free S2 predicted by the per-tile fit (docs/fit.md)"
    if result.sigma is not None:
        out[DECLOUDED_SIGMA] = (ds[S2].dims, sigma_to_stored(result.sigma, stored))
        out[DECLOUDED_SIGMA].attrs.update(
            units=f"reflectance x {S2_SCALE}",
            nodata=SIGMA_NODATA,
            description=(
                "predicted standard deviation of s2_declouded's error (declouding only: 0 where the "
                "observation is kept, (1 - w) sigma where feathered), from the fit's held-out samples; "
                'docs/fit.md "Uncertainty"'
            ),
        )
    # Attributes must be JSON scalars or strings in Zarr: nested values are stored as JSON text.
    out.attrs.update(
        fit_preset=config.name,
        fit_input=config.input,
        fit_seed=int(seed),
        fit_settings=json.dumps(config.to_dict()),
        fit_iterations=int(result.iterations),
        fit_windows=int(result.windows),
        fit_network_depth=int(result.network_depth),
        fit_seconds=float(result.seconds),
        fit_device=result.device,
        fit_peak_memory_bytes=int(result.peak_memory_bytes),
        fit_peak_memory_kind=result.peak_memory_kind,
        fit_scheduled_iterations=int(result.scheduled_iterations),
        fit_stopped_early=bool(result.stopped_early),
        fit_precision=result.precision,
        fit_warm_started=bool(result.warm_started),
        fit_final_loss=float(result.final_loss),
        fit_loss_curve=json.dumps([[int(i), float(v)] for i, v in result.loss_curve]),
        fit_clear_fraction=float(result.clear.mean()),
    )
    if result.error_model is not None:
        out.attrs.update(
            fit_sigma_model=result.error_model.kind,
            fit_sigma_samples=int(result.error_model.samples),
        )
    return out
