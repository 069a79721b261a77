"""The campaign on a real local Ray cluster with two fake GPUs, real fits on real sample tiles.

One Ray instance (``ray.init(num_cpus=2, num_gpus=2)``) serves the module; drivers run in this process
or as `declouder run --address ...` subprocesses joined to it. The data is the committed real sample
(WorldCereal 31UES, Belgium) served as an ItemCollection of local COGs; tiles are 64×64 px so that
real `smoke` fits take seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from campaign_data import CLOUDY_PERIOD, POISON_TILE, sample_catalog, write_config

from campaign.config import load_config
from campaign.driver import CampaignProgress, OutputLayout, campaign_status
from campaign.ledger import Ledger, Stage, TileState
from campaign.report import DONE_STATES, CampaignReport
from tiler.store import tile_status

ray = pytest.importorskip("ray")

#: Seconds between a fit's start and killing its actor: the smoke fits here run for several seconds.
KILL_DELAY_S = 1.0
#: The demo's campaign in the tests: 4 fit actors, 2 per fake GPU, small CPU shares for 2 cores.
DEMO_TEST_RESOURCES = {"gpus_per_fit": 0.5, "fit_actors": 4, "cpus_per_fit": 0.25}
#: The demo's campaign in the tests also writes a calendar of 10-day steps beside its mosaic.
DEMO_TEST_CADENCE = "10D"
#: How long a subprocess campaign may take before the test gives up on it.
CAMPAIGN_TIMEOUT_S = 400


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs and 2 fake GPUs, shared by the module's campaigns."""
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return sample_catalog(tmp_path_factory.mktemp("catalog"))


def _kill(how: str, name: str, pid: int) -> None:
    if how == "ray.kill":
        ray.kill(ray.get_actor(name), no_restart=False)
    else:  # what the kernel's OOM killer does
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def demo_run(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's campaign (the bundled sample: 6 tiles of 64×64 px, 20 dates) on 4 fit actors sharing
    the 2 fake GPUs (0.5 each), where two fits (of two tiles) lose their actor mid-fit: one to ray.kill,
    one to SIGKILL of the actor's process."""
    from campaign.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    kills: list[dict[str, Any]] = []
    events: list[CampaignProgress] = []

    def on_event(event: CampaignProgress) -> None:
        events.append(event)
        fresh = all(event.tile_id != k["tile"] for k in kills)  # the second kill hits another tile
        if event.kind == "fit_started" and event.worker is not None and len(kills) < 2 and fresh:
            how = "ray.kill" if not kills else "SIGKILL"
            kills.append(
                {"how": how, "tile": event.tile_id, "actor": event.worker.name, "pid": event.worker.pid}
            )
            threading.Timer(KILL_DELAY_S, _kill, (how, event.worker.name, event.worker.pid)).start()

    result = run_demo(
        out, preset="smoke", progress=on_event, resources=DEMO_TEST_RESOURCES, cadence=DEMO_TEST_CADENCE
    )
    config = load_config(result.config)
    return {
        "out": out,
        "result": result,
        "config": config,
        "report": result.report,
        "kills": kills,
        "events": events,
    }


def test_demo_runs_the_whole_pipeline_on_the_real_sample(demo_run: dict[str, Any]) -> None:
    from tiler.mosaic import mosaic_info, open_mosaic

    report: CampaignReport = demo_run["report"]
    config = demo_run["config"]
    assert (report.tiles_planned, report.tiles_done, report.tiles_failed) == (6, 6, 0)
    assert report.exit_code == 0
    ledger = Ledger.open(OutputLayout(config.output).ledger)
    assert {r.state for r in ledger} == {TileState.MOSAICKED}
    mosaic_url = demo_run["result"].mosaic_url
    assert report.mosaics == {mosaic_url: "complete"}
    mosaic = open_mosaic(mosaic_url)
    # The time axis is every day of the period (fixed up front); the sample's 20 S2 dates hold data.
    assert mosaic.sizes["time"] == (config.end - config.start).days + 1
    days = mosaic_info(mosaic_url).days_with_data
    assert days is not None and len(days) == 20
    declouded = mosaic["s2_declouded"].sel(time=list(days)).values
    assert declouded.shape[1] == len(config.catalog.model_extra["bands"])
    # The 6 cells cover the 64×64 px site and ground around it without imagery: that ground stays no data
    # (0) on every date and band, since nothing was ever observed there; the site has data everywhere.
    site = (declouded > 0).all(axis=(0, 1))
    empty = (declouded == 0).all(axis=(0, 1))
    assert (site | empty).all()
    assert 60 * 60 <= site.sum() <= 64 * 64
    outputs = report.outputs[mosaic_url]
    assert sorted(outputs) == ["calendar", "calendar_quicklooks", "calendar_stac", "quicklooks", "stac"]
    assert len(demo_run["result"].quicklooks) == 20
    assert json.loads(Path(outputs["stac"]).read_text())["type"] == "Collection"
    # The calendar beside the mosaic (plain xarray): every site pixel has a value at each 10-day step
    # of the period, the ground never observed none; its quicklooks and STAC items, one per step.
    import pandas as pd
    import xarray as xr

    calendar = xr.open_zarr(outputs["calendar"])
    steps = pd.date_range(config.start, config.end, freq=DEMO_TEST_CADENCE)
    assert list(pd.DatetimeIndex(calendar["time"].values)) == list(steps)
    assert calendar.attrs["declouder_status"] == "complete"
    values = calendar["s2_declouded"].values
    assert (values[..., site] > 0).all() and (values[..., empty] == 0).all()
    assert len(demo_run["result"].calendar_quicklooks) == len(steps)
    collection = json.loads(Path(outputs["calendar_stac"]).read_text())
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == len(steps)
    saved = json.loads(Path(config.output, "report.json").read_text())
    assert saved["tiles_done"] == 6 and saved["exit_code"] == 0
    # `declouder status` rebuilds the same figures from the ledger alone.
    status = campaign_status(config)
    assert (status.tiles_done, status.tiles_failed, status.fit_attempts) == (6, 0, report.fit_attempts)
    assert status.mosaics == report.mosaics
    assert status.gpu_seconds_fits == pytest.approx(report.gpu_seconds_fits)


def test_the_mosaic_streams_while_tiles_still_fit(demo_run: dict[str, Any]) -> None:
    """Regions are written as soon as their tiles are fitted, not after the last fit (no barrier)."""
    ledger = Ledger.open(OutputLayout(demo_run["config"].output).ledger)
    attempts = [a for r in ledger for a in r.attempts if a.outcome == "ok"]
    last_fit = max(a.ended for a in attempts if a.stage == Stage.FIT)
    regions = [a for a in attempts if a.stage == Stage.MOSAIC]
    assert len(regions) == 6
    assert min(a.started for a in regions) < last_fit
    # The template was written from the plan at the start: its time axis is every day of the period.
    mosaic = Path(demo_run["result"].mosaic_url)
    config = demo_run["config"]
    days = (config.end - config.start).days + 1
    assert json.loads((mosaic / "time" / "zarr.json").read_text())["shape"] == [days]


def test_demo_command_reports_a_finished_demo_without_starting_ray(demo_run: dict[str, Any]) -> None:
    """`declouder demo` on the demo's folder: the campaign is done, so it only reports (no Ray)."""
    proc = _declouder(
        "demo",
        "--out",
        str(demo_run["out"]),
        "--preset",
        "smoke",
        "--no-evaluate",
        "--no-live",
        "--cadence",
        DEMO_TEST_CADENCE,
        cwd=demo_run["out"],
    )
    text, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    assert proc.returncode == 0, text
    assert "6/6 done, 0 failed, 0 pending (6 already done before this run)" in text
    assert "quicklooks of the declouded mosaic: 20 PNGs" in text
    assert "quicklooks of the calendar: 13 PNGs" in text
    assert "started an embedded Ray" not in text and "joined the Ray cluster" not in text


def test_each_fit_is_pinned_to_one_gpu_and_gpus_are_never_oversubscribed(demo_run: dict[str, Any]) -> None:
    report: CampaignReport = demo_run["report"]
    ledger = Ledger.open(OutputLayout(demo_run["config"].output).ledger)
    fits = [a for r in ledger for a in r.attempts if a.stage == Stage.FIT and a.outcome == "ok"]
    assert len(fits) == 6
    for attempt in fits:
        # Recorded inside the actor: Ray gave it one GPU and CUDA_VISIBLE_DEVICES names exactly that one.
        assert len(attempt.gpu_ids) == 1
        assert attempt.cuda_visible_devices == attempt.gpu_ids[0]
        assert attempt.gpu_share == 0.5
    assert {g.gpu_id for g in report.gpus} <= {"0", "1"}
    assert report.fits_per_gpu == 2
    assert 1 <= report.max_concurrent_per_gpu <= 2
    assert report.gpu_seconds_fits > 0 and report.gpu_seconds_held >= report.gpu_seconds_fits


def test_killed_actors_lose_no_tile_and_count_none_twice(demo_run: dict[str, Any]) -> None:
    kills = demo_run["kills"]
    assert [k["how"] for k in kills] == ["ray.kill", "SIGKILL"]
    ledger = Ledger.open(OutputLayout(demo_run["config"].output).ledger)
    for record in ledger:
        assert record.successes_at(Stage.FIT) == 1, record.tile_id
    for kill in kills:
        record = ledger.get(kill["tile"])
        assert record is not None
        fits = [a for a in record.attempts if a.stage == Stage.FIT]
        died = [a for a in fits if a.outcome == "worker_died"]
        assert [a.worker for a in died] == [kill["actor"]]
        assert died[0].seconds >= KILL_DELAY_S * 0.9  # it was killed mid-fit, not before it started
        # The retry ran in another process: another actor, or the dead one restarted by Ray.
        ok = [a for a in fits if a.outcome == "ok"]
        assert ok[0].pid != kill["pid"] and ok[0].number == 2
    report: CampaignReport = demo_run["report"]
    assert report.worker_deaths == 2 and report.fit_attempts == 8
    assert any(e.kind == "worker_died" for e in demo_run["events"])


def _declouder(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "campaign", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _states(ledger_url: str) -> dict[str, TileState]:
    try:
        return {r.tile_id: r.state for r in Ledger.open(ledger_url)}
    except Exception:  # noqa: BLE001  (a record being replaced while we poll: look again)
        return {}


def _wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float = CAMPAIGN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(
                f"campaign ended (rc {proc.returncode}) before the test could stop it:\n{out}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the campaign")
        time.sleep(0.2)


def _mtime(store: str) -> float:
    return Path(store, "zarr.json").stat().st_mtime


def test_driver_killed_mid_campaign_then_rerun_finishes_only_what_was_missing(
    ray_address: str, sample: dict[str, Any], tmp_path: Path
) -> None:
    path = write_config(tmp_path, sample, fit_actors=2, warm_start=True)
    layout = OutputLayout(str(tmp_path / "out"))
    fitted = lambda: {t for t, s in _states(layout.ledger).items() if s in DONE_STATES}  # noqa: E731

    # Run 1: killed outright (SIGKILL: no handler runs) once a tile is fitted (or already mosaicked: the
    # mosaic streams, so a fitted tile's cell may be written at once).
    proc = _declouder("run", str(path), "--address", ray_address, "--no-live", cwd=tmp_path)
    _wait_for(lambda: len(fitted()) >= 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    first = fitted()
    assert 1 <= len(first) < 4
    stamps = {t: _mtime(layout.fitted(t)) for t in first}
    ingested = {
        t: _mtime(layout.ingested(t)) for t, s in _states(layout.ledger).items() if s == TileState.INGESTED
    }

    # Run 2: resumes and finishes; nothing done before is redone.
    proc = _declouder("run", str(path), "--address", ray_address, "--no-live", cwd=tmp_path)
    out, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    assert proc.returncode == 0, out
    assert f"({len(first)} already done before this run)" in out
    ledger = Ledger.open(layout.ledger)
    assert {r.state for r in ledger} == {TileState.MOSAICKED}
    for tile_id, stamp in stamps.items():
        assert _mtime(layout.fitted(tile_id)) == stamp, f"{tile_id} was fitted again"
    for tile_id, stamp in ingested.items():
        assert _mtime(layout.ingested(tile_id)) == stamp, f"{tile_id} was ingested again"
    # Run 1 was killed and left no run record; run 2 ended and left one.
    (run,) = ledger.runs()
    fit_runs: dict[str, str] = {}
    for record in ledger:
        assert record.successes_at(Stage.FIT) == 1
        assert record.successes_at(Stage.INGEST) == 1
        fit_runs[record.tile_id] = next(
            a.run_id for a in record.attempts if a.stage == Stage.FIT and a.outcome == "ok"
        )
    killed_run = {fit_runs[t] for t in first}
    assert len(killed_run) == 1 and run.run_id not in killed_run
    assert {fit_runs[t] for t in fit_runs.keys() - first} == {run.run_id}
    # Warm starts: every fit saved its weights, and the tiles fitted once a neighbour was done (all of
    # run 2's: in a 2×2 block every tile neighbours every other) started from a neighbour's weights.
    records = list(ledger)
    assert all(Path(str(r.fit["weights_url"])).is_file() for r in records if r.fit)
    warm = {r.tile_id for r in records if r.fit and r.fit["warm_started"]}
    assert warm == fit_runs.keys() - first


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(
    ray_address: str, sample: dict[str, Any], tmp_path: Path
) -> None:
    # One fit actor: after the first fitted tile, three fits are left in series (~10 s here), so Ctrl-C
    # reaches the campaign while it still has work, even on a loaded machine (with two actors the last
    # fits could end before the first fitted record was read back from the ledger).
    path = write_config(tmp_path, sample, fit_actors=1)
    layout = OutputLayout(str(tmp_path / "out"))
    fitted = lambda: {t for t, s in _states(layout.ledger).items() if s in DONE_STATES}  # noqa: E731
    proc = _declouder("run", str(path), "--address", ray_address, "--no-live", cwd=tmp_path)
    _wait_for(lambda: len(fitted()) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "rerun the same command to resume" in out
    first = fitted()
    assert 1 <= len(first) < 4
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["interrupted"] is True and report["exit_code"] == 1
    ledger = Ledger.open(layout.ledger)
    (stopped,) = ledger.runs()
    assert stopped.interrupted
    # The work in flight at Ctrl-C is recorded as interrupted, and does not count towards the limit.
    interrupted = [(r, a) for r in ledger for a in r.attempts if a.outcome == "interrupted"]
    assert interrupted and all(r.attempts_at(a.stage) < a.number for r, a in interrupted)
    stamps = {t: _mtime(layout.fitted(t)) for t in first}

    proc = _declouder("run", str(path), "--address", ray_address, "--no-live", cwd=tmp_path)
    out, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    assert proc.returncode == 0, out
    assert {r.state for r in Ledger.open(layout.ledger)} == {TileState.MOSAICKED}
    assert all(_mtime(layout.fitted(t)) == stamp for t, stamp in stamps.items())


def test_poison_tile_fails_with_its_reason_and_the_rest_completes_on_s3(
    ray_address: str, sample: dict[str, Any], s3_endpoint: dict[str, Any], tmp_path: Path
) -> None:
    """The whole campaign writes to an S3 endpoint (moto's server): ledger, tiles, mosaic, outputs."""
    import fsspec

    output = "s3://declouder-test/poison-campaign"
    options = "storage_options = " + _toml_inline(s3_endpoint)
    path = write_config(
        tmp_path, sample, period=CLOUDY_PERIOD, fit_actors=2, output=output, top=options, warm_start=True
    )
    proc = _declouder("run", str(path), "--address", ray_address, "--no-live", cwd=tmp_path)
    out, _ = proc.communicate(timeout=CAMPAIGN_TIMEOUT_S)
    assert proc.returncode == 1, out
    assert f"FAILED {POISON_TILE} at fit (bad input)" in out and "no clear pixel" in out
    fs = fsspec.filesystem("s3", **s3_endpoint)
    report = json.loads(fs.cat_file(f"{output}/report.json"))
    assert (report["tiles_done"], report["tiles_failed"], report["exit_code"]) == (3, 1, 1)
    assert [f["tile_id"] for f in report["failed"]] == [POISON_TILE]
    assert "no clear pixel" in report["failed"][0]["error"]
    layout = OutputLayout(output)
    record = Ledger.open(layout.ledger, s3_endpoint).get(POISON_TILE)
    assert record is not None and record.permanent and record.failed_stage == Stage.FIT
    # Bad input is not retried: one attempt, and nothing written for it.
    assert record.attempts_at(Stage.FIT) == 1
    assert tile_status(layout.fitted(POISON_TILE), s3_endpoint) == "missing"
    for tile_id in {r.tile_id for r in Ledger.open(layout.ledger, s3_endpoint)} - {POISON_TILE}:
        assert tile_status(layout.fitted(tile_id), s3_endpoint) == "complete"
    # The mosaic still completes: the poisoned cell gets what its neighbours' overlaps cover.
    assert report["mosaics"] == {layout.mosaic(32631): "complete"}
    assert fs.exists(report["outputs"][layout.mosaic(32631)]["stac"])


def _toml_inline(value: Any) -> str:
    """A TOML inline value (tables, strings, numbers) for a config line."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)
