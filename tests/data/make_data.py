"""Convert real Sentinel data from ``../shared/data/real`` into small tile stores for tests and the demo.

Deterministic: rerunning it rewrites the same stores. Run from the repository root::

    python tests/data/make_data.py [--shared ../shared/data/real]

Outputs (committed, see SOURCE.txt):
- ``worldcereal_31ues.zarr``: WorldCereal site 0000280849BAC91C in S2 tile 31UES (Belgium), EPSG:32631,
  64×64 px at 10 m, 72 S2 L2A dates (2018-08..2019-11), 10 bands, S1 GRD ascending VV/VH in dB paired
  to each S2 date (nearest within ±6 days), masks from SCL.
- ``greenearthnet_34tet.zarr``: a GreenEarthNet minicube in S2 tile 34TET (Romania/Hungary border),
  May–Aug 2021, its 30 real S2 acquisitions with real clouds, 4 bands (B02 B03 B04 B8A), no S1 (all
  NaN: fitted with noise input), reprojected from the cube's lat/lon grid to UTM 34N at its native
  20 m (nearest neighbour, so every value is a real observation), the central 64×64 px kept.
- ``greenearthnet_29snd.zarr``: a second GreenEarthNet minicube, S2 tile 29SND (central Portugal),
  Jul–Oct 2021, converted the same way (UTM 29N): another biome and season for the quality suite.

``--only NAME`` (repeatable: worldcereal, greenearthnet_34tet, greenearthnet_29snd) rewrites only those.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from tiler.store import MaskClass, make_tile, write_tile

HERE = Path(__file__).resolve().parent
WORLDCEREAL = "worldcereal_be31UES_2018-2019"
SITE = "0000280849BAC91C_32631_2018-08-01_2019-11-30"
#: The 10 bands WorldCereal ships (no 60 m bands B01, B09 and no B10 in L2A), in the tile's band order.
WORLDCEREAL_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: WorldCereal stores S1 backscatter as int32 dB × 1e4 (netCDF scale_factor 0.0001), 0 = no data.
S1_DB_SCALE = 1e-4
#: S1 ascending passes over the site every 6 days (S1A+S1B in 2018-19): ±6 days finds one for every date.
S1_PAIRING_WINDOW = np.timedelta64(6, "D")
#: Scene classification classes (Sentinel-2 L2A product spec, REFERENCE.md "Cloud masks").
SCL_NODATA = (0, 1)
SCL_SHADOW = (3,)
SCL_CLOUD = (8, 9, 10)


def scl_to_mask(scl: np.ndarray) -> np.ndarray:
    mask = np.full(scl.shape, MaskClass.CLEAR, dtype=np.uint8)
    mask[np.isin(scl, SCL_SHADOW)] = MaskClass.SHADOW
    mask[np.isin(scl, SCL_CLOUD)] = MaskClass.CLOUD
    mask[np.isin(scl, SCL_NODATA)] = MaskClass.NODATA
    return mask


def upsample2(a: np.ndarray) -> np.ndarray:
    """20 m -> 10 m by pixel replication: each 20 m pixel covers exactly 2×2 pixels of the 10 m grid."""
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def worldcereal_tile(src: Path) -> xr.Dataset:
    open_ = lambda kind: xr.open_dataset(src / f"{kind}_{SITE}.nc", mask_and_scale=False)  # noqa: E731
    s2_10, s2_20, s1 = open_("S2_L2A_10m"), open_("S2_L2A_20m"), open_("S1_GRD-ASCENDING_20m")
    times = s2_10["timestamp"].values
    assert np.array_equal(times, s2_20["timestamp"].values)
    bands = [
        s2_10[b].values if b in s2_10 else upsample2(s2_20[b].values) for b in WORLDCEREAL_BANDS
    ]
    s2 = np.stack(bands, axis=1).astype(np.uint16)
    scl = upsample2(s2_20["SCL"].values)
    mask = scl_to_mask(scl)
    mask[(s2 == 0).all(axis=1)] = MaskClass.NODATA

    s1_times = s1["timestamp"].values
    vv = s1["VV"].values.astype(np.float64)
    vh = s1["VH"].values.astype(np.float64)
    s1_db = np.stack([vv, vh], axis=1)
    s1_db = np.where(s1_db == 0, np.nan, s1_db * S1_DB_SCALE).astype(np.float32)
    paired = np.full((times.size, 2, 64, 64), np.nan, dtype=np.float32)
    paired_time = np.full(times.size, np.datetime64("NaT"), dtype="datetime64[ns]")
    for i, t in enumerate(times):
        gaps = np.abs(s1_times - t)
        j = int(np.argmin(gaps))
        if gaps[j] <= S1_PAIRING_WINDOW:
            paired[i] = upsample2(s1_db[j])
            paired_time[i] = s1_times[j]
    return make_tile(
        s2=s2,
        s1=paired,
        mask=mask,
        time=times,
        s1_time=paired_time,
        bands=WORLDCEREAL_BANDS,
        x=s2_10["x"].values,
        y=s2_10["y"].values,
        epsg=int(s2_10.attrs["epsg"]),
        tile_id="worldcereal_31UES_0000280849BAC91C",
        attrs={"source": "WorldCereal test resources, see tests/data/SOURCE.txt"},
    )


GREENEARTHNET = "greenearthnet-minicubes"
GREENEARTHNET_CUBE = "MJJ2021_replicated_minicube_225_34TET_47.37_22.05.nc"
#: The second bundled cube (quality suite): S2 tile 29SND, central Portugal, Jul-Oct 2021.
GREENEARTHNET_CUBE_29SND = "JAS2021_replicated_minicube_0_29SND_39.29_-8.56.nc"
GREENEARTHNET_BANDS = ("B02", "B03", "B04", "B8A")
#: The cube's native pixel (~0.00018° ≈ 20 m): kept, not resampled to 10 m (the schema does not force it).
GREENEARTHNET_RESOLUTION = 20.0
#: UTM zone 34N, the zone of S2 tile 34TET (29N for 29SND).
GREENEARTHNET_EPSG = 32634
GREENEARTHNET_EPSG_29SND = 32629
GREENEARTHNET_SIZE = 64


def greenearthnet_tile(
    src: Path,
    cube_file: str = GREENEARTHNET_CUBE,
    epsg: int = GREENEARTHNET_EPSG,
    tile_id: str = "greenearthnet_34TET_minicube_225",
) -> xr.Dataset:
    cube = xr.open_dataset(src / cube_file)  # decoded: reflectance in [0, 1], NaN = missing
    cube = cube.isel(time=np.flatnonzero(cube["s2_avail"].values == 1))
    layers = xr.Dataset(
        {b: cube[f"s2_{b}"] for b in GREENEARTHNET_BANDS} | {"SCL": cube["s2_SCL"]}
    ).rename(lon="x", lat="y")
    layers = layers.rio.write_crs("EPSG:4326").rio.set_spatial_dims(x_dim="x", y_dim="y")
    from rasterio.enums import Resampling

    utm = layers.rio.reproject(
        f"EPSG:{epsg}", resolution=GREENEARTHNET_RESOLUTION, resampling=Resampling.nearest
    )
    ny, nx = utm.sizes["y"], utm.sizes["x"]
    y0, x0 = (ny - GREENEARTHNET_SIZE) // 2, (nx - GREENEARTHNET_SIZE) // 2
    utm = utm.isel(y=slice(y0, y0 + GREENEARTHNET_SIZE), x=slice(x0, x0 + GREENEARTHNET_SIZE))
    reflectance = np.stack([utm[b].values for b in GREENEARTHNET_BANDS], axis=1)
    s2 = np.where(
        np.isfinite(reflectance), np.clip(np.rint(reflectance * 10_000), 1, np.iinfo(np.uint16).max), 0
    ).astype(np.uint16)
    scl = np.nan_to_num(utm["SCL"].values, nan=0).astype(np.int64)
    mask = scl_to_mask(scl)
    mask[(s2 == 0).any(axis=1)] = MaskClass.NODATA
    return make_tile(
        s2=s2,
        mask=mask,
        time=utm["time"].values,
        bands=GREENEARTHNET_BANDS,
        x=utm["x"].values,
        y=utm["y"].values,
        epsg=epsg,
        tile_id=tile_id,
        attrs={"source": "GreenEarthNet replicated minicube, see tests/data/SOURCE.txt"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data" / "real")
    makers = {
        "worldcereal": lambda shared: worldcereal_tile(shared / WORLDCEREAL),
        "greenearthnet_34tet": lambda shared: greenearthnet_tile(shared / GREENEARTHNET),
        "greenearthnet_29snd": lambda shared: greenearthnet_tile(
            shared / GREENEARTHNET,
            GREENEARTHNET_CUBE_29SND,
            GREENEARTHNET_EPSG_29SND,
            "greenearthnet_29SND_minicube_0",
        ),
    }
    stores = {
        "worldcereal": "worldcereal_31ues.zarr",
        "greenearthnet_34tet": "greenearthnet_34tet.zarr",
        "greenearthnet_29snd": "greenearthnet_29snd.zarr",
    }
    parser.add_argument("--only", action="append", choices=sorted(makers), help="rewrite only these stores")
    args = parser.parse_args()
    for name in args.only or makers:
        out = HERE / stores[name]
        shutil.rmtree(out, ignore_errors=True)
        write_tile(makers[name](args.shared), str(out))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
