"""The tile store: one Zarr v3 group per tile, the one contract between the stages.

The schema is DESIGN.md's "tile store" table. A store written by declouder carries the attribute
``declouder_status``: ``"writing"`` from the moment its metadata exists until the last chunk is
written, then ``"complete"``. Readers refuse ``"writing"`` stores, so an interrupted writer never leaves
something that looks finished (this works on object stores too, which have no atomic rename). A store
built by hand with xarray has no such attribute and is taken as complete once it validates: anyone can
build a tile with plain xarray and fit it.

Georeferencing follows CF / GeoZarr: a ``spatial_ref`` coordinate with ``crs_wkt`` and
``GeoTransform`` written by rioxarray, so ``xarray.open_zarr(url).rio.crs`` works.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal, cast

import fsspec
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
import zarr.codecs  # already loaded by `import zarr`; named so type checkers see the submodule
import zarr.registry
from pyproj import CRS
from zarr.core.codec_pipeline import BatchedCodecPipeline

from tiler.errors import (
    CorruptChunkError,
    OutputExistsError,
    TileIncompleteError,
    TileSchemaError,
    TileStoreError,
)
from tiler.object_store import with_retries

if TYPE_CHECKING:
    from zarr.abc.store import ByteGetter, Store
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import NDBuffer
    from zarr.core.indexing import SelectorTuple

#: Version of the tile schema written into every store; bump on incompatible changes.
SCHEMA_VERSION = "1"

S2 = "s2"
S1 = "s1"
MASK = "mask"
S1_TIME = "s1_time"
DECLOUDED = "s2_declouded"
#: The fit's predicted standard deviation of ``s2_declouded`` (docs/fit.md "Uncertainty"): uint16
#: reflectance × 10000 like S2, but 0 is a valid σ (kept pixels), so no data is SIGMA_NODATA.
DECLOUDED_SIGMA = "s2_declouded_sigma"

#: S2 surface reflectance is stored as uint16 reflectance × 10000 (DESIGN.md), 0 = no data.
S2_SCALE = 10_000
S2_NODATA = 0
#: No data in ``s2_declouded_sigma`` (no declouded value there, or no σ known); 65534 is the largest σ.
SIGMA_NODATA = 65_535
#: The two polarisations of Sentinel-1 IW dual-pol products, in the order the schema stores them.
POLARIZATIONS: tuple[str, ...] = ("VV", "VH")

STATUS_ATTR = "declouder_status"
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"


class MaskClass(IntEnum):
    """Values of the ``mask`` variable (DESIGN.md)."""

    CLEAR = 0
    CLOUD = 1
    SHADOW = 2
    NODATA = 3


#: variable -> (dims, dtype) of the schema. ``s2_declouded`` appears only in fitted stores.
SCHEMA: dict[str, tuple[tuple[str, ...], np.dtype]] = {
    S2: (("time", "band", "y", "x"), np.dtype("uint16")),
    S1: (("time", "polarization", "y", "x"), np.dtype("float32")),
    MASK: (("time", "y", "x"), np.dtype("uint8")),
    S1_TIME: (("time",), np.dtype("datetime64[ns]")),
    DECLOUDED: (("time", "band", "y", "x"), np.dtype("uint16")),
    DECLOUDED_SIGMA: (("time", "band", "y", "x"), np.dtype("uint16")),
}
INPUT_VARIABLES: tuple[str, ...] = (S2, S1, MASK, S1_TIME)


@dataclass(frozen=True)
class TileInfo:
    """What a valid tile holds, as read from its store (cheap: metadata only)."""

    tile_id: str
    epsg: int
    n_time: int
    bands: tuple[str, ...]
    height: int
    width: int
    resolution: float
    has_declouded: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


def _software_version() -> str:
    from campaign import __version__

    return __version__


def make_tile(
    *,
    s2: np.ndarray,
    mask: np.ndarray,
    time: Sequence[Any] | np.ndarray,
    bands: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    epsg: int,
    tile_id: str,
    s1: np.ndarray | None = None,
    s1_time: Sequence[Any] | np.ndarray | None = None,
    item_ids: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build an in-memory tile in the schema from plain arrays, and validate it.

    ``s1`` defaults to all-NaN (no radar: the fit can still run with noise input) and ``s1_time`` to NaT.
    """
    time_values = np.asarray(time, dtype="datetime64[ns]")
    n_time = time_values.size
    height, width = len(y), len(x)
    if s1 is None:
        s1 = np.full((n_time, len(POLARIZATIONS), height, width), np.nan, dtype=np.float32)
    s1_time_values = (
        np.full(n_time, np.datetime64("NaT"), dtype="datetime64[ns]")
        if s1_time is None
        else np.asarray(s1_time, dtype="datetime64[ns]")
    )
    tile_attrs: dict[str, Any] = {
        "tile_id": tile_id,
        "epsg": int(epsg),
        "schema_version": SCHEMA_VERSION,
        "software_version": _software_version(),
    }
    if item_ids is not None:
        tile_attrs["s2_item_ids"] = json.dumps(list(item_ids))
    tile_attrs.update(attrs or {})
    ds = xr.Dataset(
        {
            S2: (SCHEMA[S2][0], np.asarray(s2)),
            S1: (SCHEMA[S1][0], np.asarray(s1)),
            MASK: (SCHEMA[MASK][0], np.asarray(mask)),
            S1_TIME: (SCHEMA[S1_TIME][0], s1_time_values),
        },
        coords={
            "time": time_values,
            "band": list(bands),
            "polarization": list(POLARIZATIONS),
            "y": np.asarray(y, dtype=np.float64),
            "x": np.asarray(x, dtype=np.float64),
        },
        attrs=tile_attrs,
    )
    ds[S2].attrs.update(units="1", scale_factor_note=f"reflectance x {S2_SCALE}", nodata=S2_NODATA)
    ds[S1].attrs.update(units="dB")
    ds[MASK].attrs.update(
        flag_values=[int(m) for m in MaskClass],
        flag_meanings=" ".join(m.name.lower() for m in MaskClass),
    )
    ds = georeference(ds, epsg)
    validate_tile(ds, name=tile_id)
    return ds


def georeference(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    """Attach the CF ``spatial_ref`` (CRS and GeoTransform) so rioxarray and GDAL read the grid.

    Returns a new dataset sharing ``ds``'s arrays: rioxarray's own (not in-place) calls deep-copy every
    array three times, ~0.8 s for a 384×768×30 tile (bench/ingest.py's profile).
    """
    out = ds.copy(deep=False)
    out.rio.write_crs(f"EPSG:{int(epsg)}", inplace=True)
    out.rio.write_transform(out.rio.transform(recalc=True), inplace=True)
    return out.rio.write_coordinate_system(inplace=True)


def validate_tile(
    ds: xr.Dataset,
    *,
    name: str = "tile",
    require: Sequence[str] = INPUT_VARIABLES,
) -> TileInfo:
    """Check a tile against the schema; raise :class:`TileSchemaError` naming what is wrong."""

    def fail(what: str) -> TileSchemaError:
        return _schema_error(name, what)

    for var in require:
        if var not in ds:
            raise fail(f"variable {var!r} is missing; present: {sorted(map(str, ds.data_vars))}")
    for var, (dims, dtype) in SCHEMA.items():
        if var not in ds:
            continue
        if tuple(ds[var].dims) != dims:
            raise fail(f"variable {var!r} has dims {tuple(ds[var].dims)}, expected {dims}")
        actual = ds[var].dtype
        if var == S1_TIME:
            if not np.issubdtype(actual, np.datetime64):
                raise fail(f"variable {var!r} has dtype {actual}, expected datetime64")
        elif actual != dtype:
            raise fail(f"variable {var!r} has dtype {actual}, expected {dtype}")
    for coord in ("time", "y", "x"):
        if coord not in ds.coords:
            raise fail(f"coordinate {coord!r} is missing")
    if ds.sizes.get("time", 0) == 0:
        raise fail("it has no dates (time has size 0)")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise fail(f"coordinate 'time' has dtype {ds['time'].dtype}, expected datetime64")
    if not bool(np.all(np.diff(ds["time"].values.astype("datetime64[ns]").astype(np.int64)) > 0)):
        raise fail("dates in 'time' are not strictly increasing (duplicates must be mosaicked first)")
    if S2 in ds and "band" not in ds.coords:
        raise fail("coordinate 'band' (S2 band names) is missing")
    if S1 in ds:
        if "polarization" not in ds.coords:
            raise fail("coordinate 'polarization' is missing")
        pols = tuple(str(p) for p in ds["polarization"].values)
        if pols != POLARIZATIONS:
            raise fail(f"'polarization' is {pols}, expected {POLARIZATIONS}")
    if ds.sizes.get("y", 0) == 0 or ds.sizes.get("x", 0) == 0:
        raise fail(f"empty spatial extent (y={ds.sizes.get('y', 0)}, x={ds.sizes.get('x', 0)})")
    if DECLOUDED in ds and S2 in ds and ds.sizes["band"] != ds[S2].sizes["band"]:
        raise fail("'s2_declouded' and 's2' disagree on bands")
    epsg = _epsg_of(ds)
    if epsg is None:
        raise fail(NO_CRS)
    bands = tuple(str(b) for b in ds["band"].values) if "band" in ds.coords else ()
    xs = ds["x"].values
    resolution = float(abs(xs[1] - xs[0])) if xs.size > 1 else float("nan")
    return TileInfo(
        tile_id=str(ds.attrs.get("tile_id", name)),
        epsg=epsg,
        n_time=int(ds.sizes["time"]),
        bands=bands,
        height=int(ds.sizes["y"]),
        width=int(ds.sizes["x"]),
        resolution=resolution,
        has_declouded=DECLOUDED in ds,
    )


#: What a tile store without a CRS lacks, and how to add it.
NO_CRS = "no CRS: add a 'spatial_ref' coordinate (rioxarray .rio.write_crs) or an 'epsg' attribute"


def _schema_error(name: str, what: str) -> TileSchemaError:
    return TileSchemaError(f"tile {name!r}: {what} (tile schema: DESIGN.md, 'The tile store')")


def _epsg_of(ds: xr.Dataset) -> int | None:
    if "epsg" in ds.attrs:
        return int(ds.attrs["epsg"])
    crs = ds.rio.crs
    return None if crs is None else crs.to_epsg()


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url, **with_retries(url, storage_options))
    return fs, path


def tile_status(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> Literal["missing", "writing", "complete", "external"]:
    """Where the store at ``url`` stands: absent, being written, finished, or built outside declouder."""
    fs, path = _fs(url, storage_options)
    meta = f"{path.rstrip('/')}/zarr.json"
    if not fs.exists(meta):
        return "missing"
    with fs.open(meta, "rb") as f:
        attrs = json.load(f).get("attributes", {})
    status = attrs.get(STATUS_ATTR)
    if status is None:
        return "external"
    return "complete" if status == STATUS_COMPLETE else "writing"


#: Blosc-zstd at level 1 with bit shuffle (neighbouring reflectance and dB values share their high bits).
#: Measured on real Sentinel-2 here (eo-box L1C cells, the WorldCereal L2A series): within 3 % of level 5's
#: size and ~3× faster to write, and writing is what bounds ingest, fit output and mosaic regions.
COMPRESSOR = zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle=zarr.codecs.BloscShuffle.bitshuffle)
#: Blosc block of the tile store's chunks of at least this size (a full-size tile's date: s2 7 MB, s1
#: 2.4 MB): blosc's own block for zstd level 1 is small, so zstd sees little context. Measured on
#: bench/ingest.py's tile (real eo-box Sentinel-2 texture, 10 dates of 384×768 px): s2 7.59 MB instead
#: of 7.90 MB and 0.079 instead of 0.116 CPU s to encode (docs/ingest.md). Smaller chunks keep blosc's
#: block (the 64×64 px WorldCereal tile as one block per chunk came out 8 % larger).
TILE_BLOCK_BYTES = 1 << 20
_LARGE_CHUNK_COMPRESSOR = zarr.codecs.BloscCodec(
    cname="zstd", clevel=1, shuffle=zarr.codecs.BloscShuffle.bitshuffle, blocksize=TILE_BLOCK_BYTES
)


def tile_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The tile store's Zarr encoding of ``ds``'s variables: one chunk per date (a whole date's image),
    so readers of a date or a window read few objects."""
    enc: dict[str, dict[str, Any]] = {}
    for var in ds.data_vars:
        dims = ds[var].dims
        chunks = tuple(1 if d == "time" else ds.sizes[d] for d in dims)
        large = int(np.prod(chunks)) * ds[var].dtype.itemsize >= TILE_BLOCK_BYTES
        compressor = _LARGE_CHUNK_COMPRESSOR if large else COMPRESSOR
        enc[str(var)] = {"chunks": chunks, "compressors": (compressor,)}
        if var in (S2, DECLOUDED):
            enc[str(var)]["fill_value"] = S2_NODATA
        elif var == DECLOUDED_SIGMA:
            enc[str(var)]["fill_value"] = SIGMA_NODATA
    return enc


def write_tile(
    ds: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> str:
    """Write a tile to ``url`` so that it is marked complete only once every chunk is written.

    Refuses an existing store unless ``overwrite``. On overwrite, the old store is first marked
    ``writing`` (so a crash part-way can never leave the old ``complete`` flag on new, partial data).
    """
    name = name or str(ds.attrs.get("tile_id", url))
    validate_tile(ds, name=name, require=[v for v in INPUT_VARIABLES if v in ds] or [S2])
    status = tile_status(url, storage_options)
    if status != "missing" and not overwrite:
        raise OutputExistsError(
            f"tile {name!r}: output {url!r} already exists ({status}); pass overwrite=True "
            "(CLI: --overwrite) to replace it"
        )
    if status != "missing":
        set_tile_status(url, STATUS_WRITING, storage_options)
    out = prepared_for_store(ds)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*vlen-utf8.*")
        out.to_zarr(
            url,
            mode="w",
            zarr_format=3,
            consolidated=True,
            encoding=tile_encoding(out),
            # Write every chunk, also those all at the fill value: skipping them costs a full scan of each
            # chunk, ~28 % of the write's CPU time for a 384×768×10 tile (bench/ingest.py's tile), and a
            # whole date of no data is rare (ingest drops dates without data over the tile).
            write_empty_chunks=True,
            storage_options=with_retries(url, storage_options) or None,
        )
    set_tile_status(url, STATUS_COMPLETE, storage_options)
    return url


def prepared_for_store(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` as a tile store holds it, ready for Zarr (:func:`write_tile`, ``ingest.write``): status
    ``writing``, the schema and software versions, no encodings, string coordinates as variable-length
    UTF-8 (the one string type the Zarr v3 spec defines: numpy's fixed-width '<U3' has none, and other
    Zarr readers may not read it)."""
    out = ds.copy()
    out.attrs[STATUS_ATTR] = STATUS_WRITING
    out.attrs.setdefault("schema_version", SCHEMA_VERSION)
    out.attrs.setdefault("software_version", _software_version())
    for var in out.variables.values():
        var.encoding = {}
    return out.assign_coords({c: out[c].astype(object) for c in ("band", "polarization") if c in out.coords})


def set_tile_status(url: str, status: str, storage_options: Mapping[str, Any] | None) -> None:
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="r+")
    group.attrs[STATUS_ATTR] = status
    # Consolidated metadata lets plain `xarray.open_zarr(url)` open the store in one read, without warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(store)


def _store_url(store: Any) -> str:
    """A readable URL of a Zarr store (a path for local stores, ``protocol://path`` for fsspec ones)."""
    root = getattr(store, "root", None)
    if root is not None:
        return str(root)
    fs = getattr(store, "fs", None)
    path = getattr(store, "path", None)
    if fs is not None and path is not None:
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
        return f"{protocol}://{path}"
    inner = getattr(store, "_store", None)  # wrapper stores
    return _store_url(inner) if inner is not None else repr(store)


def _chunk_of(key: str) -> tuple[str, tuple[int, ...]]:
    """(variable, chunk indices) of a chunk key: ``s2/c/3/0/0/0`` (v3), ``s2/3.0.0.0`` (v2 style)."""
    parts = key.strip("/").split("/")
    indices: list[int] = []
    while parts:
        pieces = parts[-1].split(".")
        if not all(p.isdigit() for p in pieces):
            break
        indices[:0] = [int(p) for p in pieces]
        parts.pop()
    if parts and parts[-1] == "c":  # v3 default encoding: "c" then one index per dimension
        parts.pop()
    return "/".join(parts) or "/", tuple(indices)


class GuardedCodecPipeline(BatchedCodecPipeline):
    """Zarr's own codec pipeline, turning a chunk that cannot be decoded into :class:`CorruptChunkError`.

    A damaged chunk otherwise surfaces as whatever the codec raises (``RuntimeError: error during
    blosc decompression: -1``) deep inside a dask or Zarr traceback, naming nothing. When a batch of
    chunks fails, each of its chunks is fetched and decoded again on its own to find the damaged one;
    failures to *fetch* (network, permissions: ``OSError``) are not corruption and pass unchanged.
    """

    async def read_batch(
        self,
        batch_info: Iterable[tuple[ByteGetter, ArraySpec, SelectorTuple, SelectorTuple, bool]],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> None:
        batch = list(batch_info)
        try:
            await super().read_batch(batch, out, drop_axes)
        except (OSError, CorruptChunkError):
            raise
        except Exception as err:  # codecs raise RuntimeError, ValueError, ...: find the chunk, re-raise
            await self._name_corrupt_chunk(batch, err)
            raise

    async def _name_corrupt_chunk(
        self,
        batch: list[tuple[ByteGetter, ArraySpec, SelectorTuple, SelectorTuple, bool]],
        err: Exception,
    ) -> None:
        for byte_getter, spec, *_ in batch:
            try:
                data = await byte_getter.get(prototype=spec.prototype)
            except Exception:  # noqa: BLE001  (a fetch failure is not corruption: look on, re-raise err)
                continue
            if data is None:  # missing chunk: the fill value, nothing to decode
                continue
            try:
                await self.decode_batch([(data, spec)])
            except Exception as decode_err:  # noqa: BLE001  (whatever the codec raises)
                variable, chunk = _chunk_of(str(getattr(byte_getter, "path", byte_getter)))
                store = _store_url(getattr(byte_getter, "store", None))
                reason = f"{type(decode_err).__name__}: {decode_err}".strip()
                raise CorruptChunkError(store, variable, chunk, reason) from err


zarr.registry.register_pipeline(GuardedCodecPipeline)
_PIPELINE_PATH = f"{GuardedCodecPipeline.__module__}.{GuardedCodecPipeline.__qualname__}"
_PIPELINE_LOCK = threading.Lock()


@contextlib.contextmanager
def guarded_reads() -> Iterator[None]:
    """Zarr arrays opened inside this block name a corrupt chunk (:class:`CorruptChunkError`) when read.

    Zarr binds the codec pipeline to an array when the array object is created, so the guard holds for
    every later read of arrays opened here (also the lazy, dask-backed reads of :func:`open_tile`).
    """
    with _PIPELINE_LOCK, zarr.config.set({"codec_pipeline.path": _PIPELINE_PATH}):
        yield


def zarr_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (typed: ``group[name]`` may be an array or a subgroup).

    Reads of the returned array raise :class:`CorruptChunkError` naming the chunk if one cannot be
    decoded.
    """
    with guarded_reads():
        array = group[name]
    assert isinstance(array, zarr.Array), f"{name!r} is not a zarr array"
    return array


def zarr_store(url: str, storage_options: Mapping[str, Any] | None = None) -> Store:
    """A Zarr store for a local path or any fsspec URL (s3://, gs://, az://, memory://)."""
    if "://" not in url or url.startswith("file://"):
        return zarr.storage.LocalStore(url.removeprefix("file://"))
    return zarr.storage.FsspecStore.from_url(url, storage_options=with_retries(url, storage_options))


def open_tile(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    require: Sequence[str] = INPUT_VARIABLES,
    name: str | None = None,
) -> xr.Dataset:
    """Open and validate a tile store (lazily: dask-backed). Refuses stores whose writer never finished.

    A chunk that cannot be decoded raises :class:`CorruptChunkError` naming the store, variable and
    chunk: here for coordinates (read at open), at ``.load()`` / ``.values`` for the data variables.
    """
    name = name or url
    _require_finished(url, storage_options, name)
    try:
        with guarded_reads():
            ds = xr.open_zarr(
                url,
                zarr_format=3,
                storage_options=with_retries(url, storage_options) or None,
            )
    except (OSError, ValueError, KeyError) as err:
        raise TileStoreError(f"tile {name!r}: cannot open {url!r} as a Zarr store: {err}") from err
    validate_tile(ds, name=name, require=require)
    return ds


def open_tile_group(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    require: Sequence[str] = INPUT_VARIABLES,
    name: str | None = None,
) -> zarr.Group:
    """Open a tile store as a plain Zarr group, after :func:`open_tile`'s checks of its writer's status and
    of the required variables' dims and dtypes (no xarray Dataset, no CF decoding, no indexes).

    For callers that read a few arrays of many stores: a mosaic region task opens up to four fitted
    tiles, and building each one's Dataset made a tiny region task cost 83–105 CPU ms instead of 53–60
    (docs/tiler.md, "Regions"; ``python bench/scale.py --tiles --parts 128``).
    Reads of the group's arrays through :func:`zarr_array` name a corrupt chunk.
    """
    name = name or url
    _require_finished(url, storage_options, name)
    try:
        with guarded_reads():
            group = zarr.open_group(zarr_store(url, storage_options), mode="r")
    except (OSError, ValueError, KeyError) as err:
        raise TileStoreError(f"tile {name!r}: cannot open {url!r} as a Zarr store: {err}") from err
    for var in require:
        if var not in group:
            raise _schema_error(name, f"variable {var!r} is missing; present: {sorted(group.array_keys())}")
        array = zarr_array(group, var)
        dims, dtype = SCHEMA[var]
        # A tile store is Zarr v3 (DESIGN.md), whose metadata names the dimensions.
        names = tuple(getattr(array.metadata, "dimension_names", None) or ())
        # s1_time is stored CF-encoded (numbers with units): its datetime dtype exists only decoded.
        if names != dims or (var != S1_TIME and array.dtype != dtype):
            raise _schema_error(
                name,
                f"variable {var!r} has dims {names} and dtype {array.dtype}, expected {dims} and {dtype}",
            )
    return group


def tile_group_epsg(group: zarr.Group, *, name: str) -> int:
    """The EPSG code of a tile store opened with :func:`open_tile_group`: its ``epsg`` attribute, else its
    ``spatial_ref``'s CRS (what :func:`validate_tile` reads from a Dataset); refused without either."""
    if "epsg" in group.attrs:
        return int(cast(int, group.attrs["epsg"]))
    wkt = zarr_array(group, "spatial_ref").attrs.get("crs_wkt") if "spatial_ref" in group else None
    code = CRS.from_wkt(str(wkt)).to_epsg() if wkt else None
    if code is None:
        raise _schema_error(name, NO_CRS)
    return int(code)


def tile_times(group: zarr.Group) -> np.ndarray:
    """The ``time`` of a tile store opened with :func:`open_tile_group`, CF-decoded (datetime64)."""
    array = zarr_array(group, "time")
    raw = xr.Variable(("time",), array[:], attrs=dict(array.attrs))
    # The variable's own CF decoder: no Dataset built around one coordinate.
    return np.asarray(xr.conventions.decode_cf_variable("time", raw).values)


def _require_finished(url: str, storage_options: Mapping[str, Any] | None, name: str) -> None:
    """Refuse a store that is not there or whose writer never finished."""
    status = tile_status(url, storage_options)
    if status == "missing":
        raise TileStoreError(
            f"tile {name!r}: no tile store at {url!r} (expected a Zarr v3 group with a zarr.json); "
            "run `declouder ingest` to create it or check the path"
        )
    if status == "writing":
        raise TileIncompleteError(
            f"tile {name!r}: the store at {url!r} is incomplete (its writer did not finish); "
            "rerun the step that writes it (ingest, fit, or the campaign, which resumes)"
        )
