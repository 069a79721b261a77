"""The offline sample catalogue: real rasters as COGs plus STAC items made from real recorded items.

``tests/data/make_stac.py`` converts real Sentinel-2 / Sentinel-1 rasters (the WorldCereal 31UES site,
a BigEarthNet patch) into small COGs and a manifest under ``tests/data/stac/``. This module turns them
into STAC items by filling real recorded Planetary Computer (or Earth Search) items: the same property
names, asset keys and extensions, with the values the rasters determine (time, grid, footprint, SCL
class shares) and ``file://`` hrefs. Properties the rasters cannot vouch for (granule and datatake ids,
platform, orbit numbers, processing baseline) are removed rather than left wrong.

``write_sample_catalog`` writes an ItemCollection (plus the collections) that ``declouder ingest
--catalog ITEMS.json`` and ``rustac serve`` both read, so the demo and the tests run without a network.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import Transformer
from shapely.geometry import box, mapping

from ingest.catalogs import BAND_RESOLUTION, PROFILES, CatalogProfile
from ingest.config import TileBox
from ingest.errors import IngestConfigError

#: Where make_stac.py writes the committed sample (this checkout's tests/data/stac).
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "stac"
DEFAULT_SITE = "worldcereal_31ues"
S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"
ITEMS_FILE = "items.json"

#: Template properties that describe the recorded granule, not the sample rasters: dropped.
_GRANULE_PROPERTIES = (
    "platform",
    "s2:granule_id",
    "s2:datatake_id",
    "s2:product_uri",
    "s2:datastrip_id",
    "s2:generation_time",
    "s2:processing_baseline",
    "s2:reflectance_conversion_factor",
    "s2:tile_id",
    "s2:sequence",
    "sat:relative_orbit",
    "sat:absolute_orbit",
    "sat:platform_international_designator",
    "s1:datatake_id",
    "s1:slice_number",
    "s1:total_slices",
    "s1:orbit_source",
    "s1:product_timeliness",
    "s1:shape",
    "s1:product_identifier",
    "s1:processing_datetime",
    "start_datetime",
    "end_datetime",
    "earthsearch:s3_path",
    "earthsearch:payload_id",
    "earthsearch:boa_offset_applied",
    "processing:software",
    "created",
    "updated",
    "proj:centroid",
    "view:azimuth",
    "view:incidence_angle",
    "view:sun_azimuth",
    "view:sun_elevation",
    "mgrs:utm_zone",
    "mgrs:latitude_band",
    "mgrs:grid_square",
    "grid:code",
    "proj:bbox",
    "proj:shape",
    "proj:transform",
)
_TEMPLATES = {
    ("planetary-computer", S2_COLLECTION): "pc_sentinel-2-l2a_item.json",
    ("planetary-computer", S1_COLLECTION): "pc_sentinel-1-rtc_item.json",
    ("earth-search", S2_COLLECTION): "es_sentinel-2-l2a_item.json",
}
_COLLECTIONS = {
    ("planetary-computer", S2_COLLECTION): "pc_sentinel-2-l2a_collection.json",
    ("planetary-computer", S1_COLLECTION): "pc_sentinel-1-rtc_collection.json",
    ("earth-search", S2_COLLECTION): "es_sentinel-2-l2a_collection.json",
}


@dataclass(frozen=True)
class SampleSite:
    """One site of the sample: its grid, the bands its S2 items carry, its raster records."""

    name: str
    epsg: int
    bounds: tuple[float, float, float, float]
    bands: tuple[str, ...]
    s2: tuple[dict[str, Any], ...]
    s1: tuple[dict[str, Any], ...]

    def tile(self, resolution: float = 10.0) -> TileBox:
        """The site's own extent as a tile target."""
        return TileBox(self.epsg, self.bounds, resolution, name=self.name)


def _require(sample_dir: Path) -> Path:
    manifest = sample_dir / "manifest.json"
    if not manifest.is_file():
        raise IngestConfigError(
            f"the sample catalogue is missing: no {manifest}; it ships with the source checkout "
            "(tests/data/stac), regenerate it with `python tests/data/make_stac.py`"
        )
    return manifest


def load_site(name: str = DEFAULT_SITE, sample_dir: Path = SAMPLE_DIR) -> SampleSite:
    sites = {s["name"]: s for s in json.loads(_require(sample_dir).read_text())["sites"]}
    if name not in sites:
        raise IngestConfigError(f"sample site {name!r} is unknown; choose one of {sorted(sites)}")
    site = sites[name]
    bands = tuple(b for b in BAND_RESOLUTION if b != "SCL" and b in site["s2"][0]["assets"])
    order = {b: i for i, b in enumerate(PROFILES["planetary-computer"].band_assets)}
    return SampleSite(
        name=name,
        epsg=int(site["epsg"]),
        bounds=tuple(float(v) for v in site["bounds"]),  # type: ignore[arg-type]
        bands=tuple(sorted(bands, key=order.__getitem__)),
        s2=tuple(site["s2"]),
        s1=tuple(site["s1"]),
    )


def _footprint(record: dict[str, Any]) -> tuple[dict[str, Any], list[float]]:
    """Lon/lat polygon and bbox of the record's rasters (their union; all share one extent)."""
    asset = next(iter(record["assets"].values()))
    a, _, c, _, e, f = asset["transform"]
    height, width = asset["shape"]
    outline = box(c, f + e * height, c + a * width, f)
    to_lonlat = Transformer.from_crs(int(record["epsg"]), 4326, always_xy=True)
    polygon = shapely.transform(
        outline.segmentize(a * 4), lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1]))
    )
    return mapping(polygon), [round(v, 9) for v in polygon.bounds]


def build_item_dict(
    record: dict[str, Any],
    data_dir: Path,
    *,
    collection: str,
    profile: CatalogProfile,
    template_dir: Path = SAMPLE_DIR / "templates",
) -> dict[str, Any]:
    """The STAC item (as recorded: same STAC and extension versions as the template) of one sample
    record, in ``profile``'s conventions, with file:// hrefs under ``data_dir``."""
    template = json.loads((template_dir / _TEMPLATES[(profile.name, collection)]).read_text())
    doc = copy.deepcopy(template)
    geometry, bbox = _footprint(record)
    props = {k: v for k, v in doc["properties"].items() if k not in _GRANULE_PROPERTIES}
    props.update(record["properties"])
    props["datetime"] = record["datetime"]
    props["proj:epsg"] = int(record["epsg"])
    if "mgrs:utm_zone" in template["properties"] and "s2:mgrs_tile" in props:
        tile = props.pop("s2:mgrs_tile")
        props.update(
            {
                "mgrs:utm_zone": int(tile[:2]),
                "mgrs:latitude_band": tile[2],
                "mgrs:grid_square": tile[3:],
                "grid:code": f"MGRS-{tile}",
            }
        )
    keys = dict(profile.band_assets) | {"SCL": profile.scl_asset} | {"vv": "vv", "vh": "vh"}
    assets = {}
    for name, raster in record["assets"].items():
        key = keys.get(name, name)
        if key not in doc["assets"]:
            raise IngestConfigError(
                f"template for {collection} has no asset {key!r} (sample record {record['id']})"
            )
        asset = copy.deepcopy(doc["assets"][key])
        a, _, c, _, e, f = raster["transform"]
        height, width = raster["shape"]
        asset["href"] = (data_dir / raster["file"]).resolve().as_uri()
        asset["proj:shape"] = raster["shape"]
        asset["proj:transform"] = raster["transform"]
        if "proj:bbox" in asset:
            asset["proj:bbox"] = [c, f + e * height, c + a * width, f]
        asset.pop("file:size", None)
        asset.pop("file:checksum", None)
        assets[key] = asset
    doc.update(
        id=record["id"],
        geometry=geometry,
        bbox=bbox,
        properties=props,
        assets=assets,
        collection=collection,
        links=[],
    )
    return doc


def build_item(
    record: dict[str, Any],
    data_dir: Path,
    *,
    collection: str,
    profile: CatalogProfile,
    template_dir: Path = SAMPLE_DIR / "templates",
) -> pystac.Item:
    """:func:`build_item_dict` as a pystac Item."""
    doc = build_item_dict(record, data_dir, collection=collection, profile=profile, template_dir=template_dir)
    return pystac.Item.from_dict(doc)


def sample_items(
    site: str | SampleSite = DEFAULT_SITE,
    *,
    profile: str = "planetary-computer",
    data_dir: Path | None = None,
    sample_dir: Path = SAMPLE_DIR,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(S2 item dicts, S1 item dicts) of a sample site; hrefs point into ``data_dir`` (default: the
    sample itself). ``pystac.Item.from_dict`` turns them into items."""
    site = site if isinstance(site, SampleSite) else load_site(site, sample_dir)
    data_dir = data_dir or sample_dir
    templates = sample_dir / "templates"
    conv = PROFILES[profile]
    s2 = [
        build_item_dict(r, data_dir, collection=S2_COLLECTION, profile=conv, template_dir=templates)
        for r in site.s2
    ]
    # Sentinel-1 RTC exists only on Planetary Computer (catalogs.EARTH_SEARCH.s1_collection is None).
    pc = PROFILES["planetary-computer"]
    s1 = [
        build_item_dict(r, data_dir, collection=S1_COLLECTION, profile=pc, template_dir=templates)
        for r in site.s1
    ]
    return s2, s1


def write_collections(
    out_dir: Path, profile: str = "planetary-computer", sample_dir: Path = SAMPLE_DIR
) -> list[Path]:
    """The recorded collection documents the sample items belong to (for a STAC API server)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (name, collection), file in _COLLECTIONS.items():
        if name != profile and not (collection == S1_COLLECTION and name == "planetary-computer"):
            continue
        doc = json.loads((sample_dir / "templates" / file).read_text())
        doc["links"] = []
        path = out_dir / f"collection-{collection}.json"
        path.write_text(json.dumps(doc))
        paths.append(path)
    return paths


def write_item_collection(items: Sequence[pystac.Item | dict[str, Any]], path: Path) -> Path:
    """Write items as one ItemCollection JSON (what ``stac-client search ... > items.json`` writes).

    Item dicts are written as they are; pystac Items through ``to_dict`` (which upgrades their STAC
    version to pystac's own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    features = [i if isinstance(i, dict) else i.to_dict(transform_hrefs=False) for i in items]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_sample_catalog(
    out_dir: str | Path,
    *,
    site: str = DEFAULT_SITE,
    profile: str = "planetary-computer",
    copy_rasters: bool = True,
    sample_dir: Path = SAMPLE_DIR,
) -> Path:
    """Write the sample site's COGs, collections and an ItemCollection of its S2 and S1 items to
    ``out_dir``; return the ItemCollection's path (``declouder ingest --catalog`` takes it).

    With ``copy_rasters`` the COGs are copied next to the items (a self-contained folder), otherwise the
    items point at the committed sample. Deterministic; takes well under a second.
    """
    out = Path(out_dir)
    chosen = load_site(site, sample_dir)
    data_dir = sample_dir
    if copy_rasters:
        data_dir = out
        for record in (*chosen.s2, *chosen.s1):
            for raster in record["assets"].values():
                target = out / raster["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sample_dir / raster["file"], target)
    s2, s1 = sample_items(chosen, profile=profile, data_dir=data_dir, sample_dir=sample_dir)
    write_collections(out, profile, sample_dir)
    return write_item_collection([*s2, *s1], out / ITEMS_FILE)
