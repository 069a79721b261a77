"""The mosaicker: the fitted tiles of one UTM zone become one Zarr store, written region by region.

Three steps, each a pure function of store URLs, a key and a little configuration, so a driver can run
the middle one as parallel tasks in any order:

1. :func:`init_mosaic_template` writes the *template* from the plan alone (no fitted tile is read):
   every variable's metadata and coordinates over the block of cells of the zone's planned tiles, a
   time axis fixed up front (:func:`campaign_times`: every UTC day of the campaign period), the bands,
   the CRS (``spatial_ref``), and ``declouder_status = "writing"``. No imagery yet.
   :func:`init_mosaic` does the same from fitted tiles (the union of their days, their bands).
2. :func:`write_mosaic_region` writes one *region*: the cell a tile owns on the grid
   (:attr:`tiler.grid.TileRef.cell_bounds`), keyed by that tile's id. The imagery and quality arrays
   are sharded Zarr v3: one shard per cell holds all its dates (inner chunks: one date, all bands, one
   cell), so a region writes exactly one object per variable, two regions never write the same object
   and need no locks, and dates without data are not stored at all (readers see the fill value, 0). A
   cell holds its own tile plus the overlaps that reach into it from the neighbours to the west, south
   and south-west; they are blended with smooth weights (below).
3. :func:`finalize_mosaic` checks that every region of the campaign is written and marks the store
   ``complete``. Readers (:func:`open_mosaic`, the outputs) refuse a mosaic that is not.

:func:`mosaic_tiles` does all three for any number of tiles, one store per UTM zone.

Blending: each tile's weight is the product of a row and a column profile that is 1 inside the tile and
ramps over the ``overlap`` pixels at each edge (raised cosine by default, linear on request). The ramps
of two neighbours are mirror images, so at every pixel the weights of the tiles that cover it sum to
one (four at a corner: the products still sum to one). Pixels without valid data in a tile (reflectance
0 = nodata, or a date the tile does not have) get no weight from it and the others are renormalised:
at the edge of the area or next to a failed tile, the tile that is present gives the value on its own.

Dates: the mosaic's time axis is a list of UTC *days* fixed by the template: for a campaign, every day
of its period (:func:`campaign_times`), so it is known before any tile is fitted; for
:func:`init_mosaic`, the sorted union of the fitted tiles' days. A tile date maps to its day
(neighbouring tiles see the same satellite pass on the same day, with timestamps seconds apart) and
must be on the axis. A tile must not hold two dates on one day (ingest merges same-day granules). Where
no tile covering a pixel has a date, that pixel is nodata (0) on that date, and its quality value is
nodata too; a day on which no tile of a cell has data is not stored in that cell's shard.

Quality layer ``clear_distance_days`` (time, y, x, uint16): days from the date to the nearest date on
which the pixel was observed clear (0 = observed clear that day), from the tiles' ``mask_refined`` when
the fit stored one, else their ``mask``; a pixel counts as clear on a date when a tile covering it says
so. 65534 = never observed clear, 65535 = no imagery (see :mod:`tiler.quality`).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from tiler.calendar import (
    SIGMA_MAX,
    SIGMA_UNKNOWN,
    SOURCE_MEANINGS,
    CalendarError,
    CalendarSteps,
    calendar_steps,
    check_cadence,
    resample_calendar,
)
from tiler.errors import (
    MosaicError,
    MosaicIncompleteError,
    OutputExistsError,
    TileMismatchError,
)
from tiler.grid import DEFAULT_OVERLAP, DEFAULT_RESOLUTION, DEFAULT_TILE_SIZE, TileRef
from tiler.object_store import with_retries
from tiler.quality import QUALITY_NODATA, clear_distance_days
from tiler.store import (
    COMPRESSOR,
    DECLOUDED,
    DECLOUDED_SIGMA,
    MASK,
    S2_NODATA,
    SIGMA_NODATA,
    STATUS_ATTR,
    STATUS_COMPLETE,
    STATUS_WRITING,
    MaskClass,
    georeference,
    open_tile,
    open_tile_group,
    tile_group_epsg,
    tile_status,
    tile_times,
    zarr_array,
    zarr_store,
)

if TYPE_CHECKING:
    from zarr.core.indexing import OrthogonalSelection

#: The quality layer: days to the nearest clear observation (module docstring).
QUALITY = "clear_distance_days"
#: Attribute: "true" when the mosaic has a ``s2_declouded_sigma`` variable (decided by the template).
SIGMA_ATTR = "mosaic_sigma"
#: Attribute of a mosaic with a calendar beside it: JSON {"store": name beside the mosaic, "cadence": ...}.
CALENDAR_ATTR = "mosaic_calendar"
#: Attribute naming what a store is: "mosaic" (per acquisition day) or "calendar" (regular steps).
PRODUCT_ATTR = "declouder_product"
#: Calendar stores: where each step's value comes from (tiler.calendar.SOURCE_*), and the bins' bounds.
CALENDAR_SOURCE = "calendar_source"
TIME_BOUNDS = "time_bnds"
#: Refined cloud masks a fit may store beside ``mask`` (same classes); preferred when present.
MASK_REFINED = "mask_refined"
#: Which cells the campaign covers (1) on the cell grid: written once by init_mosaic, in one chunk.
REGION_EXPECTED = "region_expected"
#: Which cells are written (1): one chunk per cell, so parallel regions never share a chunk.
REGION_WRITTEN = "region_written"
#: Which days of the time axis a cell has imagery on (cell_row, cell_col, time; 1 = some pixel has data):
#: one chunk per cell, written by its region. Finalize sums it into :data:`DAYS_WITH_DATA_ATTR`.
REGION_DAYS = "region_days"
#: Version of this store layout, in the attributes of every mosaic ("1": one chunk per date × cell;
#: "2": imagery and quality sharded by cell, ``region_days``).
MOSAIC_VERSION = "2"
#: Store layouts: "sharded" (one shard object per cell and variable holding all its dates; the default)
#: or "chunked" (one object per date × cell: the layout of version 1, kept for comparison and tests).
LAYOUTS = ("sharded", "chunked")
Layout = Literal["sharded", "chunked"]
#: Attribute set by finalize: the ISO days on which any cell has data (outputs write those dates).
DAYS_WITH_DATA_ATTR = "mosaic_days_with_data"
#: Bytes of blended uint16 imagery a region holds before writing them into its shard. Most cells
#: (~73 dates × 10 bands × 352×736 px ≈ 380 MB at most) are written in one or two shard writes; a
#: write that does not cover the whole shard reads the shard back first (zarr merges encoded chunks).
REGION_WRITE_BUDGET_BYTES = 256 * 2**20
#: Attributes holding the grid a mosaic was built on, its dates (ISO days) and bands, as JSON: region
#: tasks read them from the store's one metadata document instead of decoding coordinate arrays.
GRID_ATTR = "mosaic_grid"
DATES_ATTR = "mosaic_dates"
BANDS_ATTR = "mosaic_bands"
#: The store layout (:data:`LAYOUTS`); absent in version 1 stores, which are "chunked".
LAYOUT_ATTR = "mosaic_layout"
#: Largest inner chunk of a calendar's shards (uncompressed): small cells keep all their steps in one
#: inner chunk, since zarr's cost per inner chunk dominates the write of tiny ones (37 steps of a
#: 12×12 px cell: 20 ms as 37 chunks); a full cell's step (10 bands, 352×736: 5 MB) stays one chunk, so
#: reading one step of a cell reads one step.
CALENDAR_CHUNK_BYTES = 4 * 2**20
#: Dates blended per step of a region: bounds memory (a 352×736 cell of 13 bands is 13 MB per date in
#: float32, twice: sums and weights) while each read and write moves several chunks concurrently.
DATES_PER_BATCH = 4
RAMPS = ("cosine", "linear")
Ramp = Literal["cosine", "linear"]
#: The tile store's codec (blosc-zstd level 1, bit shuffle): see tiler.store.COMPRESSOR for the measurement.
MOSAIC_COMPRESSOR = COMPRESSOR
#: Two pixel edges closer than this (metres) are the same edge: coordinates go through float64 sums.
GRID_TOLERANCE_M = 1e-3
#: Day numbers of the time axis: calendar days (UTC) since the epoch.
DAY = np.timedelta64(1, "D")
#: Longest time axis a template accepts: 20 years of days (a campaign period is months to a few years;
#: a longer axis is a mistake in the dates, and every cell's shard index grows with it).
MAX_TIME_AXIS_DAYS = 20 * 366

Progress = Callable[[int, int, str], None]
StorageOptions = Mapping[str, Any] | None


# --- Geometry of a mosaic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MosaicGrid:
    """The tile grid of one UTM zone and the block of cells a mosaic covers.

    Cells ``col0 .. col0 + n_cols - 1`` by ``row0 .. row0 + n_rows - 1``; the mosaic array is north-up
    (row 0 of the array is the north edge of cell row ``row0 + n_rows - 1``).
    """

    epsg: int
    col0: int
    row0: int
    n_cols: int
    n_rows: int
    size: tuple[int, int] = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    resolution: float = DEFAULT_RESOLUTION
    ramp: Ramp = "cosine"

    def __post_init__(self) -> None:
        self.tile(self.col0, self.row0)  # TileRef checks the zone, the size and the overlap
        if self.n_cols < 1 or self.n_rows < 1:
            raise ValueError(f"a mosaic grid needs at least one cell, got {self.n_cols}×{self.n_rows}")
        if self.ramp not in RAMPS:
            raise ValueError(f"blend ramp {self.ramp!r} is not one of {RAMPS}")

    @classmethod
    def covering(cls, tiles: Iterable[TileRef], *, ramp: Ramp = "cosine") -> MosaicGrid:
        """The smallest grid whose cells hold the cells of all ``tiles`` (one zone, one tile geometry)."""
        tiles = list(tiles)
        if not tiles:
            raise MosaicError("mosaic: no tiles given; pass the fitted tile stores to mosaic")
        first = tiles[0]
        for tile in tiles:
            if tile.epsg != first.epsg:
                raise TileMismatchError(
                    f"tile {tile.tile_id!r} is in UTM zone EPSG:{tile.epsg} but tile {first.tile_id!r} is in "
                    f"EPSG:{first.epsg}: a mosaic holds one zone; mosaic_tiles (CLI: declouder mosaic) "
                    "writes one store per zone"
                )
        cols = [t.col for t in tiles]
        rows = [t.row for t in tiles]
        return cls(
            epsg=first.epsg,
            col0=min(cols),
            row0=min(rows),
            n_cols=max(cols) - min(cols) + 1,
            n_rows=max(rows) - min(rows) + 1,
            size=first.size,
            overlap=first.overlap,
            resolution=first.resolution,
            ramp=ramp,
        )

    def tile(self, col: int, row: int) -> TileRef:
        return TileRef(self.epsg, col, row, self.size, self.overlap, self.resolution)

    @property
    def cell_shape(self) -> tuple[int, int]:
        """(height, width) of one cell in pixels: the grid's stride and the mosaic's chunk."""
        return self.tile(self.col0, self.row0).stride

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows * self.cell_shape[0], self.n_cols * self.cell_shape[1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        height, width = self.cell_shape
        res = self.resolution
        return (
            self.col0 * width * res,
            self.row0 * height * res,
            (self.col0 + self.n_cols) * width * res,
            (self.row0 + self.n_rows) * height * res,
        )

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) pixel centres in the zone CRS; y descends (north-up)."""
        minx, _, _, maxy = self.bounds
        height, width = self.shape
        x = minx + (np.arange(width) + 0.5) * self.resolution
        y = maxy - (np.arange(height) + 0.5) * self.resolution
        return y, x

    def contains(self, tile: TileRef) -> bool:
        return (
            tile.epsg == self.epsg
            and self.col0 <= tile.col < self.col0 + self.n_cols
            and self.row0 <= tile.row < self.row0 + self.n_rows
        )

    def cell_index(self, tile: TileRef) -> tuple[int, int]:
        """(row, column) of a tile's cell in the mosaic's cell arrays, north-up like the imagery."""
        return (self.row0 + self.n_rows - 1 - tile.row, tile.col - self.col0)

    def cell_tile(self, i: int, j: int) -> TileRef:
        """The tile owning the cell at (row, column) ``(i, j)`` of the cell arrays (inverse of cell_index)."""
        return self.tile(self.col0 + j, self.row0 + self.n_rows - 1 - i)

    def cell_window(self, tile: TileRef) -> tuple[slice, slice]:
        """The (y, x) slices of a tile's cell in the mosaic arrays: exactly one chunk."""
        i, j = self.cell_index(tile)
        height, width = self.cell_shape
        return slice(i * height, (i + 1) * height), slice(j * width, (j + 1) * width)

    def to_attrs(self) -> str:
        return json.dumps(
            {
                "epsg": self.epsg,
                "col0": self.col0,
                "row0": self.row0,
                "n_cols": self.n_cols,
                "n_rows": self.n_rows,
                "size": list(self.size),
                "overlap": self.overlap,
                "resolution": self.resolution,
                "ramp": self.ramp,
            }
        )

    @classmethod
    def from_attrs(cls, text: str) -> MosaicGrid:
        fields = json.loads(text)
        fields["size"] = tuple(fields["size"])
        return cls(**fields)


def blend_profile(n: int, overlap: int, ramp: Ramp = "cosine") -> np.ndarray:
    """Weights along one axis of a tile of ``n`` pixels: ramps over ``overlap`` pixels at both ends.

    Sampled at pixel centres, so the falling ramp of one tile and the rising ramp of its neighbour over
    the same pixels add up to exactly one, and no weight is ever zero (an edge pixel without a neighbour
    still renormalises to its own value).
    """
    weights = np.ones(n, dtype=np.float64)
    if overlap == 0:
        return weights
    t = (np.arange(overlap) + 0.5) / overlap
    rising = 0.5 - 0.5 * np.cos(np.pi * t) if ramp == "cosine" else t
    weights[:overlap] = rising
    weights[n - overlap :] = rising[::-1]
    return weights


def blend_weights(tile: TileRef, ramp: Ramp = "cosine") -> np.ndarray:
    """A tile's (height, width) blend weights, north-up like its arrays: row profile × column profile."""
    height, width = tile.size
    return np.outer(blend_profile(height, tile.overlap, ramp), blend_profile(width, tile.overlap, ramp))


# --- Reading fitted tiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FittedTile:
    """A fitted tile store, checked against a mosaic: where its pixels lie and which days it holds."""

    tile: TileRef
    url: str
    bands: tuple[str, ...]
    days: tuple[int, ...]
    #: Offsets of the store's first row and column inside the tile's nominal footprint, and its shape.
    row_offset: int
    col_offset: int
    height: int
    width: int
    mask_variable: str
    #: The store holds the fit's σ (:data:`DECLOUDED_SIGMA`).
    has_sigma: bool = False


def read_fitted_tile(tile: TileRef, url: str, *, storage_options: StorageOptions = None) -> FittedTile:
    """Open a fitted tile's metadata and check it can be placed on the grid; refuse it with a reason."""
    return _open_fitted(tile, url, storage_options)[0]


def _open_fitted(tile: TileRef, url: str, storage_options: StorageOptions) -> tuple[FittedTile, zarr.Group]:
    """:func:`read_fitted_tile`, and the store's group for reading its arrays (opened once)."""
    name = tile.tile_id
    group = open_tile_group(url, storage_options=storage_options, require=[DECLOUDED], name=name)
    epsg = tile_group_epsg(group, name=name)
    if epsg != tile.epsg:
        raise TileMismatchError(
            f"tile {name!r}: its store {url!r} is in EPSG:{epsg}, but the id places it in UTM zone "
            f"EPSG:{tile.epsg}; mosaic it with the tiles of its own zone"
        )
    days = tile_times(group).astype("datetime64[D]")
    if np.unique(days).size != days.size:
        raise TileMismatchError(
            f"tile {name!r}: several dates on one day ({_duplicate_days(days)}); the mosaic's time axis is "
            "by UTC day: merge same-day acquisitions into one date (ingest does) and fit again"
        )
    x = np.asarray(zarr_array(group, "x")[:], dtype=np.float64)
    y = np.asarray(zarr_array(group, "y")[:], dtype=np.float64)
    res = tile.resolution
    minx, _, _, maxy = tile.bounds
    col_offset = (x[0] - res / 2 - minx) / res
    row_offset = (maxy - (y[0] + res / 2)) / res
    regular = x.size < 2 or (
        np.allclose(np.diff(x), res, atol=GRID_TOLERANCE_M)
        and np.allclose(np.diff(y), -res, atol=GRID_TOLERANCE_M)
    )
    aligned = (
        abs(col_offset - round(col_offset)) * res < GRID_TOLERANCE_M
        and abs(row_offset - round(row_offset)) * res < GRID_TOLERANCE_M
    )
    inside = (
        round(col_offset) >= 0
        and round(row_offset) >= 0
        and round(col_offset) + x.size <= tile.size[1]
        and round(row_offset) + y.size <= tile.size[0]
    )
    if not (regular and aligned and inside):
        raise TileMismatchError(
            f"tile {name!r}: its pixels ({x.size}×{y.size} from x={x[0] - res / 2:.2f}, "
            f"y={y[0] + res / 2:.2f}) do not lie on the grid footprint {tile.bounds} of a "
            f"{tile.size[0]}×{tile.size[1]} px tile with {tile.overlap} px overlap at {res:g} m: "
            "mosaic with the size/overlap/resolution the tiles were planned with"
        )
    return FittedTile(
        tile=tile,
        url=url,
        bands=tuple(str(b) for b in np.asarray(zarr_array(group, "band")[:])),
        days=tuple(int(d) for d in days.astype(np.int64)),
        row_offset=round(row_offset),
        col_offset=round(col_offset),
        height=int(y.size),
        width=int(x.size),
        mask_variable=MASK_REFINED if MASK_REFINED in group else MASK,
        has_sigma=DECLOUDED_SIGMA in group,
    ), group


def _duplicate_days(days: np.ndarray) -> str:
    values, counts = np.unique(days, return_counts=True)
    return ", ".join(str(v) for v in values[counts > 1][:3])


def _parse_tile_ids(
    tiles: Mapping[str, str], *, size: tuple[int, int], overlap: int, resolution: float
) -> dict[TileRef, str]:
    parsed: dict[TileRef, str] = {}
    for tile_id, url in tiles.items():
        try:
            tile = TileRef.from_id(tile_id, size=size, overlap=overlap, resolution=resolution)
        except ValueError as err:
            raise TileMismatchError(
                f"tile {tile_id!r} ({url!r}): not a grid tile id: {err}; the mosaicker places tiles by their "
                "grid id (declouder tiles prints them)"
            ) from err
        parsed[tile] = url
    return parsed


# --- The three steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MosaicInfo:
    """What a mosaic store holds (read from its metadata)."""

    url: str
    grid: MosaicGrid
    times: tuple[np.datetime64, ...]
    bands: tuple[str, ...]
    status: str
    n_regions: int
    layout: Layout = "chunked"
    #: Days on which some cell has data (set by finalize; None before, or in a version 1 store).
    days_with_data: tuple[np.datetime64, ...] | None = None
    #: The store has the fit's σ (:data:`DECLOUDED_SIGMA`).
    sigma: bool = False
    #: The calendar written beside this mosaic, if any.
    calendar: CalendarSpec | None = None
    #: "mosaic" (a time axis of acquisition days) or "calendar" (regular steps, tiler.calendar).
    product: str = "mosaic"

    @property
    def epsg(self) -> int:
        return self.grid.epsg

    @property
    def calendar_url(self) -> str | None:
        """The calendar store beside this mosaic (same folder), if the template asked for one."""
        if self.calendar is None:
            return None
        return f"{self.url.rstrip('/').rsplit('/', 1)[0]}/{self.calendar.store}"


@dataclass(frozen=True)
class CalendarSpec:
    """A mosaic's calendar: the store's name beside the mosaic, and its cadence (tiler.calendar)."""

    store: str
    cadence: str

    def to_attrs(self) -> str:
        return json.dumps({"store": self.store, "cadence": self.cadence})

    @classmethod
    def from_attrs(cls, text: str) -> CalendarSpec:
        fields = json.loads(text)
        return cls(store=str(fields["store"]), cadence=str(fields["cadence"]))


def calendar_store_name(mosaic_url: str) -> str:
    """The calendar's store name beside a mosaic: ``mosaic_32631.zarr`` -> ``calendar_32631.zarr``."""
    name = mosaic_url.rstrip("/").rsplit("/", 1)[-1]
    stem = name.removesuffix(".zarr")
    return (
        f"calendar_{stem.removeprefix('mosaic_')}.zarr"
        if stem.startswith("mosaic_")
        else f"{stem}_calendar.zarr"
    )


@dataclass(frozen=True)
class RegionSummary:
    """What one :func:`write_mosaic_region` call did."""

    key: str
    tiles: tuple[str, ...]
    dates_written: int
    bytes_written: int
    seconds: float
    skipped: bool = False


TimeLike = str | date | datetime | np.datetime64


def _as_day(value: TimeLike) -> np.datetime64:
    if isinstance(value, datetime):
        value = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    return np.datetime64(value, "D")  # type: ignore[call-overload]  # numpy stubs lack (date, unit)


def campaign_times(start: TimeLike, end: TimeLike) -> np.ndarray:
    """The time axis of a campaign's mosaics: every UTC day from ``start`` to ``end`` inclusive.

    Fixed from the campaign's period alone, so each zone's template can be written before any tile is
    fitted, and every tile date of the campaign falls on it. Returns ``datetime64[ns]`` at 00:00 UTC.
    """
    first, last = _as_day(start), _as_day(end)
    if last < first:
        raise MosaicError(f"campaign period {first} .. {last}: the end is before the start; swap them")
    n_days = int((last - first) // DAY) + 1
    if n_days > MAX_TIME_AXIS_DAYS:
        raise MosaicError(
            f"campaign period {first} .. {last} is {n_days} days, more than the {MAX_TIME_AXIS_DAYS} a "
            "mosaic's time axis holds; split the campaign into shorter periods"
        )
    return (first + np.arange(n_days) * DAY).astype("datetime64[ns]")


def _time_axis(mosaic_url: str, times: Sequence[TimeLike] | np.ndarray) -> np.ndarray:
    values = np.asarray(times)
    days = (
        values.astype("datetime64[D]")
        if np.issubdtype(values.dtype, np.datetime64)
        else np.array([_as_day(t) for t in values.tolist()], dtype="datetime64[D]")
    )
    if days.size == 0:
        raise MosaicError(f"mosaic {mosaic_url!r}: the time axis is empty; pass campaign_times(start, end)")
    if np.unique(days).size != days.size:
        raise MosaicError(
            f"mosaic {mosaic_url!r}: the time axis holds a day twice ({_duplicate_days(days)}); the "
            "axis is by UTC day: pass each day once"
        )
    if days.size > MAX_TIME_AXIS_DAYS:
        raise MosaicError(
            f"mosaic {mosaic_url!r}: a time axis of {days.size} days is longer than the "
            f"{MAX_TIME_AXIS_DAYS} a mosaic holds; split the campaign into shorter periods"
        )
    return np.sort(days).astype("datetime64[ns]")


def init_mosaic_template(
    mosaic_url: str,
    keys: Iterable[str],
    times: Sequence[TimeLike] | np.ndarray,
    bands: Sequence[str],
    *,
    size: tuple[int, int] = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    resolution: float = DEFAULT_RESOLUTION,
    ramp: Ramp = "cosine",
    storage_options: StorageOptions = None,
    resume: bool = False,
    overwrite: bool = False,
    layout: Layout = "sharded",
    sigma: bool = False,
    cadence: str | None = None,
) -> MosaicInfo:
    """Write a zone's mosaic template from the plan: no fitted tile is read.

    ``keys`` are the planned tile ids of one UTM zone (the regions finalize expects; pass the whole
    plan so that cells of failed tiles still get their neighbours' overlaps), ``times`` the time axis
    (a campaign passes :func:`campaign_times` of its period; any dates are taken by UTC day, sorted),
    ``bands`` the band list every fitted tile will have. Writes metadata and coordinates only, in time
    independent of the number of fitted tiles. An existing store is refused unless ``overwrite``
    (replace it) or ``resume`` (keep it if its template is the same, so regions already written stay;
    a different template is refused with :class:`OutputExistsError`).

    ``sigma``: the mosaic gets a ``s2_declouded_sigma`` variable (the fit's σ blended like the
    reflectance; tiles without σ give "unknown", 65535). ``cadence`` (tiler.calendar: "10D", "1MS", ...):
    a calendar store is written beside the mosaic (:func:`calendar_store_name`), on regular steps over the
    time axis' first to last day, each region filling its cell of both. A bad cadence is refused with
    :class:`tiler.calendar.CalendarError` before anything is written.
    """
    if cadence is not None:
        cadence = check_cadence(cadence)
    if layout not in LAYOUTS:
        raise MosaicError(f"mosaic {mosaic_url!r}: layout {layout!r} is not one of {LAYOUTS}")
    key_tiles = list(
        _parse_tile_ids(dict.fromkeys(keys, ""), size=size, overlap=overlap, resolution=resolution)
    )
    if not key_tiles:
        raise MosaicError(f"mosaic {mosaic_url!r}: no region keys given; pass the zone's planned tile ids")
    grid = MosaicGrid.covering(key_tiles, ramp=ramp)  # refuses keys of another zone, naming them
    band_list = tuple(str(b) for b in bands)
    if not band_list or len(set(band_list)) != len(band_list):
        raise MosaicError(
            f"mosaic {mosaic_url!r}: bands {list(band_list)} must be a non-empty list without repeats"
        )
    day_axis = _time_axis(mosaic_url, times)
    spec = CalendarSpec(calendar_store_name(mosaic_url), cadence) if cadence is not None else None
    steps = calendar_steps(day_axis[0], day_axis[-1], cadence) if cadence is not None else None
    if spec is not None and layout != "sharded":
        raise CalendarError(f"mosaic {mosaic_url!r}: a calendar needs the sharded layout, not {layout!r}")
    status = tile_status(mosaic_url, storage_options)
    if status != "missing":
        if not (resume or overwrite):
            raise OutputExistsError(
                f"mosaic {mosaic_url!r} already exists ({status}); pass resume (keep written regions) or "
                "overwrite (CLI: --resume / --overwrite)"
            )
        if resume and not overwrite:
            existing = mosaic_info(mosaic_url, storage_options=storage_options)
            same = (
                existing.grid == grid
                and existing.bands == band_list
                and np.array_equal(np.array(existing.times, dtype="datetime64[ns]"), day_axis)
                and existing.layout == layout
                and existing.n_regions == len(set(key_tiles))
                and existing.sigma == sigma
                and existing.calendar == spec
            )
            if same:
                return existing
            raise OutputExistsError(
                f"mosaic {mosaic_url!r} exists with another template (grid, bands, dates, layout, σ or "
                "calendar differ from these); resume needs the same plan: pass overwrite to start it again"
            )
        if status == "complete":  # a delete cut short must not leave a "complete" flag on half a store
            _set_status(mosaic_url, STATUS_WRITING, storage_options)
        with contextlib.suppress(MosaicError):
            # The calendar the old template had goes with it (a new one, if any, is written below).
            old_calendar = mosaic_info(mosaic_url, storage_options=storage_options).calendar_url
            if old_calendar is not None and tile_status(old_calendar, storage_options) != "missing":
                _set_status(old_calendar, STATUS_WRITING, storage_options)
                old_fs, old_path = fsspec.core.url_to_fs(old_calendar, **dict(storage_options or {}))
                old_fs.rm(old_path, recursive=True)
        fs, path = fsspec.core.url_to_fs(mosaic_url, **dict(storage_options or {}))
        fs.rm(path, recursive=True)

    info = MosaicInfo(
        mosaic_url,
        grid,
        tuple(day_axis),
        band_list,
        STATUS_WRITING,
        len(set(key_tiles)),
        layout,
        sigma=sigma,
        calendar=spec,
    )
    if steps is not None and info.calendar_url is not None:
        # The calendar first: a mosaic template that exists always has its calendar beside it.
        calendar_url = info.calendar_url
        if tile_status(calendar_url, storage_options) != "missing":
            _set_status(calendar_url, STATUS_WRITING, storage_options)
            fs, path = fsspec.core.url_to_fs(calendar_url, **dict(storage_options or {}))
            fs.rm(path, recursive=True)
        calendar = _template(
            grid, steps.times, band_list, key_tiles, layout, sigma=sigma, product="calendar", steps=steps
        )
        calendar.attrs["calendar_of"] = mosaic_url.rstrip("/").rsplit("/", 1)[-1]
        _write_template(
            calendar_url,
            calendar,
            _encoding(grid, len(band_list), steps.starts.size, layout, sigma=sigma, calendar=True),
            storage_options,
        )
    template = _template(grid, day_axis, band_list, key_tiles, layout, sigma=sigma)
    if spec is not None:
        template.attrs[CALENDAR_ATTR] = spec.to_attrs()
    _write_template(
        mosaic_url,
        template,
        _encoding(grid, len(band_list), day_axis.size, layout, sigma=sigma),
        storage_options,
    )
    return info


def _write_template(
    url: str, template: xr.Dataset, encoding: dict[str, dict[str, Any]], storage_options: StorageOptions
) -> None:
    # As the tile store does: without a ``grid_mapping`` encoding, xarray lists ``spatial_ref`` in each
    # variable's ``coordinates``, so plain ``xr.open_zarr`` brings it back as a coordinate and
    # rioxarray finds the CRS.
    for variable in template.variables.values():
        variable.encoding = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*vlen-utf8.*")
        # The imagery, quality and region arrays are lazy placeholders of one dask chunk each:
        # compute=False writes their metadata only, whatever the zone's size.
        template.to_zarr(
            url,
            mode="w",
            compute=False,
            zarr_format=3,
            consolidated=True,
            encoding=encoding,
            storage_options=dict(storage_options) if storage_options else None,
        )


def init_mosaic(
    mosaic_url: str,
    tiles: Mapping[str, str],
    *,
    keys: Iterable[str] | None = None,
    size: tuple[int, int] = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    resolution: float = DEFAULT_RESOLUTION,
    ramp: Ramp = "cosine",
    storage_options: StorageOptions = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    layout: Layout = "sharded",
    sigma: bool | None = None,
    cadence: str | None = None,
) -> MosaicInfo:
    """Write the template of a zone's mosaic from fitted tiles: their days' union and their bands.

    ``tiles`` maps grid tile ids to fitted tile store URLs (all of one UTM zone); every tile is checked
    (complete, fitted, same bands, on the grid) and its dates join the time axis. ``keys`` are the tile
    ids whose cells the mosaic will hold (the regions finalize expects); default: the ids of ``tiles``.
    Pass the whole campaign's ids as ``keys`` so that cells of failed tiles still get their neighbours'
    overlaps. An existing store is refused unless ``overwrite`` (replace it) or ``resume`` (keep it if
    its template matches, so regions already written stay). This reads every tile, one after the
    other: a campaign writes its templates with :func:`init_mosaic_template` from the plan instead.
    ``sigma``: write the fit's σ (default: when any of the tiles has it); ``cadence``: a calendar beside
    the mosaic over the tiles' first to last day (:func:`init_mosaic_template`).
    """
    if cadence is not None:
        cadence = check_cadence(cadence)
    parsed = _parse_tile_ids(tiles, size=size, overlap=overlap, resolution=resolution)
    key_tiles = (
        list(parsed)
        if keys is None
        else list(_parse_tile_ids({k: "" for k in keys}, size=size, overlap=overlap, resolution=resolution))
    )
    MosaicGrid.covering([*key_tiles, *parsed])  # refuses tiles or keys of another zone, naming them
    status = tile_status(mosaic_url, storage_options)
    if status != "missing" and not (resume or overwrite):  # refuse before reading any tile
        raise OutputExistsError(
            f"mosaic {mosaic_url!r} already exists ({status}); pass resume (keep written regions) or "
            "overwrite (CLI: --resume / --overwrite)"
        )
    fitted = []
    for done, (tile, url) in enumerate(sorted(parsed.items(), key=lambda item: item[0].tile_id)):
        fitted.append(read_fitted_tile(tile, url, storage_options=storage_options))
        if progress is not None:
            progress(done + 1, len(parsed), f"checked {tile.tile_id}")
    if not fitted:
        raise MosaicError(f"mosaic {mosaic_url!r}: no fitted tiles given; nothing to mosaic")
    bands = fitted[0].bands
    for item in fitted:
        if item.bands != bands:
            raise TileMismatchError(
                f"tile {item.tile.tile_id!r}: bands {list(item.bands)} differ from tile "
                f"{fitted[0].tile.tile_id!r}'s {list(bands)}; a mosaic needs one band list: refit or "
                "leave the tile out"
            )
    days = np.array(sorted({d for item in fitted for d in item.days}), dtype=np.int64)
    times = (days * DAY + np.datetime64(0, "D")).astype("datetime64[ns]")
    try:
        return init_mosaic_template(
            mosaic_url,
            [t.tile_id for t in key_tiles],
            times,
            bands,
            size=size,
            overlap=overlap,
            resolution=resolution,
            ramp=ramp,
            storage_options=storage_options,
            resume=resume,
            overwrite=overwrite,
            layout=layout,
            sigma=any(item.has_sigma for item in fitted) if sigma is None else sigma,
            cadence=cadence,
        )
    except OutputExistsError as err:
        if "another template" not in str(err):
            raise
        raise OutputExistsError(
            f"mosaic {mosaic_url!r} exists with another template (grid, bands or dates differ from "
            "these tiles); resume needs the same tiles: pass overwrite to start it again"
        ) from None


def _template(
    grid: MosaicGrid,
    times: np.ndarray,
    bands: Sequence[str],
    keys: Sequence[TileRef],
    layout: Layout,
    *,
    sigma: bool = False,
    product: str = "mosaic",
    steps: CalendarSteps | None = None,
) -> xr.Dataset:
    y, x = grid.coords()
    height, width = grid.shape
    n_time, n_band = times.size, len(bands)
    expected = np.zeros((grid.n_rows, grid.n_cols), dtype=np.uint8)
    rows = [grid.cell_index(tile) for tile in keys]
    expected[tuple(np.array(rows).T)] = 1
    cells = (grid.n_rows, grid.n_cols)
    ds = xr.Dataset(
        {
            DECLOUDED: (
                ("time", "band", "y", "x"),
                da.zeros((n_time, n_band, height, width), dtype=np.uint16, chunks=-1),
            ),
            QUALITY: (
                ("time", "y", "x"),
                da.full((n_time, height, width), QUALITY_NODATA, dtype=np.uint16, chunks=-1),
            ),
            REGION_EXPECTED: (("cell_row", "cell_col"), expected),
            REGION_WRITTEN: (("cell_row", "cell_col"), da.zeros(cells, dtype=np.uint8, chunks=-1)),
            REGION_DAYS: (
                ("cell_row", "cell_col", "time"),
                da.zeros((*cells, n_time), dtype=np.uint8, chunks=-1),
            ),
        },
        coords={"time": times, "band": np.array(list(bands), dtype=object), "y": y, "x": x},
        attrs={
            STATUS_ATTR: STATUS_WRITING,
            "epsg": grid.epsg,
            GRID_ATTR: grid.to_attrs(),
            DATES_ATTR: json.dumps([str(d) for d in times.astype("datetime64[D]")]),
            BANDS_ATTR: json.dumps(list(bands)),
            LAYOUT_ATTR: layout,
            "mosaic_version": MOSAIC_VERSION,
            "software_version": _software_version(),
            "time_rule": (
                "UTC days fixed by the template (a campaign: every day of its period); a tile date "
                "maps to its day; nodata (0) where no covering tile has the day"
            ),
        },
    )
    ds[DECLOUDED].attrs.update(
        units="1", scale_factor_note="reflectance x 10000", nodata=S2_NODATA, blend=f"{grid.ramp} ramps"
    )
    ds[QUALITY].attrs.update(
        units="days",
        long_name="days to the nearest date the pixel was observed clear (0: observed clear)",
        flag_values=[QUALITY_NODATA - 1, QUALITY_NODATA],
        flag_meanings="never_observed_clear no_imagery",
    )
    ds.attrs[PRODUCT_ATTR] = product
    ds.attrs[SIGMA_ATTR] = "true" if sigma else "false"
    if sigma:
        ds[DECLOUDED_SIGMA] = (
            ("time", "band", "y", "x"),
            da.full((n_time, n_band, height, width), SIGMA_NODATA, dtype=np.uint16, chunks=-1),
        )
        ds[DECLOUDED_SIGMA].attrs.update(
            units="1",
            scale_factor_note="reflectance x 10000",
            long_name="predicted standard deviation of s2_declouded's error (0: observed as is)",
            nodata=SIGMA_NODATA,
            propagation=(
                "sum of the normalised blend weights times the tiles' sigma (errors of overlapping fits "
                "taken as fully correlated: an upper bound); 65535 where a tile with weight has none"
            ),
        )
    if steps is not None:
        ds.attrs.update(
            calendar_cadence=steps.cadence,
            time_rule=(
                f"regular steps of {steps.cadence} (pandas date_range, first step rolled back onto the "
                "offset): time = the bin's start; the value estimates the bin's centre (docs/tiler.md)"
            ),
        )
        ds["time"].attrs["bounds"] = TIME_BOUNDS
        ds[TIME_BOUNDS] = (("time", "nv"), steps.bounds)
        ds[TIME_BOUNDS].attrs["long_name"] = "bin start and exclusive end of each step"
        ds[CALENDAR_SOURCE] = (
            ("time", "y", "x"),
            da.zeros((n_time, height, width), dtype=np.uint8, chunks=-1),
        )
        ds[CALENDAR_SOURCE].attrs.update(
            long_name="where the step's value comes from",
            flag_values=[0, 1, 2, 3],
            flag_meanings=SOURCE_MEANINGS,
        )
        ds[QUALITY].attrs["long_name"] = (
            "days from the step's bin to the nearest date the pixel was observed clear (0: inside the bin)"
        )
    ds[REGION_EXPECTED].attrs["long_name"] = "cells of the campaign's tiles (1), north-up"
    ds[REGION_WRITTEN].attrs["long_name"] = "cells whose region is written (1), north-up"
    ds[REGION_DAYS].attrs["long_name"] = "days on which the cell has imagery (1), north-up"
    if steps is not None:
        # A cell with data has it at every step: the outputs write every step, no per-cell day vector.
        ds = ds.drop_vars(REGION_DAYS)
    return georeference(ds, grid.epsg)


def _encoding(
    grid: MosaicGrid, n_band: int, n_time: int, layout: Layout, *, sigma: bool = False, calendar: bool = False
) -> dict[str, dict[str, Any]]:
    cell_h, cell_w = grid.cell_shape
    sharded = layout == "sharded"
    extra: dict[str, dict[str, Any]] = {}
    if sigma:
        extra[DECLOUDED_SIGMA] = {
            "chunks": (1, n_band, cell_h, cell_w),
            **({"shards": (n_time, n_band, cell_h, cell_w)} if sharded else {}),
            "compressors": (MOSAIC_COMPRESSOR,),
            "fill_value": SIGMA_NODATA,
        }
    if calendar:
        extra[CALENDAR_SOURCE] = {
            "chunks": (1, cell_h, cell_w),
            **({"shards": (n_time, cell_h, cell_w)} if sharded else {}),
            "compressors": (MOSAIC_COMPRESSOR,),
            "fill_value": 0,
        }
    encoding = extra | {
        DECLOUDED: {
            "chunks": (1, n_band, cell_h, cell_w),
            **({"shards": (n_time, n_band, cell_h, cell_w)} if sharded else {}),
            "compressors": (MOSAIC_COMPRESSOR,),
            "fill_value": S2_NODATA,
        },
        QUALITY: {
            "chunks": (1, cell_h, cell_w),
            **({"shards": (n_time, cell_h, cell_w)} if sharded else {}),
            "compressors": (MOSAIC_COMPRESSOR,),
            "fill_value": QUALITY_NODATA,
        },
        REGION_EXPECTED: {"chunks": (grid.n_rows, grid.n_cols), "fill_value": 0},
        REGION_WRITTEN: {"chunks": (1, 1), "fill_value": 0},
        REGION_DAYS: {"chunks": (1, 1, n_time), "compressors": (MOSAIC_COMPRESSOR,), "fill_value": 0},
    }
    if calendar:
        del encoding[REGION_DAYS]
        for variable in encoding.values():
            if sharded and len(variable.get("chunks", ())) >= 3:
                plane = variable["chunks"][1:]
                k = _steps_per_chunk(n_time, int(np.prod(plane)) * 2)
                variable["chunks"] = (k, *plane)
    return encoding


def _steps_per_chunk(n_steps: int, step_bytes: int) -> int:
    """Steps per inner chunk of a calendar's shard: the most that divide the steps and stay within
    :data:`CALENDAR_CHUNK_BYTES` (one step where a step alone is that big: a full cell's step is 5 MB)."""
    fitting = max(1, CALENDAR_CHUNK_BYTES // max(step_bytes, 1))
    return max(k for k in range(1, min(fitting, n_steps) + 1) if n_steps % k == 0)


def _software_version() -> str:
    from campaign import __version__

    return __version__


def mosaic_info(mosaic_url: str, *, storage_options: StorageOptions = None) -> MosaicInfo:
    """Read a mosaic's metadata (any status; one small read); raise :class:`MosaicError` if none is there."""
    status = tile_status(mosaic_url, storage_options)
    if status == "missing":
        raise MosaicError(
            f"mosaic {mosaic_url!r}: no store there; run init_mosaic (or declouder mosaic) first"
        )
    group = zarr.open_group(zarr_store(mosaic_url, storage_options), mode="r")
    attrs = group.attrs
    if GRID_ATTR not in attrs:
        raise MosaicError(
            f"mosaic {mosaic_url!r}: the store there is not a declouder mosaic (no {GRID_ATTR!r})"
        )
    return MosaicInfo(
        url=mosaic_url,
        grid=MosaicGrid.from_attrs(str(attrs[GRID_ATTR])),
        times=tuple(
            np.array(json.loads(str(attrs[DATES_ATTR])), dtype="datetime64[D]").astype("datetime64[ns]")
        ),
        bands=tuple(json.loads(str(attrs[BANDS_ATTR]))),
        status=str(attrs.get(STATUS_ATTR)),
        n_regions=int(np.asarray(zarr_array(group, REGION_EXPECTED)[...]).sum()),
        layout=cast(Layout, str(attrs.get(LAYOUT_ATTR, "chunked"))),
        days_with_data=(
            tuple(
                np.array(json.loads(str(attrs[DAYS_WITH_DATA_ATTR])), dtype="datetime64[D]").astype(
                    "datetime64[ns]"
                )
            )
            if DAYS_WITH_DATA_ATTR in attrs
            else None
        ),
        sigma=str(attrs.get(SIGMA_ATTR, "false")) == "true",
        calendar=CalendarSpec.from_attrs(str(attrs[CALENDAR_ATTR])) if CALENDAR_ATTR in attrs else None,
        product=str(attrs.get(PRODUCT_ATTR, "mosaic")),
    )


def write_mosaic_region(
    mosaic_url: str,
    key: str | TileRef,
    tiles: Mapping[str, str],
    *,
    storage_options: StorageOptions = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RegionSummary:
    """Blend and write the cell of tile ``key``: its own tile and the neighbours' overlaps reaching in.

    ``tiles`` maps tile ids to fitted tile store URLs; only the (up to four) tiles that reach into the
    cell are opened, so the whole campaign's mapping can be passed to every task. A tile absent from it
    (a failed fit) simply contributes nothing. Every date of a contributing tile must be a day of the
    mosaic's time axis. Only the days on which a contributing tile has a date are computed and written,
    all into the cell's one shard per variable (a day without data stays unstored: fill value 0). A
    region already written is refused unless ``resume`` (skip it) or ``overwrite`` (write it again,
    clearing the days it no longer has). Safe to run in parallel with other keys, in any order.
    """
    started = time.perf_counter()
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    if info.product != "mosaic":
        raise MosaicError(
            f"store {mosaic_url!r} is a {info.product}: regions are written through its mosaic "
            f"({info.url.rstrip('/').rsplit('/', 1)[0]}/…), which fills both"
        )
    grid = info.grid
    key_id = key.tile_id if isinstance(key, TileRef) else key
    cell = _key_tile(key_id, grid)
    group = zarr.open_group(zarr_store(mosaic_url, storage_options), mode="r+")
    i, j = grid.cell_index(cell)
    written = bool(zarr_array(group, REGION_WRITTEN)[i, j])
    rewrite = info.status == STATUS_COMPLETE or written
    if rewrite:
        if resume and not overwrite:
            return RegionSummary(key_id, (), 0, 0, time.perf_counter() - started, skipped=True)
        if not overwrite:
            raise OutputExistsError(
                f"mosaic {mosaic_url!r}: region {key_id!r} is already written; pass resume (skip it) or "
                "overwrite (write it again)"
            )
    if info.status == STATUS_COMPLETE:
        # Rewriting a finished mosaic: it must stop looking finished until finalize runs again.
        _set_status(mosaic_url, STATUS_WRITING, storage_options)
        if info.calendar_url is not None:
            _set_status(info.calendar_url, STATUS_WRITING, storage_options)

    contributors = _contributors(cell, grid, tiles, info, storage_options)
    y_cell, x_cell = grid.cell_window(cell)
    cell_h, cell_w = grid.cell_shape
    n_band = len(info.bands)
    axis_days = np.array(info.times, dtype="datetime64[D]").astype(np.int64)
    day_index = {int(d): t for t, d in enumerate(axis_days)}
    for item in contributors:
        missing = [d for d in item.tile.days if d not in day_index]
        if missing:
            raise TileMismatchError(
                f"tile {item.tile.tile.tile_id!r}: date {np.datetime64(missing[0], 'D')} is not on the "
                f"time axis of mosaic {mosaic_url!r} ({np.datetime64(int(axis_days[0]), 'D')} .. "
                f"{np.datetime64(int(axis_days[-1]), 'D')}, {axis_days.size} days): the tile holds a date "
                "outside the campaign period, or was refitted after init_mosaic; write the template "
                "again with overwrite over a time axis that holds it"
            )
    # Only the days some contributor has: on a campaign's day axis most days of a cell are empty.
    present = sorted({d for item in contributors for d in item.tile.days})
    positions = [day_index[d] for d in present]
    present_index = {d: k for k, d in enumerate(present)}
    imagery = zarr_array(group, DECLOUDED)
    quality_array = zarr_array(group, QUALITY)
    region_days = zarr_array(group, REGION_DAYS) if REGION_DAYS in group else None
    imagery_writer = _CellWriter(imagery, (slice(None), y_cell, x_cell))
    quality_writer = _CellWriter(quality_array, (y_cell, x_cell))
    if rewrite and imagery.shards is None:
        # Chunked layout: days the old write had and this one does not must not keep the old values
        # (a sharded cell is replaced whole by its one shard write).
        before = (
            np.flatnonzero(np.asarray(region_days[i, j, :]))
            if region_days is not None
            else np.arange(axis_days.size)
        )
        stale = sorted(set(before.tolist()) - set(positions))
        _fill_days(imagery, stale, (slice(None), y_cell, x_cell))
        _fill_days(quality_array, stale, (y_cell, x_cell))

    sigma_writer = (
        _CellWriter(zarr_array(group, DECLOUDED_SIGMA), (slice(None), y_cell, x_cell)) if info.sigma else None
    )
    # With a calendar, the cell's blended series stays in memory for it (no re-read of the shard).
    series_shape = (len(present), n_band, cell_h, cell_w)
    series = np.zeros(series_shape, dtype=np.uint16) if info.calendar is not None else None
    sigma_series = np.zeros(series_shape, dtype=np.uint16) if series is not None and info.sigma else None

    clear = np.zeros((len(present), cell_h, cell_w), dtype=bool)
    covered = np.zeros_like(clear)
    for item in contributors:
        item.add_clear(clear, present_index)
    has_data = np.zeros(len(present), dtype=bool)
    for k0 in range(0, len(present), DATES_PER_BATCH):
        batch = present[k0 : k0 + DATES_PER_BATCH]
        span = slice(k0, k0 + len(batch))
        total = np.zeros((len(batch), n_band, cell_h, cell_w), dtype=np.float32)
        weight = np.zeros_like(total)
        sigma_total = np.zeros_like(total) if sigma_writer is not None else None
        sigma_unknown = np.zeros(total.shape, dtype=bool) if sigma_writer is not None else None
        for item in contributors:
            item.add_weighted(batch, total, weight, sigma_total, sigma_unknown)
        has = weight > 0
        np.divide(total, weight, out=total, where=has)  # renormalise: weights of valid tiles sum to one
        out = np.rint(total, out=total).astype(np.uint16)  # 0 (nodata) where no tile has data
        del total
        if sigma_writer is not None and sigma_total is not None and sigma_unknown is not None:
            # σ = Σ ŵ_i σ_i with the same renormalised weights (fully correlated fits: an upper bound).
            np.divide(sigma_total, weight, out=sigma_total, where=has)
            sigma_out = np.where(
                has & ~sigma_unknown, np.minimum(np.rint(sigma_total), SIGMA_MAX), SIGMA_NODATA
            ).astype(np.uint16)
            del sigma_total, sigma_unknown
            sigma_writer.add(positions[span], sigma_out)
            if sigma_series is not None:
                sigma_series[span] = sigma_out
        del weight
        if series is not None:
            series[span] = out
        covered[span] = has.any(axis=1)
        has_data[span] = has.any(axis=(1, 2, 3))
        imagery_writer.add(positions[span], out)
        if progress is not None:
            progress(k0 + len(batch), len(present), f"region {key_id}")
    imagery_writer.commit()
    if sigma_writer is not None:
        sigma_writer.commit()

    if present:
        quality = clear_distance_days(clear & covered, np.array(present, dtype=np.int64), covered=covered)
        quality_writer.add(positions, quality)
    quality_writer.commit()
    if series is not None:
        _write_calendar_cell(info, cell, series, sigma_series, clear & covered, present, storage_options)
        del series, sigma_series
    if region_days is not None:
        days_vector = np.zeros(axis_days.size, dtype=np.uint8)
        days_vector[np.array(positions, dtype=np.int64)[has_data]] = 1
        region_days[i, j, :] = days_vector
    zarr_array(group, REGION_WRITTEN)[i, j] = 1
    dates_written = int(has_data.sum())
    return RegionSummary(
        key=key_id,
        tiles=tuple(item.tile.tile.tile_id for item in contributors),
        dates_written=dates_written,
        bytes_written=dates_written * n_band * cell_h * cell_w * np.dtype(np.uint16).itemsize,
        seconds=time.perf_counter() - started,
    )


def _write_calendar_cell(
    info: MosaicInfo,
    cell: TileRef,
    series: np.ndarray,
    sigma: np.ndarray | None,
    clear: np.ndarray,
    present: Sequence[int],
    storage_options: StorageOptions,
) -> None:
    """Resample a region's blended series onto the calendar and write the cell's calendar shards."""
    url = info.calendar_url
    assert url is not None and info.calendar is not None
    axis = np.array(info.times, dtype="datetime64[D]")
    steps = calendar_steps(axis[0], axis[-1], info.calendar.cadence)
    group = zarr.open_group(zarr_store(url, storage_options), mode="r+")
    imagery = zarr_array(group, DECLOUDED)
    if imagery.shape[0] != steps.starts.size:
        raise MosaicError(
            f"calendar {url!r} has {imagery.shape[0]} steps, its mosaic's period and cadence "
            f"{info.calendar.cadence} give {steps.starts.size}: write the template again (overwrite)"
        )
    result = resample_calendar(series, np.array(present, dtype=np.int64), steps, clear=clear, sigma=sigma)
    y_cell, x_cell = info.grid.cell_window(cell)
    layers: list[tuple[str, np.ndarray | None, tuple[slice, ...]]] = [
        (DECLOUDED, result.values, (slice(None), slice(None), y_cell, x_cell)),
        (QUALITY, result.clear_distance, (slice(None), y_cell, x_cell)),
        (CALENDAR_SOURCE, result.source, (slice(None), y_cell, x_cell)),
    ]
    if info.sigma:
        layers.append((DECLOUDED_SIGMA, result.sigma, (slice(None), slice(None), y_cell, x_cell)))
    for name, values, window in layers:
        if values is None:
            continue
        # All steps of the cell are exactly one shard: zarr encodes it whole and puts it in one write
        # (nothing read back); a shard holding only the fill value is not stored (an earlier one goes).
        zarr_array(group, name)[window] = values
    i, j = info.grid.cell_index(cell)
    zarr_array(group, REGION_WRITTEN)[i, j] = 1


class _CellWriter:
    """Writes one cell's dates of an imagery or quality array in as few store writes as memory allows.

    Sharded layout: the dates are staged in an in-memory copy of the cell's shard (same codecs), in
    spans of consecutive days of at most :data:`REGION_WRITE_BUDGET_BYTES`, and :meth:`commit` puts
    the finished shard object into the store once (or deletes it when the cell has no data), replacing
    whatever an earlier write of the region left there. Days not given stay the fill value, which zarr
    does not store. Chunked layout (version 1): dates are written straight into their chunks.
    """

    def __init__(self, array: zarr.Array, window: tuple[slice, ...]) -> None:
        self.array = array
        self.window = window
        self.plane_shape = tuple(
            (s.stop - s.start) if s.start is not None else array.shape[k + 1] for k, s in enumerate(window)
        )
        self.dtype = np.dtype(array.dtype)
        self.fill = array.fill_value
        plane_bytes = int(np.prod(self.plane_shape)) * self.dtype.itemsize
        self.span_days = max(1, REGION_WRITE_BUDGET_BYTES // plane_bytes)
        self.shards = array.shards
        self.stage: zarr.Array | None = None
        if self.shards is not None:
            if tuple(self.shards) != (array.shape[0], *self.plane_shape):
                raise MosaicError(
                    f"mosaic array {array.path!r}: shards {self.shards} are not one cell with all dates "
                    f"({(array.shape[0], *self.plane_shape)}); rewrite the template"
                )
            self.stage = zarr.create_array(
                zarr.storage.MemoryStore(),
                shape=tuple(self.shards),
                chunks=array.chunks,
                shards=tuple(self.shards),
                dtype=array.dtype,
                fill_value=array.fill_value,
                compressors=array.compressors,
                filters=array.filters,
                serializer=array.serializer or "auto",
            )
        self.span_start = 0
        self.span: np.ndarray | None = None
        self.last = -1
        self.positions: list[int] = []
        self.planes: list[np.ndarray] = []
        self.nbytes = 0

    def add(self, positions: Sequence[int], values: np.ndarray) -> None:
        """Days ``positions`` (increasing, after any given before) of the time axis get ``values``."""
        if self.stage is None:
            self.positions.extend(positions)
            self.planes.append(values)
            self.nbytes += values.nbytes
            if self.nbytes >= REGION_WRITE_BUDGET_BYTES:
                self._flush()
            return
        for position, plane in zip(positions, values, strict=True):
            if self.span is None or position >= self.span_start + self.span.shape[0]:
                self._flush()
                length = min(self.span_days, self.array.shape[0] - position)
                self.span_start = position
                self.span = (
                    np.zeros((length, *self.plane_shape), self.dtype)  # untouched pages cost nothing
                    if self.fill == 0
                    else np.full((length, *self.plane_shape), self.fill, self.dtype)
                )
            self.span[position - self.span_start] = plane
            self.last = position

    def _flush(self) -> None:
        if self.stage is not None:
            if self.span is not None:
                used = self.last - self.span_start + 1
                self.stage[self.span_start : self.span_start + used] = self.span[:used]
                self.span = None
            return
        if self.positions:
            values = self.planes[0] if len(self.planes) == 1 else np.concatenate(self.planes)
            selection = cast("OrthogonalSelection", (list(self.positions), *self.window))
            self.array.set_orthogonal_selection(selection, values)
            self.positions, self.planes, self.nbytes = [], [], 0

    def commit(self) -> None:
        """Write what is pending; sharded: put the cell's shard into the store in one write."""
        self._flush()
        if self.stage is None or self.shards is None:
            return
        coords = tuple(
            (s.start or 0) // size
            for s, size in zip((slice(0, None), *self.window), self.shards, strict=True)
        )
        stage_key = self.stage.metadata.encode_chunk_key((0,) * len(coords))
        data = sync(self.stage.store.get(stage_key, default_buffer_prototype()))
        key = f"{self.array.path}/{self.array.metadata.encode_chunk_key(coords)}"
        if data is not None:
            sync(self.array.store.set(key, data))
        else:  # no data in this cell at all: nothing stored (an earlier write's shard goes)
            with contextlib.suppress(FileNotFoundError):
                sync(self.array.store.delete(key))


def _fill_days(array: zarr.Array, positions: Sequence[int], window: tuple[slice, ...]) -> None:
    """Set the days ``positions`` of one cell of a chunked array to its fill value (then not stored)."""
    if not positions:
        return
    writer = _CellWriter(array, window)
    shape = (1, *writer.plane_shape)
    for position in positions:
        writer.add([position], np.full(shape, array.fill_value, dtype=writer.dtype))
    writer.commit()


def _key_tile(key_id: str, grid: MosaicGrid) -> TileRef:
    try:
        cell = TileRef.from_id(key_id, size=grid.size, overlap=grid.overlap, resolution=grid.resolution)
    except ValueError as err:
        raise MosaicError(f"region key {key_id!r}: {err}") from err
    if cell.epsg != grid.epsg:
        raise TileMismatchError(
            f"region key {key_id!r} is in UTM zone EPSG:{cell.epsg}, the mosaic in EPSG:{grid.epsg}; "
            "write it into its own zone's mosaic"
        )
    if not grid.contains(cell):
        raise MosaicError(
            f"region key {key_id!r} lies outside the mosaic's cells (columns {grid.col0}.."
            f"{grid.col0 + grid.n_cols - 1}, rows {grid.row0}..{grid.row0 + grid.n_rows - 1}); include it in "
            "init_mosaic's keys"
        )
    return cell


@dataclass
class _Contributor:
    """A fitted tile's share of one cell: which pixels, with which weights, read from which arrays."""

    tile: FittedTile
    date_index: dict[int, int]
    # Slices of the cell (destination) and of the store's arrays (source).
    cell_rows: slice
    cell_cols: slice
    src_rows: slice
    src_cols: slice
    weights: np.ndarray
    group: zarr.Group

    def add_weighted(
        self,
        days: Sequence[int],
        total: np.ndarray,
        weight: np.ndarray,
        sigma_total: np.ndarray | None = None,
        sigma_unknown: np.ndarray | None = None,
    ) -> None:
        """Add this tile's weighted values (and weights) for the batch ``days`` to ``total``/``weight``;
        with ``sigma_total``, its weighted σ too, and where it has weight but no σ, ``sigma_unknown``."""
        positions = [k for k, day in enumerate(days) if day in self.date_index]
        if not positions:
            return
        indices = [self.date_index[days[k]] for k in positions]
        # One orthogonal selection: zarr fetches and decodes the dates' chunks concurrently.
        # zarr accepts a list of ints per dimension; its OrthogonalSelection type names only arrays.
        selection = cast("OrthogonalSelection", (indices, slice(None), self.src_rows, self.src_cols))
        values = cast(np.ndarray, zarr_array(self.group, DECLOUDED).get_orthogonal_selection(selection))
        sigmas = (
            cast(np.ndarray, zarr_array(self.group, DECLOUDED_SIGMA).get_orthogonal_selection(selection))
            if sigma_total is not None and self.tile.has_sigma
            else None
        )
        place = (slice(None), self.cell_rows, self.cell_cols)
        for n, (k, plane) in enumerate(zip(positions, values, strict=True)):
            valid = plane != S2_NODATA
            # Most planes have no nodata at all: then the weights broadcast over the bands as they are.
            w = self.weights if valid.all() else np.where(valid, self.weights, np.float32(0))
            total[(k, *place)] += plane * w
            weight[(k, *place)] += w
            if sigma_total is None or sigma_unknown is None:
                continue
            if sigmas is None:  # a tile fitted without σ: unknown wherever it carries weight
                sigma_unknown[(k, *place)] |= valid
                continue
            unknown = sigmas[n] == SIGMA_UNKNOWN
            sigma_total[(k, *place)] += np.where(unknown, np.float32(0), sigmas[n] * w)
            sigma_unknown[(k, *place)] |= unknown & valid

    def add_clear(self, clear: np.ndarray, day_index: Mapping[int, int]) -> None:
        """Mark, on the mosaic's dates, the pixels this tile saw clear."""
        masks = cast(
            np.ndarray,
            zarr_array(self.group, self.tile.mask_variable).get_orthogonal_selection(
                (slice(None), self.src_rows, self.src_cols)
            ),
        )
        for day, mask in zip(self.tile.days, masks, strict=True):
            clear[day_index[day], self.cell_rows, self.cell_cols] |= mask == MaskClass.CLEAR


def _contributors(
    cell: TileRef,
    grid: MosaicGrid,
    tiles: Mapping[str, str],
    info: MosaicInfo,
    storage_options: StorageOptions,
) -> list[_Contributor]:
    wanted = (
        {(cell.col - dc, cell.row - dr) for dc in (0, 1) for dr in (0, 1)}
        if grid.overlap
        else {(cell.col, cell.row)}
    )
    by_place: dict[tuple[int, int], tuple[str, str]] = {}
    for tile_id, url in tiles.items():
        try:
            tile = TileRef.from_id(tile_id, size=grid.size, overlap=grid.overlap, resolution=grid.resolution)
        except ValueError as err:
            raise TileMismatchError(f"tile {tile_id!r} ({url!r}): not a grid tile id: {err}") from err
        if tile.epsg == grid.epsg and (tile.col, tile.row) in wanted:
            by_place[(tile.col, tile.row)] = (tile_id, url)
    cminx, cminy, cmaxx, cmaxy = cell.cell_bounds
    res = grid.resolution
    contributors = []
    for (col, row), (_, url) in sorted(by_place.items()):
        tile = grid.tile(col, row)
        fitted, group = _open_fitted(tile, url, storage_options)
        if fitted.bands != info.bands:
            raise TileMismatchError(
                f"tile {tile.tile_id!r}: bands {list(fitted.bands)} differ from the mosaic's "
                f"{list(info.bands)}; a mosaic needs one band list: refit the tile or leave it out"
            )
        # The store's pixel extent in the zone CRS, clipped to the cell.
        minx, _, _, maxy = tile.bounds
        sx0 = minx + fitted.col_offset * res
        sy1 = maxy - fitted.row_offset * res
        x0, x1 = max(sx0, cminx), min(sx0 + fitted.width * res, cmaxx)
        y0, y1 = max(sy1 - fitted.height * res, cminy), min(sy1, cmaxy)
        if x1 <= x0 or y1 <= y0:
            continue
        src_cols = slice(round((x0 - sx0) / res), round((x1 - sx0) / res))
        src_rows = slice(round((sy1 - y1) / res), round((sy1 - y0) / res))
        cell_cols = slice(round((x0 - cminx) / res), round((x1 - cminx) / res))
        cell_rows = slice(round((cmaxy - y1) / res), round((cmaxy - y0) / res))
        nominal = blend_weights(tile, grid.ramp)
        weights = nominal[
            src_rows.start + fitted.row_offset : src_rows.stop + fitted.row_offset,
            src_cols.start + fitted.col_offset : src_cols.stop + fitted.col_offset,
        ].astype(np.float32)
        contributors.append(
            _Contributor(
                tile=fitted,
                date_index={d: k for k, d in enumerate(fitted.days)},
                cell_rows=cell_rows,
                cell_cols=cell_cols,
                src_rows=src_rows,
                src_cols=src_cols,
                weights=weights,
                group=group,
            )
        )
    return contributors


def finalize_mosaic(mosaic_url: str, *, storage_options: StorageOptions = None) -> MosaicInfo:
    """Check every expected region is written, then mark the mosaic complete.

    Raises :class:`MosaicIncompleteError` naming the regions still missing (the mosaic stays
    ``writing``: rerun their :func:`write_mosaic_region` and finalize again).
    """
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    group = zarr.open_group(zarr_store(mosaic_url, storage_options), mode="r")
    expected = cast(np.ndarray, zarr_array(group, REGION_EXPECTED)[...]).astype(bool)
    written = _written_cells(group)
    missing = np.argwhere(expected & ~written)
    if missing.size:
        grid = info.grid
        names = [grid.cell_tile(int(i), int(j)).tile_id for i, j in missing[:5]]
        more = f" and {len(missing) - len(names)} more" if len(missing) > len(names) else ""
        raise MosaicIncompleteError(
            f"mosaic {mosaic_url!r}: {len(missing)} of {int(expected.sum())} regions are not written "
            f"({', '.join(names)}{more}); run write_mosaic_region for them (the campaign resumes), "
            "then finalize again"
        )
    extra: dict[str, str] = {}
    if REGION_DAYS in group:
        # One concurrent read of every cell's small day vector: which days hold data anywhere.
        with_data = np.asarray(zarr_array(group, REGION_DAYS)[...]).any(axis=(0, 1))
        days = np.array(info.times, dtype="datetime64[D]")[with_data]
        extra[DAYS_WITH_DATA_ATTR] = json.dumps([str(d) for d in days])
    if info.calendar_url is not None:
        finalize_mosaic(info.calendar_url, storage_options=storage_options)
    _set_status(mosaic_url, STATUS_COMPLETE, storage_options, extra)
    return mosaic_info(mosaic_url, storage_options=storage_options)


def _written_cells(group: zarr.Group) -> np.ndarray:
    """``region_written`` as booleans, from one listing of its chunks (a region stores 1, and zarr
    stores no chunk equal to the fill value 0), instead of one read per cell of the zone."""
    array = zarr_array(group, REGION_WRITTEN)
    written = np.zeros(array.shape, dtype=bool)
    prefix = f"{array.path}/"

    async def keys() -> list[str]:
        return [key async for key in array.store.list_prefix(prefix)]

    for key in sync(keys()):
        parts = key[len(prefix) :].split("/")
        if parts[0] != "c" or len(parts) != 3:
            continue  # zarr.json
        written[int(parts[1]), int(parts[2])] = True
    return written


def _set_status(
    url: str, status: str, storage_options: StorageOptions, extra: Mapping[str, str] | None = None
) -> None:
    store = zarr_store(url, storage_options)
    group = zarr.open_group(store, mode="r+")
    group.attrs.update({STATUS_ATTR: status, **(extra or {})})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(store)


def open_mosaic(mosaic_url: str, *, storage_options: StorageOptions = None, chunks: Any = None) -> xr.Dataset:
    """Open a finished mosaic lazily (xarray + rioxarray ready); refuse one still being written.

    By default without dask (``chunks=None``): a selection reads only the chunks it needs, whatever the
    zone's size. A zone has one inner chunk per day and cell (60,040 cells × 365 days is 22 million),
    and a dask graph of that many blocks makes even a one-day read take minutes; pass ``chunks`` (as
    to ``xarray.open_zarr``) for dask arrays over a selection you make small first.
    """
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    if info.status != STATUS_COMPLETE:
        raise MosaicIncompleteError(
            f"mosaic {mosaic_url!r} is {info.status!r}, not complete: finish its regions and run "
            "finalize_mosaic (or rerun declouder mosaic with --resume)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        return xr.open_zarr(
            mosaic_url,
            zarr_format=3,
            chunks=chunks,
            storage_options=with_retries(mosaic_url, storage_options) or None,
        )


# --- All at once ----------------------------------------------------------------------------------------


def mosaic_tiles(
    out_url: str,
    tiles: Mapping[str, str] | Sequence[str],
    *,
    keys: Iterable[str] | None = None,
    size: tuple[int, int] = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    resolution: float = DEFAULT_RESOLUTION,
    ramp: Ramp = "cosine",
    storage_options: StorageOptions = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    cadence: str | None = None,
) -> dict[int, MosaicInfo]:
    """Mosaic fitted tiles into one store per UTM zone, ``{out_url}/mosaic_{EPSG}.zarr`` (with
    ``cadence``, a calendar beside each, ``{out_url}/calendar_{EPSG}.zarr``).

    ``tiles`` maps tile ids to store URLs, or lists store URLs (the ids are then read from the stores'
    ``tile_id`` attribute). Runs :func:`init_mosaic`, every region and :func:`finalize_mosaic`, one after
    the other; a campaign runs the regions as parallel tasks instead.
    """
    mapping = dict(tiles) if isinstance(tiles, Mapping) else _ids_from_stores(tiles, storage_options)
    parsed = _parse_tile_ids(mapping, size=size, overlap=overlap, resolution=resolution)
    key_ids = list(mapping) if keys is None else list(keys)
    results: dict[int, MosaicInfo] = {}
    for epsg in sorted({t.epsg for t in parsed}):
        zone_tiles = {tid: url for tid, url in mapping.items() if tid.split("_", 1)[0] == str(epsg)}
        zone_keys = [k for k in key_ids if k.split("_", 1)[0] == str(epsg)]
        url = f"{out_url.rstrip('/')}/mosaic_{epsg}.zarr"
        info = init_mosaic(
            url,
            zone_tiles,
            keys=zone_keys,
            size=size,
            overlap=overlap,
            resolution=resolution,
            ramp=ramp,
            storage_options=storage_options,
            overwrite=overwrite,
            resume=resume,
            cadence=cadence,
        )
        if info.status == STATUS_COMPLETE:
            results[epsg] = info
            continue
        for done, key in enumerate(zone_keys):
            write_mosaic_region(url, key, zone_tiles, storage_options=storage_options, resume=True)
            if progress is not None:
                progress(done + 1, len(zone_keys), f"EPSG:{epsg} region {key}")
        results[epsg] = finalize_mosaic(url, storage_options=storage_options)
    return results


def _ids_from_stores(urls: Sequence[str], storage_options: StorageOptions) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for url in urls:
        tile_id = str(
            open_tile(url, storage_options=storage_options, require=[DECLOUDED]).attrs.get("tile_id", "")
        )
        if not tile_id:
            raise TileMismatchError(
                f"tile store {url!r} has no 'tile_id' attribute; pass an id -> url mapping"
            )
        if tile_id in mapping:
            raise TileMismatchError(
                f"tile {tile_id!r}: two stores, {mapping[tile_id]!r} and {url!r}; keep one"
            )
        mapping[tile_id] = url
    return mapping


def region_keys(
    mosaic_url: str, *, storage_options: StorageOptions = None, pending: bool = False
) -> list[str]:
    """The region keys a mosaic expects (tile ids), or only those not yet written (``pending``)."""
    info = mosaic_info(mosaic_url, storage_options=storage_options)
    group = zarr.open_group(zarr_store(mosaic_url, storage_options), mode="r")
    todo = cast(np.ndarray, zarr_array(group, REGION_EXPECTED)[...]).astype(bool)
    if pending:
        todo &= ~_written_cells(group)
    grid = info.grid
    return [grid.cell_tile(int(i), int(j)).tile_id for i, j in np.argwhere(todo)]
