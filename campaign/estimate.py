"""Before a campaign: how many tiles and km², and what the fits will cost in GPU-hours and money.

The fit is the cost. Each fit preset carries a measured figure, seconds per reference tile (the paper's
N = 30 dates of 384×768 px) and the GPU it was measured on. A campaign's tiles differ from the reference in
dates (the period) and pixels (the grid), so the figure is scaled by the fit's iteration count for the
expected dates and by the pixel count; both scalings are stated in the output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from campaign.config import CampaignConfig
from campaign.report import HOUR_S

#: The reference tile of the presets' cost figures: Ebel et al., Sec. 4 (N = 30 dates of 384×768 px).
REFERENCE_DATES = 30
REFERENCE_PIXELS = 384 * 768
#: Sentinel-2 revisits a point every 5 days with its two satellites (ESA, Sentinel-2 User Handbook,
#: "Revisit and coverage"); higher latitudes see more from overlapping orbits, so this is a floor.
S2_REVISIT_DAYS = 5.0


@dataclass(frozen=True)
class Estimate:
    """What a campaign will take, before it runs."""

    tiles: int
    tiles_per_zone: Mapping[int, int]
    km2: float
    preset: str
    dates_per_tile: int
    tile_pixels: int
    #: The preset's measured seconds per reference tile, and the GPU that measured it.
    reference_seconds: float | None
    reference_device: str | None
    #: The reference figure scaled to this campaign's dates and tile size.
    seconds_per_tile: float | None
    gpu_hours: float | None
    gpu_hour_price: float | None
    gpus: int | None

    @property
    def cost(self) -> float | None:
        if self.gpu_hours is None or self.gpu_hour_price is None:
            return None
        return self.gpu_hours * self.gpu_hour_price

    @property
    def wall_hours(self) -> float | None:
        """Wall-clock hours of the fits alone on ``gpus`` GPUs (ingest and mosaic overlap with them)."""
        if self.gpu_hours is None or not self.gpus:
            return None
        return self.gpu_hours / self.gpus

    @property
    def km2_per_gpu_hour(self) -> float | None:
        if not self.gpu_hours:
            return None
        return self.km2 / self.gpu_hours


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
    """Plan the campaign's tiles and price its fits from the preset's measured figure.

    ``fit_config`` (a ``fit.FitConfig``) replaces the config's preset, e.g. to price settings of one's own.
    """
    from campaign.driver import plan_campaign
    from fit import PRESETS

    tiles = plan_campaign(config)
    preset = fit_config if fit_config is not None else PRESETS[config.fit.preset]
    dates = dates_per_tile or expected_dates(config)
    height, width = config.grid.size
    reference = preset.seconds_per_tile_reference
    seconds = None
    if reference is not None:
        # Fit time is iterations × time per iteration; a convolutional network's time per iteration
        # grows with the pixels of a window (the window length is fixed by the preset).
        iterations = preset.total_iterations(dates) / preset.total_iterations(REFERENCE_DATES)
        seconds = reference * iterations * (height * width) / REFERENCE_PIXELS
    return Estimate(
        tiles=len(tiles),
        tiles_per_zone=dict(sorted(Counter(t.epsg for t in tiles).items())),
        km2=sum(t.area_km2 for t in tiles),
        preset=preset.name,
        dates_per_tile=dates,
        tile_pixels=height * width,
        reference_seconds=reference,
        reference_device=preset.reference_device,
        seconds_per_tile=seconds,
        gpu_hours=None if seconds is None else seconds * len(tiles) / HOUR_S,
        gpu_hour_price=gpu_hour_price,
        gpus=gpus,
    )


def estimate_lines(estimate: Estimate, config: CampaignConfig) -> list[str]:
    """The estimate as a person reads it."""
    zones = ", ".join(f"EPSG:{epsg} {n}" for epsg, n in estimate.tiles_per_zone.items())
    lines = [
        f"campaign {config.name!r}: {config.start} .. {config.end}, area {config.area}",
        f"tiles: {estimate.tiles:,} ({zones}); {config.grid.size[0]}x{config.grid.size[1]} px at "
        f"{config.grid.resolution:g} m with {config.grid.overlap} px overlap",
        f"area: {estimate.km2:,.0f} km² (tile cells, overlap not double-counted)",
        f"dates per tile: {estimate.dates_per_tile} (assumed: one S2 date per {S2_REVISIT_DAYS:g} days; "
        "--dates-per-tile to override)",
    ]
    if estimate.seconds_per_tile is None or estimate.reference_seconds is None:
        lines.append(
            f"fit preset {estimate.preset!r} carries no measured seconds per tile, so no GPU-hours can be "
            "estimated; choose a preset that does (docs/fit.md lists the figures)"
        )
        return lines
    lines += [
        f"fit preset {estimate.preset!r}: {estimate.reference_seconds:,.0f} s per reference tile "
        f"({REFERENCE_DATES} dates, 384x768 px) measured on {estimate.reference_device}",
        f"  scaled to this campaign: {estimate.seconds_per_tile:,.0f} s per tile "
        f"({estimate.dates_per_tile} dates, {estimate.tile_pixels:,} px)",
        f"GPU-hours: {estimate.gpu_hours:,.1f} on {estimate.reference_device} "
        f"({estimate.km2_per_gpu_hour:,.1f} km² per GPU-hour)",
    ]
    if estimate.cost is not None:
        lines.append(f"cost: {estimate.cost:,.0f} at {estimate.gpu_hour_price:g} per GPU-hour")
    if estimate.wall_hours is not None:
        lines.append(f"wall clock for the fits on {estimate.gpus} GPUs: {estimate.wall_hours:,.1f} h")
    return lines
