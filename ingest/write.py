"""Write a tile store in parts while the ingest still runs: the same store as :func:`tiler.store.write_tile`.

:func:`tiler.store.write_tile` takes the finished tile and writes it in one pass. An ingest has its
``s2`` final long before the masks and Sentinel-1 are: :class:`TileWriter` lets it write the store's
metadata, coordinates and ``s2`` first (in a thread, while the masks are computed and S1 is read), then
``mask`` and ``s1`` as each is done, and mark the store complete last. The store holds the same bytes
as ``write_tile`` writes for the same tile (``tests/test_ingest_write.py`` compares every file).

The store contract holds throughout: the store is ``writing`` from the moment its metadata exists and
``complete`` only after every chunk of every variable is written (:meth:`TileWriter.complete`); an
ingest that fails part-way removes the store it started (:meth:`TileWriter.abandon`), and if that
removal fails the store still reads as incomplete. Replacing a store that is complete (or built outside
declouder) is the caller's choice of *when*: ``ingest_tile`` starts such a write only once the whole
tile is in memory, so a failed ingest leaves the old store as it was.

Data variables are written one chunk (one date) per call, each call passing exactly one chunk's array:
Zarr then encodes the caller's array as it is, instead of first copying the whole variable into a fresh
chunk buffer per chunk (what one ``to_zarr`` of a numpy-backed dataset does).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from tiler.object_store import with_retries
from tiler.store import (
    MASK,
    S1,
    S1_TIME,
    S2,
    STATUS_ATTR,
    STATUS_COMPLETE,
    STATUS_WRITING,
    prepared_for_store,
    set_tile_status,
    tile_encoding,
    validate_tile,
    zarr_store,
)

#: The variables written chunk by chunk (one chunk per date); the rest (coordinates, ``s1_time``) are
#: small and written with the metadata.
CHUNKED_VARIABLES: tuple[str, ...] = (S2, S1, MASK)
#: Chunks (dates) of one variable encoded and written at once: enough to keep a few cores busy, few
#: enough that their compressed copies stay small (a full-size tile's s2 date is 7 MB before blosc).
CHUNKS_AT_ONCE = 8
#: The group's metadata document (its attributes hold the store's status).
ROOT_METADATA = "zarr.json"


async def _copy_store(source: zarr.storage.MemoryStore, target: Store, *, clear: bool) -> None:
    """Every key of ``source`` into ``target``: the root's ``zarr.json`` (status ``writing``) first, the
    rest at once. ``clear``: remove what ``target`` holds first (as ``to_zarr(mode="w")`` does)."""
    if clear:
        await target.delete_dir("")
    prototype = default_buffer_prototype()
    values = {key: await source.get(key, prototype) async for key in source.list()}
    await target.set(ROOT_METADATA, values.pop(ROOT_METADATA))  # type: ignore[arg-type]
    await asyncio.gather(*(target.set(key, value) for key, value in values.items() if value is not None))


class TileWriter:
    """One tile store written in parts: :meth:`begin`, :meth:`write` per data variable, :meth:`complete`.

    ``existing`` is the store's status before the ingest (``tiler.store.tile_status``); a store that
    exists is marked ``writing`` before anything of it is replaced, as ``write_tile`` does. Not
    thread-safe: one thread makes all the calls (``ingest_tile`` gives them to one writer thread, in
    order).
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None,
        existing: str,
        name: str,
    ) -> None:
        self.url = url
        self.storage_options = storage_options
        self.existing = existing
        self.name = name
        self._group: zarr.Group | None = None
        self._template: xr.Dataset | None = None

    def begin(self, ds: xr.Dataset) -> None:
        """Write the metadata of every variable, the coordinates and ``s1_time``, status ``writing``.

        ``ds`` is the tile as :func:`tiler.store.make_tile` builds it, with placeholders (e.g.
        ``np.broadcast_to`` views) for data not known yet: only the shapes and dtypes of its chunked
        variables are used, their data comes with :meth:`write`; ``s1_time`` as known so far
        (:meth:`complete` rewrites it if it changed); its attributes are replaced by :meth:`complete`'s.
        """
        import dask.array as da

        validate_tile(ds, name=self.name)
        if self.existing != "missing":
            set_tile_status(self.url, STATUS_WRITING, self.storage_options)
        out = prepared_for_store(ds)
        for var in CHUNKED_VARIABLES:
            shape = out[var].shape
            # Lazy placeholders: with compute=False xarray writes their metadata and none of their chunks.
            out[var] = out[var].copy(data=da.empty(shape, dtype=out[var].dtype, chunks=(1, *shape[1:])))
        # Built in memory, then copied: Zarr's local and object stores pay a round trip per metadata
        # document and coordinate chunk (~25, each written 1-2 times), which took ~2× the CPU here.
        memory = zarr.storage.MemoryStore()
        self._to_zarr(out, memory, mode="w", encoding=tile_encoding(out), compute=False)
        target = zarr_store(self.url, self.storage_options)
        sync(_copy_store(memory, target, clear=self.existing != "missing"))
        self._template = ds
        self._group = zarr.open_group(target, mode="r+")

    def _to_zarr(
        self,
        out: xr.Dataset,
        store: zarr.storage.MemoryStore | None,
        *,
        mode: Literal["w", "a"],
        encoding: dict[str, Any],
        compute: bool,
    ) -> None:
        """``out.to_zarr`` into ``store`` (None: the tile's URL)."""
        options: dict[str, Any] = {
            "mode": mode,
            "zarr_format": 3,
            "consolidated": False,  # consolidated once, by complete()
            "encoding": encoding,
            "write_empty_chunks": True,
            "storage_options": (
                None if store is not None else with_retries(self.url, self.storage_options) or None
            ),
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*vlen-utf8.*")
            if compute:
                out.to_zarr(self.url if store is None else store, **options)
            else:  # metadata, coordinates and numpy-backed variables; the dask-backed ones' chunks not
                out.to_zarr(self.url if store is None else store, compute=False, **options)

    def write(self, var: str, data: np.ndarray) -> None:
        """Every chunk (date) of ``var``, one call per chunk, all of them (also those all at the fill
        value, as ``write_tile`` writes them)."""
        group, template = self._begun(f"write({var!r})")
        expected = template[var]
        if data.shape != expected.shape or data.dtype != expected.dtype:
            raise ValueError(
                f"tile {self.name!r}: {var!r} is {data.shape} {data.dtype}, the store's is "
                f"{expected.shape} {expected.dtype}"
            )
        array = group[var]
        assert isinstance(array, zarr.Array)
        chunks = array.with_config({"write_empty_chunks": True}).async_array

        async def every_chunk() -> None:
            # One call into Zarr's event loop for all the chunks, CHUNKS_AT_ONCE encoded concurrently
            # (blosc releases the GIL); one chunk's array per write, so none is copied into a fresh
            # chunk buffer first.
            for first in range(0, len(data), CHUNKS_AT_ONCE):
                dates = range(first, min(first + CHUNKS_AT_ONCE, len(data)))
                await asyncio.gather(*(chunks.setitem(slice(t, t + 1), data[t : t + 1]) for t in dates))

        sync(every_chunk())

    def complete(self, s1_time: np.ndarray, attrs: Mapping[str, Any]) -> str:
        """Finish the store: ``s1_time`` rewritten if it differs from what :meth:`begin` wrote, the group
        attributes set to ``attrs`` (the tile's, as ``make_tile`` gives them) with status ``complete``,
        the metadata consolidated. Call it only after every :meth:`write`."""
        group, template = self._begun("complete()")
        s1_time = np.asarray(s1_time, dtype="datetime64[ns]")
        if not np.array_equal(s1_time, template[S1_TIME].values, equal_nan=True):
            # Its CF units depend on its values: written anew, as a one-pass write would write it.
            del group[S1_TIME]
            out = prepared_for_store(
                template[[S1_TIME]].assign({S1_TIME: template[S1_TIME].copy(data=s1_time)})
            )
            self._to_zarr(out, None, mode="a", encoding={S1_TIME: tile_encoding(out)[S1_TIME]}, compute=True)
        final = prepared_for_store(xr.Dataset(attrs=dict(attrs))).attrs
        final[STATUS_ATTR] = STATUS_COMPLETE
        group.attrs.put(final)
        # Consolidated metadata lets plain `xarray.open_zarr(url)` open the store in one read.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            zarr.consolidate_metadata(group.store)
        return self.url

    def _begun(self, what: str) -> tuple[zarr.Group, xr.Dataset]:
        if self._group is None or self._template is None:
            raise RuntimeError(f"tile {self.name!r}: TileWriter.{what} before begin()")
        return self._group, self._template

    def abandon(self) -> None:
        """Remove the store this writer started from nothing (the ingest failed before completing it).

        A store that existed before is left as it is (marked ``writing`` if :meth:`begin` got that
        far). If the removal fails, the store still reads as incomplete."""
        if self.existing != "missing":
            return
        fs, path = fsspec.core.url_to_fs(self.url, **with_retries(self.url, self.storage_options))
        try:
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except OSError:
            pass
