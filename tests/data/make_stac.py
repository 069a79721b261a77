"""Convert real Sentinel rasters from ``../shared/data/real`` into small COGs for the ingest tests and demo.

Deterministic: rerunning it rewrites the same files. Run from the repository root::

    python tests/data/make_stac.py [--shared ../shared/data/real]

Outputs, under ``tests/data/stac/`` (committed, see SOURCE.txt "stac/"):

- ``worldcereal/<item id>/<asset>.tif``: 20 Sentinel-2 L2A dates of the WorldCereal 31UES site
  (2019-03-22..2019-07-25) as Planetary-Computer-style per-band COGs at their native resolutions
  (B02/B03/B04/B08 at 10 m, B05/B06/B07/B8A/B11/B12 and SCL at 20 m), and the site's Sentinel-1
  ascending acquisitions from 2019-03-14 to 2019-08-02 as ``vv``/``vh`` float32 COGs in *linear* power
  (the form of Planetary Computer's ``sentinel-1-rtc``; WorldCereal ships dB, converted with 10^(dB/10)),
  nodata -32768.
- ``bigearthnet/<item id>/<asset>.tif``: one BigEarthNet S2 L2A patch (33UUP, 2017-06-13) with all 12
  bands (10/20/60 m) and its paired S1 patch (same UTM grid) as linear ``vv``/``vh``.
- ``manifest.json``: per item, its datetime, grid (EPSG, per-asset shape and transform) and the properties
  that follow from the rasters (cloud and class percentages computed from SCL over the site, sun angles).
- ``templates/``: real recorded Planetary Computer and Earth Search items and collections; the item
  builder (``ingest.sample``) fills them with the manifest at test time, so the items keep the real
  property names, asset keys and STAC extensions while their ``file://`` hrefs point at this checkout.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr
from rasterio.transform import from_origin

HERE = Path(__file__).resolve().parent
OUT = HERE / "stac"

WORLDCEREAL = "worldcereal_be31UES_2018-2019"
WC_SITE = "0000280849BAC91C_32631_2018-08-01_2019-11-30"
#: A contiguous spring/summer run of the site's 72 dates: clear, partly and fully cloudy dates, shadows.
WC_FIRST, WC_LAST = np.datetime64("2019-03-22"), np.datetime64("2019-07-26")
#: S1 acquisitions kept around the S2 run: wider than any pairing window the tests use (<= 6 days).
S1_MARGIN = np.timedelta64(8, "D")
#: WorldCereal stores S1 backscatter as int32 dB x 1e4 (netCDF scale_factor 0.0001), 0 = no data.
WC_S1_DB_SCALE = 1e-4
#: Planetary Computer sentinel-1-rtc: float32 linear gamma0, nodata -32768 (REFERENCE.md, collection doc).
RTC_NODATA = -32768.0
BEN_S2 = "S2A_MSIL2A_20170613T101031_87_48"
BEN_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"

#: Scene classification classes -> the Planetary Computer item property that reports their share.
SCL_PERCENTAGES = {
    0: "s2:nodata_pixel_percentage",
    1: "s2:saturated_defective_pixel_percentage",
    2: "s2:dark_features_percentage",
    3: "s2:cloud_shadow_percentage",
    4: "s2:vegetation_percentage",
    5: "s2:not_vegetated_percentage",
    6: "s2:water_percentage",
    7: "s2:unclassified_percentage",
    8: "s2:medium_proba_clouds_percentage",
    9: "s2:high_proba_clouds_percentage",
    10: "s2:thin_cirrus_percentage",
    11: "s2:snow_ice_percentage",
}
SCL_CLOUD = (8, 9, 10)

TEMPLATES = {
    # (output name, source file under stac-fixtures, index of the item in it or None for a whole document)
    "pc_sentinel-2-l2a_item.json": ("odc-stac/tests/data/site2-2020_jun_jul-35MNM.geojson", 0),
    "pc_sentinel-1-rtc_item.json": ("stac-geoparquet/tests/data/sentinel-1-rtc-pc.json", 0),
    "es_sentinel-2-l2a_item.json": ("extracted/earth-search__items__sentinel-2-l2a.json", 0),
    "pc_sentinel-2-l2a_collection.json": (
        "extracted/planetarycomputer__collection__sentinel-2-l2a.json",
        None,
    ),
    "pc_sentinel-1-rtc_collection.json": (
        "extracted/planetarycomputer__collection__sentinel-1-rtc.json",
        None,
    ),
    "es_sentinel-2-l2a_collection.json": ("extracted/earth-search__collection__sentinel-2-l2a.json", None),
}


def write_cog(
    path: Path, data: np.ndarray, *, transform: Any, epsg: int, nodata: float | int
) -> dict[str, Any]:
    """One single-band COG (deflate, horizontal predictor); returns its manifest entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    predictor = 3 if np.issubdtype(data.dtype, np.floating) else 2
    with rasterio.open(
        path,
        "w",
        driver="COG",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs=f"EPSG:{epsg}",
        transform=transform,
        nodata=nodata,
        compress="DEFLATE",
        predictor=predictor,
    ) as dst:
        dst.write(data, 1)
    return {
        "file": path.relative_to(OUT).as_posix(),
        "shape": list(data.shape),
        "transform": list(transform)[:6],
        "dtype": str(data.dtype),
        "nodata": nodata,
    }


def _grid_transform(ds: xr.Dataset) -> Any:
    """Affine of a WorldCereal netCDF grid (its x / y coordinates are pixel centres)."""
    x, y = ds["x"].values, ds["y"].values
    res = float(x[1] - x[0])
    return from_origin(float(x[0]) - res / 2, float(y[0]) + res / 2, res, res)


def _stamp(t: np.datetime64) -> str:
    return str(t.astype("datetime64[s]")).replace("-", "").replace(":", "")


def _iso(t: np.datetime64) -> str:
    return str(t.astype("datetime64[s]")) + "Z"


def scl_properties(scl: np.ndarray) -> dict[str, float]:
    counts = {c: float(np.mean(scl == c) * 100) for c in SCL_PERCENTAGES}
    props = {SCL_PERCENTAGES[c]: round(v, 4) for c, v in counts.items()}
    props["eo:cloud_cover"] = round(sum(counts[c] for c in SCL_CLOUD), 4)
    return props


def worldcereal(src: Path) -> dict[str, Any]:
    open_ = lambda kind: xr.open_dataset(src / f"{kind}_{WC_SITE}.nc", mask_and_scale=False)  # noqa: E731
    s2_10, s2_20, s1 = open_("S2_L2A_10m"), open_("S2_L2A_20m"), open_("S1_GRD-ASCENDING_20m")
    epsg = int(s2_10.attrs["epsg"])
    t10, t20 = _grid_transform(s2_10), _grid_transform(s2_20)
    times = s2_10["timestamp"].values
    s2_records = []
    for i in np.flatnonzero((times >= WC_FIRST) & (times < WC_LAST)):
        t = times[i]
        item_id = f"S2_MSIL2A_{_stamp(t)}_T31UES_site0000280849BAC91C"
        assets = {}
        for band in ("B02", "B03", "B04", "B08"):
            assets[band] = write_cog(
                OUT / "worldcereal" / item_id / f"{band}.tif",
                s2_10[band].values[i].astype(np.uint16),
                transform=t10,
                epsg=epsg,
                nodata=0,
            )
        for band in ("B05", "B06", "B07", "B8A", "B11", "B12"):
            assets[band] = write_cog(
                OUT / "worldcereal" / item_id / f"{band}.tif",
                s2_20[band].values[i].astype(np.uint16),
                transform=t20,
                epsg=epsg,
                nodata=0,
            )
        scl = s2_20["SCL"].values[i].astype(np.uint8)
        assets["SCL"] = write_cog(
            OUT / "worldcereal" / item_id / "SCL.tif", scl, transform=t20, epsg=epsg, nodata=0
        )
        props = {
            **scl_properties(scl),
            "s2:mgrs_tile": "31UES",
            "sat:orbit_state": "descending",
            "s2:mean_solar_zenith": round(float(s2_20["sunZenithAngles"].values[i]), 6),
            "s2:mean_solar_azimuth": round(float(s2_20["sunAzimuthAngles"].values[i]), 6),
        }
        s2_records.append(
            {"id": item_id, "datetime": _iso(t), "epsg": epsg, "properties": props, "assets": assets}
        )

    s1_times = s1["timestamp"].values
    t1 = _grid_transform(s1)
    s1_records = []
    keep = (s1_times >= WC_FIRST - S1_MARGIN) & (s1_times <= WC_LAST + S1_MARGIN)
    for j in np.flatnonzero(keep):
        t = s1_times[j]
        item_id = f"S1_IW_GRDH_1SDV_{_stamp(t)}_rtc_site0000280849BAC91C"
        assets = {}
        for pol in ("VV", "VH"):
            db = s1[pol].values[j].astype(np.float64)
            linear = np.where(db == 0, RTC_NODATA, 10.0 ** (db * WC_S1_DB_SCALE / 10.0)).astype(np.float32)
            assets[pol.lower()] = write_cog(
                OUT / "worldcereal" / item_id / f"{pol.lower()}.tif",
                linear,
                transform=t1,
                epsg=epsg,
                nodata=RTC_NODATA,
            )
        props = {"sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"]}
        s1_records.append(
            {"id": item_id, "datetime": _iso(t), "epsg": epsg, "properties": props, "assets": assets}
        )
    return {
        "name": "worldcereal_31ues",
        "epsg": epsg,
        "bounds": [float(v) for v in json.loads(s2_10.attrs["bounds"].replace("(", "[").replace(")", "]"))],
        "s2": s2_records,
        "s1": s1_records,
    }


def bigearthnet(src: Path) -> dict[str, Any]:
    s2_dir = src / "BigEarthNet-S2-Example" / BEN_S2
    s1_dir = src / "BigEarthNet-S1-Example" / BEN_S1
    s1_meta = json.loads((s1_dir / f"{BEN_S1}_labels_metadata.json").read_text())
    assets = {}
    epsg = 0
    for tif in sorted(s2_dir.glob(f"{BEN_S2}_B*.tif")):
        band = tif.stem.rsplit("_", 1)[1]
        with rasterio.open(tif) as ds:
            epsg = int(ds.crs.to_epsg())
            # BigEarthNet leaves nodata unset; real L2A uses 0 (REFERENCE.md), as do these patches.
            assets[band] = write_cog(
                OUT / "bigearthnet" / BEN_S2 / f"{band}.tif",
                ds.read(1),
                transform=ds.transform,
                epsg=epsg,
                nodata=0,
            )
    t2 = np.datetime64("2017-06-13T10:10:31")
    s2 = {
        "id": BEN_S2,
        "datetime": _iso(t2),
        "epsg": epsg,
        "properties": {"s2:mgrs_tile": "33UUP", "sat:orbit_state": "descending"},
        "assets": assets,
    }
    s1_assets = {}
    for pol in ("VV", "VH"):
        with rasterio.open(s1_dir / f"{BEN_S1}_{pol}.tif") as ds:
            linear = (10.0 ** (ds.read(1).astype(np.float64) / 10.0)).astype(np.float32)
            s1_assets[pol.lower()] = write_cog(
                OUT / "bigearthnet" / BEN_S1 / f"{pol.lower()}.tif",
                linear,
                transform=ds.transform,
                epsg=epsg,
                nodata=RTC_NODATA,
            )
    # 16:50 UTC over central Europe is an evening pass: ascending.
    s1 = {
        "id": BEN_S1,
        "datetime": _iso(np.datetime64(s1_meta["acquisition_time"])),
        "epsg": epsg,
        "properties": {"sat:orbit_state": "ascending", "sar:polarizations": ["VV", "VH"]},
        "assets": s1_assets,
    }
    c = s1_meta["coordinates"]
    return {
        "name": "bigearthnet_33uup",
        "epsg": epsg,
        "bounds": [c["ulx"], c["lly"], c["lrx"], c["uly"]],
        "s2": [s2],
        "s1": [s1],
    }


def templates(src: Path) -> None:
    out = OUT / "templates"
    out.mkdir(parents=True, exist_ok=True)
    for name, (path, index) in TEMPLATES.items():
        doc = json.loads((src / "stac-fixtures" / path).read_text())
        if index is not None:
            doc = (doc["features"] if isinstance(doc, dict) else doc)[index]
        (out / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data" / "real")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    templates(args.shared)
    sites = [worldcereal(args.shared / WORLDCEREAL), bigearthnet(args.shared / "bigearthnet-s1s2-examples")]
    (OUT / "manifest.json").write_text(json.dumps({"sites": sites}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
