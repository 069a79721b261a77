"""`ray job submit` to a Ray head started by the test runs a campaign to completion.

The head is a real `ray start --head --block` with 2 CPUs and 2 fake GPUs on loopback ports of its own
and its own temp dir; stopping it (SIGTERM to that process) stops exactly the processes it started.
Ray 2.60 turns token authentication on for local clusters: RAY_AUTH_MODE=disabled on both sides
(REFERENCE.md, "Ray 2.60").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign_data import sample_catalog, write_config
from conftest import free_port

from campaign.ledger import Ledger, TileState

#: One tile is enough to show the job runs the whole pipeline on the cluster.
ONE_TILE = {"cols": (1026,), "rows": (10039,)}
HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420


@pytest.fixture
def ray_head() -> Iterator[dict[str, str]]:
    """A Ray head (2 CPUs, 2 fake GPUs) with its dashboard's job API on a free loopback port."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    dashboard = free_port()
    # A short temp dir: Ray's socket paths must stay under the 107-byte limit of AF_UNIX.
    temp_dir = tempfile.mkdtemp(prefix="rayj-", dir="/tmp")
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    command += [f"{flag}={port}" for flag, port in ports.items()]
    command += ["--num-cpus=2", "--num-gpus=2", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    command += [f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not come up (rc {head.poll()})") from None
                time.sleep(0.5)
        yield {"address": url, **env}
    finally:
        head.terminate()  # `ray start --block` stops the processes it started, and only those
        head.wait(timeout=60)


@pytest.mark.slow  # about a minute on an idle 2-core machine (the head alone takes 15-20 s to start)
def test_ray_job_submit_runs_a_campaign(ray_head: dict[str, str], tmp_path: Path) -> None:
    sample = sample_catalog(tmp_path / "catalog", **ONE_TILE)
    output = tmp_path / "campaign-out"  # absolute: the job runs in a copy of the working dir
    job_dir = tmp_path / "job"
    write_config(job_dir, sample, output=str(output), fit_actors=1)
    env = {k: v for k, v in ray_head.items() if k != "address"}
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        ray_head["address"],
        "--working-dir",
        str(job_dir),
    ]
    command += ["--", "declouder", "run", "campaign.toml", "--no-live"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "succeeded" in out
    assert "joined the Ray cluster" in out  # the job's driver joined the head, it started no Ray of its own
    assert "1/1 done, 0 failed" in out
    records = list(Ledger.open(str(output / "ledger")))
    assert [r.state for r in records] == [TileState.MOSAICKED]
    # The fit ran on the head's (fake) GPU, pinned by Ray.
    fit = next(a for a in records[0].attempts if a.stage == "fit" and a.outcome == "ok")
    assert fit.gpu_ids and fit.cuda_visible_devices == fit.gpu_ids[0]
