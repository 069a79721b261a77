"""Streaming mosaic scheduling without Ray: a cell is ready exactly when the (up to four) tiles reaching
into it have settled, each settle costs four countdowns, and a rerun rewrites only cells a new fit reaches.

Real ledger (local disk), real tile book and scheduler; tiles are settled by hand as a run's results would.
"""

from __future__ import annotations

from pathlib import Path

from campaign.book import TileBook
from campaign.config import RetriesConfig
from campaign.layout import OutputLayout
from campaign.ledger import Ledger, TileState
from campaign.mosaics import MosaicScheduler, reached_by, reaching
from tiler.grid import TileRef

EPSG = 32631


def _block(cols: int, rows: int) -> dict[str, TileRef]:
    tiles = [TileRef(EPSG, 100 + c, 200 + r, (64, 64), 8) for c in range(cols) for r in range(rows)]
    return {t.tile_id: t for t in tiles}


def _scheduler(tmp_path: Path, tiles: dict[str, TileRef]) -> tuple[TileBook, MosaicScheduler]:
    from campaign.config import parse_config

    (tmp_path / "items.json").write_text('{"type": "FeatureCollection", "features": []}')
    config = parse_config(
        {
            "area": "4.0,50.7,4.3,50.9",
            "start": "2021-04-01",
            "end": "2021-04-30",
            "output": "out",
            "catalog": {"items": "items.json"},
        },
        base=tmp_path,
    )
    book = TileBook(tiles, Ledger.open(str(tmp_path / "ledger")), run_id="r", retries=RetriesConfig())
    scheduler = MosaicScheduler(
        config, book, OutputLayout(str(tmp_path)), lambda *a, **k: None, times=tuple, bands=tuple
    )
    return book, scheduler


def _settle(book: TileBook, tile_id: str, state: TileState) -> None:
    book.set_state(tile_id, state)
    book.settle(tile_id)


def test_reaching_and_reached_by_are_inverse() -> None:
    tile = TileRef(EPSG, 10, 20, (64, 64), 8)
    assert {(t.col, t.row) for t in reaching(tile)} == {(10, 20), (9, 20), (10, 19), (9, 19)}
    for cell in reached_by(tile):
        assert tile in reaching(cell)


def test_a_cell_is_ready_once_its_reaching_tiles_settle(tmp_path: Path) -> None:
    tiles = _block(3, 3)
    book, scheduler = _scheduler(tmp_path, tiles)
    for tile_id in tiles:
        book.set_state(tile_id, TileState.PLANNED)
    scheduler.plan(list(tiles), {}, lambda url: False)
    (zone,) = scheduler.zones.values()
    assert list(zone.ready) == [] and zone.unwritten == 9

    def ready() -> set[str]:
        return set(zone.ready)

    # The south-west corner only needs itself.
    sw = TileRef(EPSG, 100, 200, (64, 64), 8).tile_id
    _settle(book, sw, TileState.FITTED)
    assert ready() == {sw}
    # The east neighbour's cell needs itself and the corner (its W); a failed-for-good tile settles too.
    east = TileRef(EPSG, 101, 200, (64, 64), 8).tile_id
    _settle(book, east, TileState.FAILED)
    assert ready() == {sw, east}
    north = TileRef(EPSG, 100, 201, (64, 64), 8).tile_id
    _settle(book, north, TileState.EMPTY)
    assert ready() == {sw, east, north}
    ne = TileRef(EPSG, 101, 201, (64, 64), 8).tile_id
    _settle(book, ne, TileState.FITTED)
    assert ready() == {sw, east, north, ne}
    # Every cell becomes ready exactly once, after its last reaching tile.
    rest = [t for t in tiles if t not in {sw, east, north, ne}]
    for tile_id in rest:
        _settle(book, tile_id, TileState.FITTED)
    assert sorted(zone.ready) == sorted(tiles)
    assert zone.fitted == 7 and zone.not_empty == 8


def test_a_rerun_rewrites_only_cells_a_new_fit_reaches(tmp_path: Path) -> None:
    tiles = _block(3, 3)
    book, scheduler = _scheduler(tmp_path, tiles)
    redo = TileRef(EPSG, 101, 201, (64, 64), 8).tile_id  # the centre tile, to be fitted in this run
    for tile_id in tiles:
        book.set_state(tile_id, TileState.MOSAICKED if tile_id != redo else TileState.INGESTED)
    scheduler.plan([redo], {}, lambda url: False)
    (zone,) = scheduler.zones.values()
    waiting = {c.tile_id for c in reached_by(tiles[redo])}
    assert set(zone.ready) == set(tiles) - waiting  # the others are ready at once (and skipped: mosaicked)
    _settle(book, redo, TileState.FITTED)
    assert set(zone.ready) == set(tiles)
    assert scheduler._dirty == waiting  # only the cells the new fit reaches are written again
