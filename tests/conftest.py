"""Shared fixtures: the committed real sample tiles, and real servers on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
WORLDCEREAL_TILE = DATA / "worldcereal_31ues.zarr"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def worldcereal_tile() -> Path:
    """The real WorldCereal 31UES sample as a tile store (read-only: copy it before writing)."""
    return WORLDCEREAL_TILE


@pytest.fixture
def worldcereal_copy(tmp_path: Path) -> Path:
    out = tmp_path / "tile.zarr"
    shutil.copytree(WORLDCEREAL_TILE, out)
    return out


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[dict[str, object]]:
    """A real S3-compatible endpoint (moto's server) on loopback; yields s3fs storage options.

    A bucket ``declouder-test`` exists. Credentials are dummies: moto accepts any.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        options: dict[str, object] = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="declouder-test")
        yield options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads() -> None:
    # Two cores here: keep torch from oversubscribing when Ray workers run beside the test process.
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _torch_one_thread() -> Iterator[None]:
    """One torch thread per test process: with several test runs sharing two cores, OpenMP threads spin
    against each other and a small fit step runs ~10× slower with 2 threads than with 1."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
