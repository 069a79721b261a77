"""Campaign faults with real components: tiles without Sentinel-2 data found through a real STAC API
(rustac on loopback), and corrupt input stores met by real fits, on a real local Ray cluster.

Tiles are the 64×64 px test grid over the committed real sample (WorldCereal 31UES, tests/campaign_data);
the sample's imagery covers cells c1026 and c1027 of row 10039, and nothing east of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign_data import sample_catalog, write_config
from stac_server import rustac_server

from campaign.config import load_config
from campaign.driver import CampaignProgress, OutputLayout, campaign_status, run_campaign
from campaign.ledger import Ledger, Stage, TileState
from campaign.report import summary_lines
from ingest.sample import write_collections
from tiler.mosaic import open_mosaic
from tiler.store import tile_status

ray = pytest.importorskip("ray")

ROW = (10039,)
#: Two tiles over the sample's imagery, and one east of it where no S2 item lies.
LAND = ("32631_c1026_r10039", "32631_c1027_r10039")
SEA = "32631_c1028_r10039"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def test_tiles_without_s2_data_are_empty_not_failed(ray_cluster: None, tmp_path: Path) -> None:
    """Search through a real STAC API: the tile east of the imagery finds no S2 item and is recorded
    empty (one attempt, never retried), the campaign exits 0, the report and status count it apart."""
    sample = sample_catalog(tmp_path / "catalog", cols=(1026, 1027, 1028), rows=ROW)
    collections = write_collections(tmp_path / "collections")
    with rustac_server([*collections, Path(sample["items"])]) as url:
        path = write_config(tmp_path, sample, fit_actors=2)
        text = path.read_text().replace(f'items = "{sample["items"]}"', f'url = "{url}"')
        path.write_text(text)
        config = load_config(path)
        report = run_campaign(config)
    assert (report.tiles_planned, report.tiles_done, report.tiles_failed) == (3, 2, 0)
    assert (report.tiles_empty, report.tiles_pending) == (1, 0)
    assert report.exit_code == 0
    assert "1 empty (no Sentinel-2 data)" in summary_lines(report)[1]
    layout = OutputLayout(config.output)
    ledger = Ledger.open(layout.ledger)
    empty = ledger.get(SEA)
    assert empty is not None and empty.state == TileState.EMPTY
    assert [a.stage for a in empty.attempts] == [Stage.INGEST]  # never retried, never fitted
    assert empty.ingest is not None and "no sentinel-2-l2a items" in empty.ingest["empty"]
    assert tile_status(layout.ingested(SEA)) == "missing" and tile_status(layout.fitted(SEA)) == "missing"
    assert {ledger.get(t).state for t in LAND} == {TileState.MOSAICKED}  # type: ignore[union-attr]
    # The mosaic completes: the empty tile's cell holds what its western neighbour's overlap covers.
    assert report.mosaics == {layout.mosaic(32631): "complete"}
    assert open_mosaic(layout.mosaic(32631))["s2_declouded"].sizes["time"] > 0
    status = campaign_status(config)
    assert (status.tiles_empty, status.tiles_failed, status.exit_code) == (1, 0, 0)
    # A rerun has nothing to do: the empty tile is settled.
    again = run_campaign(config)
    assert (again.tiles_skipped, again.tiles_empty, again.exit_code) == (2, 1, 0)
    assert Ledger.open(layout.ledger).get(SEA) == empty


def _corrupt_s2_chunk(store: str) -> str:
    """Damage the first chunk file of the store's ``s2`` variable on disk (its bytes flipped)."""
    chunk = min(p for p in Path(store, "s2").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    for i in range(16, len(data), 7):
        data[i] ^= 0x5A
    chunk.write_bytes(bytes(data))
    return str(chunk)


def test_corrupt_input_goes_back_to_ingest_and_fails_when_retries_are_used_up(
    ray_cluster: None, tmp_path: Path
) -> None:
    """Each time ingest writes tile ``once`` its s2 store is corrupted the first time only, and tile
    ``always``'s every time: ``once`` is ingested again by itself and fitted; ``always`` fails at fit
    with the chunk named after its retries, while the campaign goes on (exit 1, the report lists it)."""
    once, always = LAND
    sample = sample_catalog(tmp_path / "catalog", cols=(1026, 1027), rows=ROW)
    path = write_config(tmp_path, sample, fit_actors=2)
    config = load_config(path)
    layout = OutputLayout(config.output)
    damaged: dict[str, list[str]] = {once: [], always: []}

    def on_event(event: CampaignProgress) -> None:
        # Runs in the driver between the ingest's result and the fit's dispatch.
        wanted = event.tile_id == always or (event.tile_id == once and not damaged[once])
        if event.kind == "ingested" and wanted:
            damaged[str(event.tile_id)].append(_corrupt_s2_chunk(layout.ingested(str(event.tile_id))))

    report = run_campaign(config, progress=on_event)
    assert report.exit_code == 1
    assert (report.tiles_done, report.tiles_failed) == (1, 1)
    ledger = Ledger.open(layout.ledger)
    healed = ledger.get(once)
    assert healed is not None and healed.state == TileState.MOSAICKED
    fits = [a for a in healed.attempts if a.stage == Stage.FIT]
    assert [a.outcome for a in fits] == ["error", "ok"]
    assert fits[0].error is not None and "corrupt" in fits[0].error and "'s2'" in fits[0].error
    assert not fits[0].permanent
    assert healed.successes_at(Stage.INGEST) == 2  # ingested again by the campaign itself
    (failed,) = report.failed
    assert failed.tile_id == always and failed.stage == Stage.FIT and not failed.permanent
    assert failed.attempts == config.retries.fit == 3
    assert failed.error is not None and "chunk" in failed.error and "re-ingest" in failed.error
    assert "gave up after 3 attempts" in failed.error
    record = ledger.get(always)
    assert record is not None and record.successes_at(Stage.INGEST) == len(damaged[always]) == 3
    assert any(f"FAILED {always} at fit" in line for line in summary_lines(report))
    # The campaign went on: the mosaic is complete with the healthy tile.
    assert report.mosaics == {layout.mosaic(32631): "complete"}
    saved = json.loads(Path(config.output, "report.json").read_text())
    assert [f["tile_id"] for f in saved["failed"]] == [always]
