"""The campaign ledger: records survive crashes whole, on a local disk and on an S3 endpoint."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaign.errors import LedgerError
from campaign.ledger import (
    Attempt,
    FsspecLedgerStore,
    Ledger,
    RunRecord,
    Stage,
    TileDigest,
    TileRecord,
    TileState,
)
from campaign.report import FAILED_LISTED, build_report, gpu_use, max_overlap, summary_lines


def _attempt(stage: Stage, number: int, outcome: str = "ok", **kw: object) -> Attempt:
    base: dict[str, object] = {
        "stage": stage,
        "number": number,
        "run_id": "r1",
        "started": 10.0,
        "ended": 12.5,
        "outcome": outcome,
    }
    return Attempt.model_validate(base | kw)


def _record(tile_id: str = "32631_c0001_r0002") -> TileRecord:
    return TileRecord(tile_id=tile_id, epsg=32631, area_km2=25.9)


def test_record_moves_on_success_and_keeps_state_on_failure() -> None:
    record = _record()
    record = record.record(_attempt(Stage.INGEST, 1, "error", error="timeout"))
    assert record.state == TileState.PLANNED
    record = record.record(_attempt(Stage.INGEST, 2))
    assert record.state == TileState.INGESTED
    record = record.record(_attempt(Stage.FIT, 1, "worker_died", error="killed"))
    record = record.record(_attempt(Stage.FIT, 2, "interrupted"))
    assert record.attempts_at(Stage.INGEST) == 2
    # A Ctrl-C is not the tile's fault: it does not count towards the retry limit.
    assert record.attempts_at(Stage.FIT) == 1
    failed = record.failed(Stage.FIT, "all dates cloudy", permanent=True)
    assert (failed.state, failed.failed_stage, failed.permanent) == (TileState.FAILED, Stage.FIT, True)
    again = failed.record(_attempt(Stage.FIT, 3), fit={"iterations": 4})
    assert (again.state, again.error, again.fit) == (TileState.FITTED, None, {"iterations": 4})


def test_local_ledger_round_trip_leaves_no_temporary_files(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path / "ledger"))
    assert len(ledger) == 0
    first = _record().record(_attempt(Stage.INGEST, 1))
    ledger.put(first)
    ledger.put(first.record(_attempt(Stage.FIT, 1, gpu_ids=("1",), gpu_share=0.5)))
    ledger.put(_record("32631_c0002_r0002"))
    reread = Ledger.open(str(tmp_path / "ledger"))
    assert set(reread.records) == {"32631_c0001_r0002", "32631_c0002_r0002"}
    assert reread.get("32631_c0001_r0002") == ledger.get("32631_c0001_r0002")
    assert reread.get("32631_c0001_r0002").state == TileState.FITTED  # type: ignore[union-attr]
    # One journal object per record written, named by stamp, writer and tile; no temporary files.
    files = sorted(p.name for p in (tmp_path / "ledger" / "journal").iterdir())
    assert len(files) == 3 and all(".tmp-" not in f for f in files)
    assert [f.rsplit("-", 1)[-1] for f in files] == [
        "32631_c0001_r0002.json",
        "32631_c0001_r0002.json",
        "32631_c0002_r0002.json",
    ]


def test_leftover_temporary_file_of_a_crash_is_ignored(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path))
    ledger.put(_record())
    (tmp_path / "journal" / "00000000000000000001-x-32631_c0001_r0002.json.tmp-deadbeef").write_text(
        '{"tile_id": "32631_c0'
    )
    assert list(Ledger.open(str(tmp_path)).records) == ["32631_c0001_r0002"]


def test_corrupt_record_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "journal").mkdir()
    name = "00000000000000000007-abcd1234-32631_c0001_r0002.json"
    (tmp_path / "journal" / name).write_text("{not json")
    with pytest.raises(LedgerError, match=rf"journal/{name}.*delete that file and rerun"):
        Ledger.open(str(tmp_path))


WRITER = """
import sys
from campaign.ledger import Attempt, Ledger, Stage, TileRecord
ledger = Ledger.open(sys.argv[1])
record = TileRecord(tile_id="32631_c0001_r0001", epsg=32631, area_km2=1.0)
print("ready", flush=True)
n = 0
while True:
    n += 1
    record = record.record(Attempt(stage=Stage.FIT, number=n, run_id="r", started=0, ended=1,
                                   outcome="error", error="x" * 5000))
    ledger.put(record)
"""


def test_record_survives_a_writer_killed_mid_write(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a growing record in a loop: what is left parses, whole."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = Ledger.open(str(tmp_path)).get("32631_c0001_r0001")
    assert record is not None
    assert len(record.attempts) > 3
    assert [a.number for a in record.attempts] == list(range(1, len(record.attempts) + 1))


def test_ledger_on_s3_endpoint(s3_endpoint: dict[str, object]) -> None:
    url = "s3://declouder-test/ledger-test/ledger"
    ledger = Ledger.open(url, s3_endpoint)
    ledger.put(_record().record(_attempt(Stage.INGEST, 1)))
    ledger.write_campaign({"name": "x", "fingerprint": "abc"})
    ledger.put_run(
        RunRecord(
            run_id="r1",
            started=1,
            ended=2,
            interrupted=False,
            fit_actors=2,
            gpu_share=0.5,
            gpu_seconds_held=3.0,
            tiles_done=1,
            tiles_failed=0,
        )
    )
    again = Ledger.open(url, s3_endpoint)
    assert again.get("32631_c0001_r0002") == ledger.get("32631_c0001_r0002")
    assert again.read_campaign() == {"name": "x", "fingerprint": "abc"}
    assert [r.run_id for r in again.runs()] == ["r1"]
    store = FsspecLedgerStore(url, s3_endpoint)
    assert json.loads(store.read("campaign.json") or b"{}")["fingerprint"] == "abc"
    assert store.read("missing.json") is None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=30))
def test_max_overlap_matches_brute_force(spans: list[tuple[int, int]]) -> None:
    intervals = [(float(s), float(s + d)) for s, d in spans]
    # Brute force over half-open intervals [start, end): sample between all boundaries.
    points = sorted({p for i in intervals for p in i})
    probes = [(a + b) / 2 for a, b in itertools.pairwise(points)]
    expected = max((sum(1 for s, e in intervals if s <= p < e) for p in probes), default=0)
    assert max_overlap(intervals) == expected


def test_gpu_use_keys_gpus_by_node_and_counts_concurrency() -> None:
    fit = Stage.FIT
    a = _record("32631_c0001_r0001").record(
        _attempt(fit, 1, started=0, ended=10, gpu_ids=("0",), node_id="n1", gpu_share=0.5)
    )
    b = _record("32631_c0002_r0001").record(
        _attempt(fit, 1, started=5, ended=15, gpu_ids=("0",), node_id="n1", gpu_share=0.5)
    )
    c = _record("32631_c0003_r0001").record(
        _attempt(fit, 1, started=5, ended=15, gpu_ids=("0",), node_id="n2", gpu_share=0.5)
    )
    use = {(g.node_id, g.gpu_id): (g.fits, g.max_concurrent) for g in gpu_use([a, b, c])}
    assert use == {("n1", "0"): (2, 2), ("n2", "0"): (1, 1)}


def test_report_counts_each_tile_once_and_all_gpu_time() -> None:
    fit = Stage.FIT
    done = (
        _record("32631_c0001_r0001")
        .record(_attempt(Stage.INGEST, 1))
        .record(_attempt(fit, 1, "worker_died", started=0, ended=4, gpu_share=0.5))
        .record(_attempt(fit, 2, started=4, ended=10, gpu_share=0.5))
    )
    failed = (
        _record("32631_c0002_r0001")
        .record(_attempt(Stage.INGEST, 1))
        .record(_attempt(fit, 1, "error", error="cloudy", permanent=True, started=0, ended=2, gpu_share=0.5))
        .failed(fit, "cloudy", permanent=True)
    )
    kwargs = _report_kwargs(["32631_c0001_r0001", "32631_c0002_r0001", "32631_c0003_r0001"])
    report = build_report(
        **kwargs
        | dict(
            records=[done, failed],
            runs=[
                RunRecord(
                    run_id="r",
                    started=0,
                    ended=100,
                    interrupted=False,
                    fit_actors=2,
                    gpu_share=0.5,
                    gpu_seconds_held=100.0,
                    tiles_done=1,
                    tiles_failed=1,
                )
            ],
        )
    )
    assert (report.tiles_done, report.tiles_failed, report.tiles_pending) == (1, 1, 1)
    assert report.km2_done == 25.0 and report.km2_planned == 75.0
    assert report.fit_attempts == 3 and report.worker_deaths == 1
    assert report.gpu_seconds_fits == pytest.approx((4 + 6 + 2) * 0.5)
    assert report.km2_per_gpu_hour == pytest.approx(25.0 / (100.0 / 3600))
    assert [f.tile_id for f in report.failed] == ["32631_c0002_r0001"]
    assert report.exit_code == 1


# --- compacted index + journal ------------------------------------------------------------------------


def _fitted(tile_id: str, n: int = 1, *, node: str = "n1") -> TileRecord:
    record = _record(tile_id).record(_attempt(Stage.INGEST, 1), ingest={"n_dates": 73})
    for k in range(1, n + 1):
        record = record.record(
            _attempt(
                Stage.FIT,
                k,
                started=10.0 * k,
                ended=10.0 * k + 4,
                gpu_ids=("0",),
                node_id=node,
                gpu_share=0.5,
            ),
            fit={"iterations": 100 * k},
        )
    return record


def _report_kwargs(ids: list[str]) -> dict[str, Any]:
    """``build_report``'s arguments other than the records, for a run that planned ``ids``."""
    return dict(
        name="t",
        output="/o",
        fingerprint="f",
        run_id="r",
        started=0,
        ended=100,
        interrupted=False,
        planned=[(t, 25.0) for t in ids],
        runs=[],
        skipped=0,
        fits_per_gpu=2,
    )


def _ids(n: int) -> list[str]:
    return [f"32631_c{c:04d}_r0001" for c in range(n)]


def test_index_and_newer_records_merge_on_load(tmp_path: Path) -> None:
    url = str(tmp_path / "ledger")
    ledger = Ledger.open(url)
    for tile_id in _ids(30):
        ledger.put(_fitted(tile_id))
    name = ledger.compact()
    assert name is not None and sorted(p.name for p in (tmp_path / "ledger" / "index").iterdir()) == [name]
    assert not list((tmp_path / "ledger" / "journal").iterdir()), "merged entries are deleted"
    # Newer records after the index: an update of an indexed tile, and new tiles.
    ledger.put(_fitted(_ids(30)[3], 2))
    ledger.put(_record("32631_c0099_r0001").failed(Stage.INGEST, "no data here", permanent=True))
    reread = Ledger.open(url)
    assert len(reread) == 31
    assert reread.get(_ids(30)[3]) == _fitted(_ids(30)[3], 2)
    assert reread.state(_ids(30)[3]) == TileState.FITTED
    assert reread.state("32631_c0099_r0001") == TileState.FAILED and reread.state("x") is None
    assert dict(reread.records) == dict(ledger.records)
    # Digests (what status reads) agree with the records they summarise.
    assert sorted(reread.digests()) == sorted(TileDigest.of(r) for r in reread)


def test_report_from_the_index_equals_the_report_from_records(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path))
    ids = _ids(12)
    for k, tile_id in enumerate(ids[:10]):
        ledger.put(_fitted(tile_id, 1 + k % 3, node=f"n{k % 2}"))
    ledger.put(_fitted(ids[10]).failed(Stage.FIT, "cloudy", permanent=True))
    ledger.compact()
    kwargs = _report_kwargs(ids)
    reread = Ledger.open(str(tmp_path))
    fast = build_report(records=reread, **kwargs)
    slow = build_report(records=list(reread), **kwargs)
    assert fast == slow
    assert (fast.tiles_done, fast.tiles_failed, fast.tiles_pending) == (10, 1, 1)
    assert [f.tile_id for f in fast.failed] == [ids[10]] and fast.failed[0].error == "cloudy"


def test_compaction_cut_short_loses_nothing_and_regresses_nothing(tmp_path: Path) -> None:
    """A crash after the index is written but before the journal is cleaned: the leftover entries are
    older versions than the index's, and a load must not let them win."""
    url = str(tmp_path)
    ledger = Ledger.open(url)
    tile_id = _ids(1)[0]
    for n in range(1, 4):
        ledger.put(_fitted(tile_id, n))
    journal = sorted((tmp_path / "journal").iterdir())
    saved = {p.name: p.read_bytes() for p in journal}
    ledger.compact()
    for name, data in saved.items():  # the deletions "never happened"
        (tmp_path / "journal" / name).write_bytes(data)
    reread = Ledger.open(url)
    assert reread.get(tile_id) == _fitted(tile_id, 3)
    reread.put(_fitted(tile_id, 4))  # a new stamp is above every loaded one
    assert Ledger.open(url).get(tile_id) == _fitted(tile_id, 4)
    assert Ledger.open(url).compact() is not None
    assert Ledger.open(url).get(tile_id) == _fitted(tile_id, 4)
    assert not list((tmp_path / "journal").iterdir())


class _RaceStore(FsspecLedgerStore):
    """A store whose journal listing lets another writer put records right after it is taken."""

    def __init__(self, url: str, between: Callable[[], None]) -> None:
        super().__init__(url)
        self.between = between

    def list(self, prefix: str) -> list[str]:
        names = super().list(prefix)
        if prefix == "journal":
            self.between()
            self.between = lambda: None
        return names


def test_records_written_during_a_compaction_stay(tmp_path: Path) -> None:
    url = str(tmp_path)
    writer = Ledger.open(url)
    ids = _ids(20)
    for tile_id in ids[:10]:
        writer.put(_fitted(tile_id))
    late = [_fitted(t, 2) for t in ids[5:15]]  # updates and new tiles, written mid-compaction

    def write_late() -> None:
        for record in late:
            writer.put(record)

    store = _RaceStore(url, lambda: None)
    compactor = Ledger(store)
    compactor.load()
    store.between = write_late  # armed for the compaction's listing
    assert compactor.compact() is not None
    reread = Ledger.open(url)
    assert len(reread) == 15
    for record in late:
        assert reread.get(record.tile_id) == record
    assert len(list((tmp_path / "journal").iterdir())) == len(late), "unlisted entries stay"
    # The writer's own next compaction sees the other's index, merges and cleans up.
    assert writer.compact() is not None
    assert dict(Ledger.open(url).records) == dict(reread.records)
    assert len(list((tmp_path / "index").iterdir())) == 1


def test_corrupt_index_names_the_object_and_what_to_do(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path))
    ledger.put(_fitted(_ids(1)[0]))
    name = ledger.compact()
    assert name is not None
    path = tmp_path / "index" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(
        LedgerError, match=rf"ledger index index/{name} .* is not readable .*restore .* or delete"
    ):
        Ledger.open(str(tmp_path))
    path.write_bytes(b"not zstd at all")
    with pytest.raises(LedgerError, match=rf"index/{name} .* is not readable"):
        Ledger.open(str(tmp_path))


def test_records_of_the_old_layout_are_read_and_folded(tmp_path: Path) -> None:
    """A ledger written before the index (ledger/tiles/<id>.json) resumes, and compacts into an index."""
    (tmp_path / "tiles").mkdir()
    old = [_fitted(t) for t in _ids(3)]
    for record in old:
        (tmp_path / "tiles" / f"{record.tile_id}.json").write_text(record.model_dump_json())
    ledger = Ledger.open(str(tmp_path))
    assert [ledger.get(r.tile_id) for r in old] == old
    ledger.put(_fitted(old[0].tile_id, 2))  # newer than the old-layout record
    ledger.close()
    assert not list((tmp_path / "tiles").iterdir()) and not list((tmp_path / "journal").iterdir())
    reread = Ledger.open(str(tmp_path))
    assert reread.get(old[0].tile_id) == _fitted(old[0].tile_id, 2) and reread.get(old[2].tile_id) == old[2]


COMPACTING_WRITER = """
import sys
import campaign.ledger as L
from campaign.ledger import Attempt, Ledger, Stage, TileRecord
L.COMPACT_EVERY = 7
ledger = Ledger.open(sys.argv[1])
records = {t: TileRecord(tile_id=t, epsg=32631, area_km2=1.0) for t in
           [f"32631_c{c:04d}_r0001" for c in range(5)]}
print("ready", flush=True)
n = 0
while True:
    n += 1
    for t, record in records.items():
        records[t] = record = record.record(Attempt(stage=Stage.FIT, number=n, run_id="r", started=0,
                                                    ended=1, outcome="error", error="x" * 300))
        ledger.put(record)
        print(t, n, flush=True)
"""


def test_no_record_lost_when_a_compacting_writer_is_killed(tmp_path: Path) -> None:
    """SIGKILL a writer that compacts every 7 records: every record it confirmed is there, whole."""
    proc = subprocess.Popen(
        [sys.executable, "-c", COMPACTING_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    confirmed: dict[str, int] = {}
    for line in proc.stdout.read().splitlines():
        tile_id, n = line.split()
        confirmed[tile_id] = int(n)
    assert len(confirmed) == 5 and min(confirmed.values()) > 2, "the writer got going (and compacted)"
    assert (tmp_path / "index").exists()
    ledger = Ledger.open(str(tmp_path))
    for tile_id, n in confirmed.items():
        record = ledger.get(tile_id)
        assert record is not None
        numbers = [a.number for a in record.attempts]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= n


def test_index_on_s3_endpoint(s3_endpoint: dict[str, object]) -> None:
    url = "s3://declouder-test/ledger-index-test/ledger"
    ledger = Ledger.open(url, s3_endpoint)
    for tile_id in _ids(8):
        ledger.put(_fitted(tile_id))
    assert ledger.compact() is not None
    ledger.put(_fitted(_ids(8)[0], 3))
    store = FsspecLedgerStore(url, s3_endpoint)
    reread = Ledger(store)
    reread.load()
    assert dict(reread.records) == dict(ledger.records) and len(reread) == 8
    # One index object and one journal entry: two lists and two reads, not one GET per tile.
    assert store.ops["list"] <= 5 and store.ops["read"] == 2, store.ops


def test_put_many_writes_one_entry_and_the_last_record_of_a_tile_wins(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path))
    ids = _ids(3)
    ledger.put_many([_fitted(ids[0]), _fitted(ids[1]), _fitted(ids[0], 2), _record(ids[2])])
    assert len(list((tmp_path / "journal").iterdir())) == 1
    reread = Ledger.open(str(tmp_path))
    assert reread.get(ids[0]) == _fitted(ids[0], 2) and reread.get(ids[2]) == _record(ids[2])
    assert dict(reread.records) == dict(ledger.records)
    reread.compact()
    assert Ledger.open(str(tmp_path)).get(ids[0]) == _fitted(ids[0], 2)


def test_summary_names_the_first_failures_and_counts_the_rest_by_reason() -> None:
    ids = _ids(FAILED_LISTED + 7)
    reasons = ["cloudy", "no clear pixel"]
    records = [_fitted(t).failed(Stage.FIT, reasons[k % 2], permanent=True) for k, t in enumerate(ids)]
    report = build_report(records=records, **_report_kwargs(ids))
    lines = summary_lines(report)
    named = [line for line in lines if line.startswith("FAILED ")]
    assert len(named) == FAILED_LISTED
    assert any(line.startswith("... and 7 more failed tiles") for line in lines)
    grouped = {line.strip() for line in lines if line.startswith("  ") and " at fit " in line}
    rest = [reasons[k % 2] for k in range(FAILED_LISTED, len(ids))]
    assert grouped == {f"{rest.count(r)} at fit (bad input): {r}" for r in set(rest)}
    assert len(report.failed) == len(ids)  # the JSON report still lists every one


def test_compactions_rewrite_records_linearly_in_the_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each compaction rewrites the whole index: the records rewritten over a campaign must stay linear in
    the records written (a geometric series of index sizes), not quadratic as with a fixed threshold."""
    import campaign.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "COMPACT_EVERY", 10)
    ledger = Ledger.open(str(tmp_path / "ledger"))
    rewritten: list[int] = []
    write_index = ledger._write_index

    def counting() -> str:
        rewritten.append(len(ledger._stamps))
        return write_index()

    monkeypatch.setattr(ledger, "_write_index", counting)
    ids = [f"32631_c{c:04d}_r{r:04d}" for c in range(100) for r in range(40)]  # 4,000 tiles
    for start in range(0, len(ids), 20):  # the driver's batches: put_many, one journal entry each
        ledger.put_many([_record(t) for t in ids[start : start + 20]])
    ledger.close()
    # A fixed threshold of 10 records would rewrite ~800,000 records here (200× the records written).
    assert sum(rewritten) <= (1 + 1 / ledger_module.COMPACT_SHARE) * len(ids) + len(ids)
    assert len(rewritten) < 20
    reread = Ledger.open(str(tmp_path / "ledger"))
    assert {t: reread.get(t) for t in ids} == {t: _record(t) for t in ids}
    # The journal is bounded in entries as well: at most MAX_JOURNAL_ENTRIES before a compaction.
    monkeypatch.setattr(ledger_module, "MAX_JOURNAL_ENTRIES", 3)
    before = len(rewritten)
    for tile_id in ids[:3]:
        ledger.put(_fitted(tile_id))
    assert len(rewritten) == before + 1
