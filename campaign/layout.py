"""What a campaign run sets up before it schedules anything: its plan, where it writes, its claim on the
output, and its connection to Ray."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from campaign.config import CampaignConfig
from campaign.errors import CampaignError, CampaignMismatchError
from campaign.ledger import FsspecLedgerStore, Ledger
from campaign.report import CampaignReport
from tiler.grid import TileRef

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class OutputLayout:
    """Where a campaign writes under its output URL."""

    root: str

    def ingested(self, tile_id: str) -> str:
        return f"{self.root.rstrip('/')}/tiles/{tile_id}.zarr"

    def fitted(self, tile_id: str) -> str:
        return f"{self.root.rstrip('/')}/fitted/{tile_id}.zarr"

    def mosaic(self, epsg: int) -> str:
        # The mosaicker's own naming (tiler.mosaic.mosaic_tiles), so `declouder mosaic` finds the same store.
        return f"{self.root.rstrip('/')}/mosaic_{epsg}.zarr"

    def calendar(self, epsg: int) -> str:
        # Beside the mosaic, named as tiler.mosaic.calendar_store_name names it.
        return f"{self.root.rstrip('/')}/calendar_{epsg}.zarr"

    def outputs(self, epsg: int) -> str:
        return f"{self.root.rstrip('/')}/outputs/{epsg}"

    @property
    def ledger(self) -> str:
        return f"{self.root.rstrip('/')}/ledger"


def plan_campaign(config: CampaignConfig) -> list[TileRef]:
    """The campaign's tiles: its area on the zone-wide UTM grid (tiler.grid)."""
    from tiler.grid import load_area, plan_tiles

    area = load_area(config.area)
    tiles = plan_tiles(
        area, size=config.grid.size, overlap=config.grid.overlap, resolution=config.grid.resolution
    )
    if not tiles:
        raise CampaignError(
            f"area {config.area!r} covers no tile of the grid; check the area (lon/lat order: "
            "minlon,minlat,maxlon,maxlat)"
        )
    return list(tiles)


def connect_ray(address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray embedded in this process.

    Returns whether this call started the connection (and so should end it). Under
    ``ray job submit``, Ray sets ``RAY_ADDRESS`` for the entrypoint, so the same command joins the cluster.
    """
    import os

    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s", address or os.environ["RAY_ADDRESS"])
    else:
        # Embedded: a local Ray with this machine's CPUs and GPUs; no dashboard, to start in seconds.
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        log.info("started an embedded Ray instance (no --address / RAY_ADDRESS given)")
    return True


def claim_output(ledger: Ledger, config: CampaignConfig, tiles: Sequence[TileRef]) -> bool:
    """Record the campaign's settings in its output, or check a rerun's settings match. True: a resume."""
    settings = config.model_dump(mode="json", include={"area", "start", "end", "catalog", "grid", "fit"})
    existing = ledger.read_campaign()
    if existing is not None:
        if existing.get("fingerprint") != config.fingerprint():
            before = existing.get("settings", {})
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise CampaignMismatchError(
                f"output {config.output!r} holds campaign {existing.get('name')!r} with different "
                f"settings ({', '.join(changed) or 'fingerprint'}); resuming would mix two campaigns: "
                "use a new output URL, or restore the settings it was started with "
                f"(see {config.output}/ledger/campaign.json)"
            )
        return True
    ledger.write_campaign(
        {
            "name": config.name,
            "fingerprint": config.fingerprint(),
            "settings": settings,
            "tiles": len(tiles),
            "created": time.time(),
        }
    )
    return False


def write_report(report: CampaignReport, output: str, storage_options: Mapping[str, Any] | None) -> str:
    """Write the JSON report to ``<output>/report.json`` (atomically); returns its URL."""
    FsspecLedgerStore(output, storage_options).write(REPORT_FILE, report.model_dump_json(indent=2).encode())
    return f"{output.rstrip('/')}/{REPORT_FILE}"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
