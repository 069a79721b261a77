"""The offline demo: the whole pipeline on the bundled real sample, through Ray.

The sample is the WorldCereal site in S2 tile 31UES (Belgium, 640 m × 640 m, spring and summer 2019),
served as an ItemCollection of local COGs (``ingest.sample``). :func:`run_demo` writes that catalogue
and a campaign config next to the outputs, then runs the campaign: plan the site's tiles → ingest each
(Ray tasks) → fit each (Ray actors) → mosaic (Ray tasks) → quicklooks and a STAC collection. Nothing
is downloaded. The config it writes is an ordinary campaign file: ``declouder run`` and ``declouder
status`` work on it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from campaign.config import load_config
from campaign.driver import OutputLayout, ProgressCallback, run_campaign
from campaign.report import CampaignReport

#: The sample's Sentinel-2 dates (tests/data/make_stac.py: 2019-03-22..2019-07-25).
DEMO_START = "2019-03-22"
DEMO_END = "2019-07-26"
#: Tiles of 64×64 px with 8 px overlap: the 64×64 px site spans 2×3 of them, so the mosaic blends seams.
DEMO_TILE_PX = 64
DEMO_OVERLAP_PX = 8
#: Resources of the demo's campaign: two fit actors, so two fits run at once (on GPUs if there are, else
#: on CPU), and small CPU shares, so that it runs on a 2-core laptop.
DEMO_RESOURCES: dict[str, float | int] = {
    "fit_actors": 2,
    "cpus_per_fit": 0.5,
    "ingest_cpus": 0.5,
    "ingest_concurrency": 2,
}
#: Densify the site's edges to this step (metres) before projecting them to lon/lat.
EDGE_STEP_M = 20.0


@dataclass(frozen=True)
class DemoResult:
    config: Path
    report: CampaignReport
    mosaic_url: str
    quicklooks: tuple[str, ...]
    #: The calendar store and its quicklooks, when a cadence was given.
    calendar_url: str | None = None
    calendar_quicklooks: tuple[str, ...] = ()


def default_preset() -> str:
    """``fast`` where this machine has a GPU; ``smoke`` on a CPU, where a ``fast`` fit of one 64×64 px tile
    of 20 dates takes minutes (docs/campaign.md, "The demo")."""
    import torch

    return "fast" if torch.cuda.is_available() else "smoke"


def site_area() -> str:
    """The sample site's footprint as a lon/lat WKT polygon."""
    import shapely
    from pyproj import Transformer

    from ingest.sample import load_site

    site = load_site()
    transformer = Transformer.from_crs(site.epsg, 4326, always_xy=True)
    box = shapely.box(*site.bounds).segmentize(EDGE_STEP_M)
    return shapely.transform(box, lambda xy: np.column_stack(transformer.transform(*xy.T))).wkt


def write_demo_config(
    out_dir: str | Path,
    *,
    preset: str,
    resources: Mapping[str, float | int] | None = None,
    cadence: str | None = None,
) -> Path:
    """Write the sample catalogue and a campaign config for it under ``out_dir``; returns the config.

    Each preset writes to its own output folder, so a demo rerun with another preset starts afresh
    instead of meeting a campaign with other settings. ``resources`` replace keys of
    :data:`DEMO_RESOURCES` (e.g. ``gpus_per_fit``; resources do not change what a campaign computes).
    ``cadence`` adds a regular calendar beside the mosaic (``[outputs] cadence``).
    """
    if cadence is not None:
        from tiler.calendar import check_cadence

        check_cadence(cadence, option="--cadence")
    from ingest.sample import load_site, write_sample_catalog

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = write_sample_catalog(out / "catalog")
    bands = json.dumps(list(load_site().bands))
    config = out / "campaign.toml"
    config.write_text(
        f"""# The declouder demo: the bundled real sample (WorldCereal 31UES, Belgium), offline.
name = "demo"
area = "{site_area()}"
start = {DEMO_START}
end = {DEMO_END}
output = "output-{preset}"

[catalog]
items = "{items.relative_to(out)}"
bands = {bands}

[grid]
size = [{DEMO_TILE_PX}, {DEMO_TILE_PX}]
overlap = {DEMO_OVERLAP_PX}

[fit]
preset = "{preset}"

[resources]
{chr(10).join(f"{key} = {value}" for key, value in {**DEMO_RESOURCES, **(resources or {})}.items())}
"""
        + (f'\n[outputs]\ncadence = "{cadence}"\n' if cadence is not None else ""),
        encoding="utf-8",
    )
    return config


def run_demo(
    out_dir: str | Path,
    *,
    preset: str,
    address: str | None = None,
    progress: ProgressCallback | None = None,
    resources: Mapping[str, float | int] | None = None,
    cadence: str | None = None,
) -> DemoResult:
    """Run the demo campaign into ``out_dir`` (a rerun resumes, like any campaign)."""
    path = write_demo_config(out_dir, preset=preset, resources=resources, cadence=cadence)
    config = load_config(path)
    report = run_campaign(config, address=address, progress=progress)
    from ingest.sample import load_site

    mosaic_url = OutputLayout(config.output).mosaic(load_site().epsg)
    outputs = report.outputs.get(mosaic_url, {})

    def pngs(folder: str | None) -> tuple[str, ...]:
        return tuple(sorted(str(p) for p in Path(folder).glob("*.png"))) if folder else ()

    return DemoResult(
        config=path,
        report=report,
        mosaic_url=mosaic_url,
        quicklooks=pngs(outputs.get("quicklooks")),
        calendar_url=outputs.get("calendar"),
        calendar_quicklooks=pngs(outputs.get("calendar_quicklooks")),
    )
