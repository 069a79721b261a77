"""The ingest's store writer (ingest/write.py): the store it writes in parts, while the ingest still runs,
holds the very bytes tiler.store.write_tile writes for the same tile; the store contract holds when
an ingest fails after its write started. Real Zarr stores on disk, the committed sample's COGs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stac_server import file_server

from ingest import AssetReadError, IngestConfig, ingest_tile
from ingest.sample import SAMPLE_DIR, load_site, sample_items
from ingest.write import TileWriter
from tiler.store import MaskClass, make_tile, open_tile, tile_status, write_tile

SITE = load_site()
TILE = SITE.tile()
#: Seconds a test waits for the writer thread to have created the store before letting a read fail.
STORE_WAIT_S = 30.0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tile(height: int, width: int, seed: int) -> dict[str, Any]:
    """make_tile's arguments for a random tile: 4 dates, 12 bands, one date's s1 unpaired (NaN, NaT),
    one date all no data in s2 (a chunk at the fill value, which write_tile still writes)."""
    rng = np.random.default_rng(seed)
    n, bands = 4, [f"B{b:02d}" for b in range(1, 13)]
    s2 = rng.integers(1, 10_000, (n, len(bands), height, width), dtype=np.uint16)
    s2[2] = 0
    s1 = (rng.normal(-12, 4, (n, 2, height, width))).astype(np.float32)
    s1[1] = np.nan
    time_ = np.datetime64("2019-03-01T10:30", "ns") + np.arange(n) * np.timedelta64(5, "D")
    s1_time = time_ + np.timedelta64(7, "h")
    s1_time[1] = np.datetime64("NaT")
    return {
        "s2": s2,
        "s1": s1,
        "mask": rng.integers(0, 4, (n, height, width), dtype=np.uint8),
        "time": time_,
        "s1_time": s1_time,
        "bands": bands,
        "x": 500_000 + (np.arange(width) + 0.5) * 10,
        "y": 5_600_000 - (np.arange(height) + 0.5) * 10,
        "epsg": 32633,
        "tile_id": "random",
        "item_ids": [f"item-{k}" for k in range(n)],
    }


@pytest.mark.parametrize(
    ("height", "width", "s1_time_changes"),
    [
        (64, 96, False),  # chunks under 1 MiB: blosc's own block
        (128, 384, False),  # an s2 date of 1.2 MB: 1 MiB blosc blocks
        (64, 96, True),  # a paired pass turned out empty: s1_time rewritten at the end
    ],
)
def test_the_writer_writes_the_bytes_write_tile_writes(
    tmp_path: Path, height: int, width: int, s1_time_changes: bool
) -> None:
    args = _tile(height, width, seed=height)
    attrs = {"source": "test", "s1_orbit": "ascending"}
    write_tile(make_tile(**args, attrs=attrs), str(tmp_path / "one-pass.zarr"))

    writer = TileWriter(str(tmp_path / "parts.zarr"), storage_options=None, existing="missing", name="random")
    predicted = args["s1_time"].copy()
    if s1_time_changes:
        predicted[1] = args["time"][1] + np.timedelta64(3, "h")  # paired when begin() ran
    skeleton = make_tile(
        **{
            **args,
            "s1": np.broadcast_to(np.float32(np.nan), args["s1"].shape),
            "mask": np.broadcast_to(np.uint8(MaskClass.NODATA), args["mask"].shape),
            "s1_time": predicted,
        }
    )
    writer.begin(skeleton)
    writer.write("s2", args["s2"])
    assert tile_status(str(tmp_path / "parts.zarr")) == "writing"
    writer.write("mask", args["mask"])
    writer.write("s1", args["s1"])
    assert tile_status(str(tmp_path / "parts.zarr")) == "writing"
    writer.complete(args["s1_time"], {**skeleton.attrs, **attrs})

    one_pass, parts = _files(tmp_path / "one-pass.zarr"), _files(tmp_path / "parts.zarr")
    assert sorted(parts) == sorted(one_pass)
    assert [name for name in one_pass if parts[name] != one_pass[name]] == []
    ds = open_tile(str(tmp_path / "parts.zarr")).load()
    np.testing.assert_array_equal(ds["s1_time"].values, args["s1_time"])
    np.testing.assert_array_equal(ds["s2"].values, args["s2"])


def test_the_writer_refuses_an_array_of_another_shape(tmp_path: Path) -> None:
    args = _tile(16, 16, seed=1)
    writer = TileWriter(str(tmp_path / "t.zarr"), storage_options=None, existing="missing", name="random")
    writer.begin(make_tile(**args))
    with pytest.raises(ValueError, match=r"tile 'random': 's1' is \(4, 2, 16, 8\) float32"):
        writer.write("s1", args["s1"][..., :8])


def _config(**overrides: Any) -> IngestConfig:
    settings: dict[str, Any] = {
        "start": "2019-04-01",
        "end": "2019-04-30",
        "bands": SITE.bands,
        "retries": 1,
        "backoff_s": 0.01,
    }
    return IngestConfig(**{**settings, **overrides})


def _over_http(items: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    return list(json.loads(json.dumps(items).replace(SAMPLE_DIR.resolve().as_uri(), base)))


def test_an_s1_read_failing_after_the_write_started_leaves_no_store(tmp_path: Path) -> None:
    """S2 is written while S1 is read; S1 fails for good: the started store is removed, as an ingest
    that fails before writing writes nothing."""
    s2, s1 = sample_items()
    out = tmp_path / "t.zarr"

    def wait_for_the_store(_: float) -> None:  # the back-off between S1 attempts
        deadline = time.monotonic() + STORE_WAIT_S
        while not (out / "zarr.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tile_status(str(out)) == "writing"  # the write had started; it is not complete

    with file_server(SAMPLE_DIR, fail=lambda n, path: path.endswith("/vv.tif")) as (base, _):
        path = tmp_path / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": _over_http([*s2, *s1], base)}))
        with pytest.raises(AssetReadError, match=r"asset 'vv'"):
            ingest_tile(TILE, str(out), _config(catalog=str(path)), sleep=wait_for_the_store)
    assert tile_status(str(out)) == "missing"
    assert not out.exists()


def test_an_s1_read_failing_leaves_a_complete_store_as_it_was(tmp_path: Path) -> None:
    """Replacing a complete store starts only once the whole tile is in memory: a failed S1 read leaves
    the old store complete and unchanged."""
    s2, s1 = sample_items()
    out = tmp_path / "t.zarr"
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [*s2, *s1]}))
    ingest_tile(TILE, str(out), _config(catalog=str(items)))
    before = _files(out)
    with file_server(SAMPLE_DIR, fail=lambda n, path: path.endswith("/vh.tif")) as (base, _):
        failing = tmp_path / "failing.json"
        features = _over_http([*s2, *s1], base)
        failing.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        with pytest.raises(AssetReadError, match=r"asset 'vh'"):
            ingest_tile(TILE, str(out), _config(catalog=str(failing)), overwrite=True, sleep=lambda s: None)
    assert tile_status(str(out)) == "complete"
    assert _files(out) == before


def test_replacing_a_store_leaves_exactly_what_a_fresh_ingest_writes(tmp_path: Path) -> None:
    """Overwriting a complete store (more dates) and a store left writing: nothing of the old stores
    remains, every file equals a fresh ingest's."""
    s2, s1 = sample_items()
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [*s2, *s1]}))
    april = _config(catalog=str(items))
    ingest_tile(TILE, str(tmp_path / "fresh.zarr"), april)
    fresh = _files(tmp_path / "fresh.zarr")

    replaced = tmp_path / "replaced.zarr"
    ingest_tile(TILE, str(replaced), _config(catalog=str(items), start="2019-03-20", end="2019-05-31"))
    assert len(_files(replaced)) > len(fresh)  # more dates: more chunk files to be removed
    ingest_tile(TILE, str(replaced), april, overwrite=True)
    assert _files(replaced) == fresh

    meta = json.loads((replaced / "zarr.json").read_text())
    meta["attributes"]["declouder_status"] = "writing"  # as an interrupted writer leaves it
    (replaced / "zarr.json").write_text(json.dumps(meta))
    assert tile_status(str(replaced)) == "writing"
    ingest_tile(TILE, str(replaced), april, overwrite=True)
    assert _files(replaced) == fresh
