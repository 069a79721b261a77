"""Before a campaign: how many tiles and km², and what the fits will cost in GPU-hours and money.

The fit is the cost. What one tile costs comes from the fit stage (:mod:`fit.cost`): the FLOPs of the
preset's whole schedule on a tile of this campaign (its dates, its tile size, its bands), counted on the
network itself. Seconds follow from one of two sources, and the output says which:

- *the preset's figure*: the preset carries ``seconds_per_tile_reference`` (seconds per reference tile
  of 30 dates × 384×768 px) and its ``reference_device`` (the GPU, and whether the figure was measured
  or estimated: the preset says); it is scaled by the ratio of this campaign's tile FLOPs to the
  reference tile's;
- *FLOPs alone*: otherwise, FLOPs divided by the achieved throughputs
  :data:`fit.cost.GPU_THROUGHPUT_TFLOPS` assumes for an NVIDIA H100 (a range, not a measurement).

Presets that stop early (held-out loss) take fewer steps than the schedule: the FLOP figure is their
upper bound.

A fit also works beside its network, on the host (masks, guide, same-date field, shrinkage, σ): the
preset's ``host_seconds_per_tile_reference``, one CPU core's seconds measured by ``bench/fit.py
--sections overhead``, scaled by the tile's samples. A GPU holding one fit waits for that work, so with
``n`` fits per GPU (``resources.gpus_per_fit = 1/n``) a tile holds a GPU for
``max(network, (network + host) / n)`` seconds: the GPU-hours below count that, and the estimate says how
many fits per GPU would keep it busy (if that many fit in its memory, which is not known here).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from campaign.config import MAX_FITS_PER_GPU, CampaignConfig, ingest_config
from campaign.report import HOUR_S

#: Sentinel-2 revisits a point every 5 days with its two satellites (ESA, Sentinel-2 User Handbook,
#: "Revisit and coverage"); higher latitudes see more from overlapping orbits, so this is a floor.
S2_REVISIT_DAYS = 5.0
#: What the figures are for when no measured one exists: fit.cost's throughput assumptions are for this.
ESTIMATED_DEVICE = "NVIDIA H100 (throughput assumed, not measured)"


@dataclass(frozen=True)
class CostFigure:
    """Seconds per campaign tile from one source: the preset's reference figure, or an assumed throughput."""

    label: str
    device: str
    seconds_per_tile: float
    from_preset: bool


@dataclass(frozen=True)
class Estimate:
    """What a campaign will take, before it runs."""

    tiles: int
    tiles_per_zone: Mapping[int, int]
    km2: float
    preset: str
    dates_per_tile: int
    tile_size: tuple[int, int]
    bands: int
    #: TFLOP of one fit of one of this campaign's tiles (the preset's full schedule).
    tflop_per_tile: float
    figures: tuple[CostFigure, ...]
    gpu_hour_price: float | None
    gpus: int | None
    #: One CPU core's seconds of the fit's work beside the network per tile (None: not measured).
    host_seconds_per_tile: float | None = None
    #: Fits sharing one GPU (the campaign's ``resources.gpus_per_fit`` = 1 / this).
    fits_per_gpu: int = 1

    def held_seconds(self, figure: CostFigure) -> float:
        """GPU seconds a tile holds: its network's, or its share of (network + host) with the GPU's fits."""
        if self.host_seconds_per_tile is None:
            return figure.seconds_per_tile
        shared = (figure.seconds_per_tile + self.host_seconds_per_tile) / self.fits_per_gpu
        return max(figure.seconds_per_tile, shared)

    def busy_fits_per_gpu(self, figure: CostFigure) -> int | None:
        """Fits per GPU (at most the campaign's limit) that hide the host work behind the network's."""
        if self.host_seconds_per_tile is None:
            return None
        need = math.ceil((figure.seconds_per_tile + self.host_seconds_per_tile) / figure.seconds_per_tile)
        return min(MAX_FITS_PER_GPU, need)

    def gpu_hours(self, figure: CostFigure) -> float:
        return self.held_seconds(figure) * self.tiles / HOUR_S

    def cost(self, figure: CostFigure) -> float | None:
        return None if self.gpu_hour_price is None else self.gpu_hours(figure) * self.gpu_hour_price

    def wall_hours(self, figure: CostFigure) -> float | None:
        """Wall-clock hours of the fits alone on ``gpus`` GPUs (ingest and mosaic overlap with them)."""
        return None if not self.gpus else self.gpu_hours(figure) / self.gpus

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiles": self.tiles,
            "tiles_per_zone": dict(self.tiles_per_zone),
            "km2": self.km2,
            "preset": self.preset,
            "dates_per_tile": self.dates_per_tile,
            "tile_size": list(self.tile_size),
            "bands": self.bands,
            "tflop_per_tile": self.tflop_per_tile,
            "figures": [
                {
                    "label": f.label,
                    "device": f.device,
                    "from_preset": f.from_preset,
                    "seconds_per_tile": f.seconds_per_tile,
                    "held_seconds_per_tile": self.held_seconds(f),
                    "busy_fits_per_gpu": self.busy_fits_per_gpu(f),
                    "gpu_hours": self.gpu_hours(f),
                    "cost": self.cost(f),
                    "wall_hours": self.wall_hours(f),
                    "km2_per_gpu_hour": self.km2 / self.gpu_hours(f) if self.gpu_hours(f) else None,
                }
                for f in self.figures
            ],
            "gpu_hour_price": self.gpu_hour_price,
            "gpus": self.gpus,
            "host_seconds_per_tile": self.host_seconds_per_tile,
            "fits_per_gpu": self.fits_per_gpu,
        }


def expected_dates(config: CampaignConfig) -> int:
    """S2 dates a tile of this campaign's period will have, at the nominal revisit."""
    days = (config.end - config.start).days + 1
    return max(1, round(days / S2_REVISIT_DAYS))


def estimate_campaign(
    config: CampaignConfig,
    *,
    gpu_hour_price: float | None = None,
    dates_per_tile: int | None = None,
    gpus: int | None = None,
    fit_config: Any = None,
) -> Estimate:
    """Plan the campaign's tiles and price its fits (see the module docstring for the sources).

    ``fit_config`` (a ``fit.FitConfig``) replaces the config's preset, e.g. to price settings of one's own.
    """
    from campaign.driver import plan_campaign
    from fit import PRESETS
    from fit.cost import GPU_THROUGHPUT_TFLOPS, host_seconds, tile_flops

    tiles = plan_campaign(config)
    preset = fit_config if fit_config is not None else PRESETS[config.fit.preset]
    dates = dates_per_tile or expected_dates(config)
    bands = tuple(ingest_config(config).bands)
    height, width = config.grid.size
    size = (height, width)
    campaign_tflop = tile_flops(preset, n_dates=dates, size=size, bands=bands).total / 1e12
    figures: list[CostFigure] = []
    if preset.seconds_per_tile_reference is not None:
        reference_tflop = tile_flops(preset).total / 1e12
        figures.append(
            CostFigure(
                label=(
                    f"the preset's {preset.seconds_per_tile_reference:,.1f} s per reference tile, "
                    "scaled by FLOPs"
                ),
                device=str(preset.reference_device),
                seconds_per_tile=preset.seconds_per_tile_reference * campaign_tflop / reference_tflop,
                from_preset=True,
            )
        )
    else:
        figures.extend(
            CostFigure(
                label=f"estimated at {tflops:,.1f} TFLOP/s achieved ({name})",
                device=ESTIMATED_DEVICE,
                seconds_per_tile=campaign_tflop / tflops,
                from_preset=False,
            )
            for name, tflops in GPU_THROUGHPUT_TFLOPS.items()
        )
    return Estimate(
        tiles=len(tiles),
        tiles_per_zone=dict(sorted(Counter(t.epsg for t in tiles).items())),
        km2=sum(t.area_km2 for t in tiles),
        preset=preset.name,
        dates_per_tile=dates,
        tile_size=(int(size[0]), int(size[1])),
        bands=len(bands),
        tflop_per_tile=campaign_tflop,
        figures=tuple(figures),
        gpu_hour_price=gpu_hour_price,
        gpus=gpus,
        host_seconds_per_tile=host_seconds(preset, n_dates=dates, size=size, bands=len(bands)),
        fits_per_gpu=config.resources.fits_per_gpu,
    )


def estimate_lines(estimate: Estimate, config: CampaignConfig) -> list[str]:
    """The estimate as a person reads it."""
    zones = ", ".join(f"EPSG:{epsg} {n}" for epsg, n in estimate.tiles_per_zone.items())
    height, width = estimate.tile_size
    lines = [
        f"campaign {config.name!r}: {config.start} .. {config.end}, area {config.area}",
        f"tiles: {estimate.tiles:,} ({zones}); {height}x{width} px at {config.grid.resolution:g} m with "
        f"{config.grid.overlap} px overlap",
        f"area: {estimate.km2:,.0f} km² (tile cells, overlap not double-counted)",
        f"per tile: {estimate.dates_per_tile} dates (assumed: one S2 date per {S2_REVISIT_DAYS:g} days; "
        f"--dates-per-tile to override), {estimate.bands} bands; preset {estimate.preset!r}: "
        f"{estimate.tflop_per_tile:,.1f} TFLOP per fit (fit.cost, full schedule)",
    ]
    host = estimate.host_seconds_per_tile
    if host is not None:
        lines.append(
            f"host work beside the network: {host:,.1f} s of one CPU core per tile (the preset's measured "
            f"figure, scaled by the tile's samples); {estimate.fits_per_gpu} fit(s) per GPU "
            "(resources.gpus_per_fit): a GPU waits for it unless other fits share the GPU"
        )
    for figure in estimate.figures:
        hours = estimate.gpu_hours(figure)
        held = estimate.held_seconds(figure)
        per_tile = f"{figure.seconds_per_tile:,.1f} s per tile"
        if host is not None:
            per_tile = (
                f"{figure.seconds_per_tile:,.1f} s of network and {held:,.1f} s held per tile with "
                f"{estimate.fits_per_gpu} fit(s) per GPU; {estimate.busy_fits_per_gpu(figure)} per GPU "
                "would keep it busy if their memory fits"
            )
        line = f"GPU-hours on {figure.device}: {hours:,.1f} ({per_tile}, {figure.label}; " + (
            f"{estimate.km2 / hours:,.0f} km² per GPU-hour)"
        )
        cost = estimate.cost(figure)
        if cost is not None:
            line += f"; cost {cost:,.0f} at {estimate.gpu_hour_price:g} per GPU-hour"
        wall = estimate.wall_hours(figure)
        if wall is not None:
            line += f"; {wall:,.1f} h of fits on {estimate.gpus} GPUs"
        lines.append(line)
    if not any(f.from_preset for f in estimate.figures):
        lines.append(
            f"(preset {estimate.preset!r} carries no seconds per tile: the GPU-hours above are estimates "
            "from its FLOPs, a range over the assumed throughputs)"
        )
    return lines
