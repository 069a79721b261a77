"""The campaign ledger: records survive crashes whole, on a local disk and on an S3 endpoint."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    TileRecord,
    TileState,
)
from campaign.report import build_report, gpu_use, max_overlap


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
    files = sorted(p.name for p in (tmp_path / "ledger" / "tiles").iterdir())
    assert files == ["32631_c0001_r0002.json", "32631_c0002_r0002.json"]


def test_leftover_temporary_file_of_a_crash_is_ignored(tmp_path: Path) -> None:
    ledger = Ledger.open(str(tmp_path))
    ledger.put(_record())
    (tmp_path / "tiles" / "32631_c0001_r0002.json.tmp-deadbeef").write_text('{"tile_id": "32631_c0')
    assert list(Ledger.open(str(tmp_path)).records) == ["32631_c0001_r0002"]


def test_corrupt_record_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "32631_c0001_r0002.json").write_text("{not json")
    with pytest.raises(LedgerError, match=r"tiles/32631_c0001_r0002\.json.*delete that file and rerun"):
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
    report = build_report(
        name="t",
        output="/o",
        fingerprint="f",
        run_id="r",
        started=0,
        ended=100,
        interrupted=False,
        planned=[("32631_c0001_r0001", 25.0), ("32631_c0002_r0001", 25.0), ("32631_c0003_r0001", 25.0)],
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
        skipped=0,
        fits_per_gpu=2,
    )
    assert (report.tiles_done, report.tiles_failed, report.tiles_pending) == (1, 1, 1)
    assert report.km2_done == 25.0 and report.km2_planned == 75.0
    assert report.fit_attempts == 3 and report.worker_deaths == 1
    assert report.gpu_seconds_fits == pytest.approx((4 + 6 + 2) * 0.5)
    assert report.km2_per_gpu_hour == pytest.approx(25.0 / (100.0 / 3600))
    assert [f.tile_id for f in report.failed] == ["32631_c0002_r0001"]
    assert report.exit_code == 1
