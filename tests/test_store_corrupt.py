"""A tile store with a damaged chunk: every read path names the store, variable and chunk.

Real stores (the committed WorldCereal tile, copied), real damage (a chunk file's bytes flipped,
truncated or emptied on disk, or an object overwritten on moto's S3 endpoint), real readers (xarray
through ``open_tile``, plain Zarr through ``zarr_array``, the ``declouder fit`` command).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
import zarr

from tiler.errors import CorruptChunkError, TileStoreError
from tiler.store import open_tile, write_tile, zarr_array, zarr_store


def flip_bytes(path: Path) -> None:
    """Damage a chunk file in place: every 7th byte after its header flipped."""
    data = bytearray(path.read_bytes())
    for i in range(16, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def chunk_path(store: Path, variable: str, chunk: tuple[int, ...]) -> Path:
    return store.joinpath(variable, "c", *map(str, chunk))


def assert_names(err: CorruptChunkError, store: str, variable: str, chunk: tuple[int, ...]) -> None:
    assert (err.store, err.variable, err.chunk) == (store, variable, chunk)
    message = str(err)
    assert "\n" not in message
    assert store in message
    assert f"variable {variable!r}" in message
    assert f"chunk {'.'.join(map(str, chunk))} " in message
    assert "re-ingest" in message


@pytest.mark.parametrize(
    ("variable", "chunk", "damage"),
    [
        ("s2", (5, 0, 0, 0), flip_bytes),
        ("mask", (3, 0, 0), lambda p: p.write_bytes(p.read_bytes()[:40])),  # truncated
        ("s1", (2, 0, 0, 0), lambda p: p.write_bytes(b"")),  # emptied
    ],
)
def test_open_tile_load_names_the_corrupt_chunk(
    worldcereal_copy: Path, variable: str, chunk: tuple[int, ...], damage: Any
) -> None:
    target = chunk_path(worldcereal_copy, variable, chunk)
    assert target.is_file()
    damage(target)
    ds = open_tile(str(worldcereal_copy))  # lazy: opening reads metadata and coordinates only
    with pytest.raises(CorruptChunkError) as caught:
        ds.load()
    assert_names(caught.value, str(worldcereal_copy), variable, chunk)
    # Other dates still read: the damage is confined to the chunk named.
    other = 0 if chunk[0] != 0 else 1
    assert ds[variable].isel(time=other).values.size > 0


def test_corrupt_coordinate_fails_at_open(worldcereal_copy: Path) -> None:
    target = chunk_path(worldcereal_copy, "time", (0,))
    target.write_bytes(os.urandom(100))
    with pytest.raises(CorruptChunkError) as caught:
        open_tile(str(worldcereal_copy))
    assert_names(caught.value, str(worldcereal_copy), "time", (0,))
    assert isinstance(caught.value, TileStoreError)


def test_plain_zarr_reads_through_zarr_array(worldcereal_copy: Path) -> None:
    """The mosaic reads fitted tiles with plain Zarr (``zarr_array``): the same error there."""
    flip_bytes(chunk_path(worldcereal_copy, "s2", (7, 0, 0, 0)))
    group = zarr.open_group(zarr_store(str(worldcereal_copy)), mode="r")
    array = zarr_array(group, "s2")
    assert array[6].shape[0] == array.shape[1]  # a sound chunk reads
    with pytest.raises(CorruptChunkError) as caught:
        array.get_orthogonal_selection((slice(None), 0, slice(0, 8), slice(0, 8)))
    assert_names(caught.value, str(worldcereal_copy), "s2", (7, 0, 0, 0))


def test_error_survives_pickling() -> None:
    """Ray ships a worker's exception to the driver by pickling it: the attributes must come along."""
    err = CorruptChunkError("s3://b/t.zarr", "s2", (3, 0, 0, 0), "RuntimeError: blosc")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, CorruptChunkError)
    assert (back.store, back.variable, back.chunk) == (err.store, err.variable, err.chunk)
    assert str(back) == str(err)


def test_corrupt_chunk_on_s3(worldcereal_tile: Path, s3_endpoint: dict[str, Any]) -> None:
    url = "s3://declouder-test/corrupt/tile.zarr"
    ds = open_tile(str(worldcereal_tile)).isel(time=slice(0, 4)).load()
    write_tile(ds, url, overwrite=True, storage_options=s3_endpoint)
    fs = fsspec.filesystem("s3", **s3_endpoint)
    key = "declouder-test/corrupt/tile.zarr/s2/c/2/0/0/0"
    damaged = bytearray(fs.cat_file(key))
    for i in range(16, len(damaged), 7):
        damaged[i] ^= 0x5A
    fs.pipe_file(key, bytes(damaged))
    with pytest.raises(CorruptChunkError) as caught:
        open_tile(url, storage_options=s3_endpoint).load()
    assert_names(caught.value, "s3://declouder-test/corrupt/tile.zarr", "s2", (2, 0, 0, 0))


def test_fit_command_prints_one_line(worldcereal_copy: Path, tmp_path: Path) -> None:
    flip_bytes(chunk_path(worldcereal_copy, "s2", (5, 0, 0, 0)))
    proc = subprocess.run(
        [sys.executable, "-m", "campaign", "fit", str(worldcereal_copy), "--out", str(tmp_path / "out.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in lines[0]
    assert str(worldcereal_copy) in lines[0]
    assert "variable 's2'" in lines[0] and "chunk 5.0.0.0" in lines[0] and "re-ingest" in lines[0]
