"""Benchmark of the campaign ledger: loading and reporting on N tile records, old layout vs index.

Run from the repository root::

    python bench/ledger.py [--sizes 20000 350000] [--s3-records 5000] [--keep DIR]

For each size N, on the local disk:

1. *old path*: N per-tile JSON objects ``ledger/tiles/<id>.json`` (the layout before the index), as a
   campaign left them; ``Ledger.load`` reads and parses each one (what ``declouder status`` did);
2. the ledger compacts them into its index (``Ledger.compact``: one object) and is loaded again: the
   *new path*, then the campaign report is built from it (``build_report`` + ``summary_lines``,
   the work of ``declouder status`` after planning);
3. one more compaction after 5,000 new records (``COMPACT_EVERY``), and the mean time of a put.

On the S3-compatible endpoint (moto's server on loopback, as the tests start it), the same at
``--s3-records``, with the store's operation and byte counts.

Records are realistic in size and shape: an ingest, a fit and a mosaic attempt with worker, node and
GPU fields, and the ingest and fit summaries the campaign stores (scalars); 3 % of the tiles failed.
Every figure is measured in this one process; ratios compare the two paths in the same run.

Measured here (``python bench/ledger.py --sizes 20000 350000 --s3-records 5000``; 2 CPU cores shared with
several other benchmarks, load average ~28, so absolute times are inflated and noisy)::

    size, store        status after planning: old -> new     load: old -> new      index    puts
    20,000 local       30.44 s -> 2.18 s  (14.0×)            29.38 s -> 0.86 s      0.6 MB   6.06 ms
    350,000 local      307.78 s -> 23.49 s (13.1×)           288.17 s -> 8.28 s     9.9 MB   12.93 ms
    5,000 S3 (moto)    35.56 s -> 0.17 s  (209×)             35.51 s -> 0.12 s      0.2 MB   9.26 ms

Loading the index: 3 lists + 1 read (9.9 MB at 350,000 records) against 3 lists + 350,000 reads
(648 MB). "puts": mean time of 5,000 more puts, each a journal object (fsync on a local disk, one PUT on
S3), including the one compaction they trigger. Folding an old-layout ledger into its first index took
1057.6 s at 350,000 records, nearly all of it deleting the 350,000 old files (once per ledger).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

# Run as a script, this file's folder leads sys.path, and bench/campaign.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from campaign.ledger import (  # noqa: E402
    COMPACT_EVERY,
    INDEX_DIR,
    JOURNAL_DIR,
    TILES_DIR,
    Attempt,
    FsspecLedgerStore,
    Ledger,
    Stage,
    TileRecord,
)
from campaign.report import build_report, summary_lines  # noqa: E402

#: Placeholder replaced by each tile's id in the record templates.
TILE = "32631_c9999_r9999"
RUN = "20261129T101010-abcdef"
#: One tile in this many failed (its record has an error and a failed stage).
FAILED_EVERY = 33
#: The templates' timestamps start at T0 = 1,700,000,000 s; each tile's are shifted (record_json).
T0 = 1_700_000_000.0
T0_PREFIX = b"1700000"


def templates() -> tuple[bytes, bytes]:
    """JSON of a finished tile's record and of a failed one, with :data:`TILE` as the id."""
    record = TileRecord(tile_id=TILE, epsg=32631, area_km2=25.92)
    t0 = T0
    ingest = {
        "tile_id": TILE,
        "out_url": f"s3://bucket/campaign/tiles/{TILE}.zarr",
        "catalog": "planetary-computer",
        "profile": "default",
        "s1_orbit": "ascending",
        "n_dates": 73,
        "n_skipped": 4,
        "n_warnings": 0,
        "seconds": 9.81,
    }
    fit = {
        "tile_id": TILE,
        "out_url": f"s3://bucket/campaign/fit/{TILE}.zarr",
        "preset": "fast",
        "input": "s2",
        "iterations": 1800,
        "windows": 12,
        "network_depth": 4,
        "seconds": 312.4,
        "device": "cuda:0 NVIDIA H100 80GB HBM3",
        "peak_memory_bytes": 7_812_345_678,
        "peak_memory_kind": "cuda",
        "final_loss": 0.01234,
        "clear_fraction": 0.41,
        "refined_away_fraction": 0.02,
        "scheduled_iterations": 2000,
        "stopped_early": True,
        "precision": "bf16",
        "warm_started": True,
        "weights_url": f"s3://bucket/campaign/weights/{TILE}.pt",
    }
    common: dict[str, Any] = {"number": 1, "run_id": RUN, "outcome": "ok"}
    record = record.record(
        Attempt(
            stage=Stage.INGEST,
            started=t0,
            ended=t0 + 9.8,
            worker="ingest-12345",
            node_id="a" * 56,
            pid=12345,
            **common,
        ),
        ingest=ingest,
    )
    fitted = record.record(
        Attempt(
            stage=Stage.FIT,
            started=t0 + 10,
            ended=t0 + 320,
            worker="fit-3",
            node_id="b" * 56,
            pid=2345,
            gpu_ids=("3",),
            cuda_visible_devices="3",
            gpu_share=0.5,
            device="cuda:0",
            **common,
        ),
        fit=fit,
    )
    done = fitted.record(
        Attempt(
            stage=Stage.MOSAIC,
            started=t0 + 330,
            ended=t0 + 340,
            worker="mosaic-777",
            node_id="c" * 56,
            pid=777,
            **common,
        )
    )
    failed = record.record(
        Attempt(
            stage=Stage.FIT,
            number=1,
            run_id=RUN,
            started=t0 + 10,
            ended=t0 + 12,
            outcome="error",
            error="FitError: every date of the tile is cloudy",
            permanent=True,
            gpu_ids=("1",),
            node_id="b" * 56,
            gpu_share=0.5,
        )
    ).failed(Stage.FIT, "FitError: every date of the tile is cloudy", permanent=True)
    return done.model_dump_json().encode(), failed.model_dump_json().encode()


def tile_ids(n: int) -> list[str]:
    return [f"32631_c{k % 2000:04d}_r{k // 2000:04d}" for k in range(n)]


def record_json(k: int, tile_id: str, done: bytes, failed: bytes) -> bytes:
    """Tile ``k``'s record: the template with its id, and its own timestamps (every tile's times differ,
    as in a campaign, so the index compresses like real records, not like copies of one)."""
    data = (failed if k % FAILED_EVERY == 0 else done).replace(TILE.encode(), tile_id.encode())
    return data.replace(T0_PREFIX, str(int(T0_PREFIX) + 7 * k + 3).encode())


def old_layout(fs: fsspec.AbstractFileSystem, root: str, ids: list[str]) -> int:
    """Write the records as the old layout did (one object per tile); returns the bytes written."""
    done, failed = templates()
    fs.makedirs(f"{root}/{TILES_DIR}", exist_ok=True)
    written = 0
    for start in range(0, len(ids), 20_000):
        objects = {
            f"{root}/{TILES_DIR}/{t}.json": record_json(k, t, done, failed)
            for k, t in enumerate(ids[start : start + 20_000], start)
        }
        fs.pipe(objects)  # batched (concurrent PUTs on an object store)
        written += sum(len(v) for v in objects.values())
    return written


def status(ledger: Ledger, ids: list[str]) -> list[str]:
    """What ``declouder status`` does once the plan is known: the report from the ledger, as text."""
    report = build_report(
        name="bench",
        output="-",
        fingerprint="-",
        run_id=RUN,
        started=0.0,
        ended=1.0,
        interrupted=False,
        planned=[(t, 25.92) for t in ids],
        records=ledger,
        runs=[],
        skipped=0,
        fits_per_gpu=2,
    )
    return summary_lines(report)


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def run(url: str, n: int, storage_options: dict[str, Any] | None, label: str) -> None:
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    ids = tile_ids(n)
    _, setup_s = timed(old_layout, fs, root, ids)
    print(f"\n[{label}] {n:,} records (old layout written in {setup_s:.1f} s, not part of the figures)")

    store = FsspecLedgerStore(url, storage_options)
    old = Ledger(store)
    _, old_load = timed(old.load)
    old_ops = dict(store.ops)
    lines, old_status = timed(status, old, ids)
    assert len(old) == n and any("FAILED" in line for line in lines)

    _, compact_s = timed(old.compact)
    del old  # the old path holds every record parsed
    index_bytes = sum(fs.du(f"{root}/{INDEX_DIR}", total=False).values())
    new_store = FsspecLedgerStore(url, storage_options)
    new = Ledger(new_store)
    _, new_load = timed(new.load)
    new_ops = dict(new_store.ops)
    new_lines, new_status = timed(status, new, ids)
    assert new_lines == lines, "the report from the index must equal the report from the records"

    # Steady state: COMPACT_EVERY more records (a put each), which ends in one compaction.
    done, failed = templates()
    extra = [
        TileRecord.model_validate_json(record_json(k, t, done, failed))
        for k, t in enumerate(tile_ids(n + COMPACT_EVERY)[n:], n)
    ]
    started = time.perf_counter()
    for record in extra:
        new.put(record)
    puts_s = time.perf_counter() - started
    compactions = len(extra) // COMPACT_EVERY  # the ledger compacts every COMPACT_EVERY puts
    journal_left = len(fs.find(f"{root}/{JOURNAL_DIR}")) if fs.exists(f"{root}/{JOURNAL_DIR}") else 0

    old_total, new_total = old_load + old_status, new_load + new_status
    rows = [
        ("load (Ledger.load)", old_load, new_load),
        ("report (build_report + summary)", old_status, new_status),
        ("status total (after planning)", old_total, new_total),
    ]
    print(f"  {'':34} {'old: per-tile objects':>22} {'new: index':>12} {'old/new':>8}")
    for name, a, b in rows:
        print(f"  {name:34} {a:>20.2f} s {b:>10.2f} s {a / b:>7.1f}×")
    print(
        f"  store operations to load: old {old_ops['list']} lists + {old_ops['read']:,} reads "
        f"({old_ops['bytes_read'] / 1e6:.0f} MB); new {new_ops['list']} lists + {new_ops['read']} reads "
        f"({new_ops['bytes_read'] / 1e6:.1f} MB)"
    )
    print(
        f"  index: one object of {index_bytes / 1e6:.1f} MB for {n:,} records; first compaction "
        f"(fold {n:,} old objects, write index, delete them) {compact_s:.1f} s"
    )
    print(
        f"  {COMPACT_EVERY:,} more puts: {puts_s / len(extra) * 1e3:.2f} ms per put including "
        f"{compactions} compaction(s) of {n + COMPACT_EVERY:,} records; journal entries left: {journal_left}"
    )


@contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """moto's S3 server on a free loopback port with the bucket ``declouder-bench``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        options = {
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
        ).create_bucket(Bucket="declouder-bench")
        yield options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 350_000])
    parser.add_argument("--s3-records", type=int, default=5_000, help="0: skip the S3 endpoint")
    parser.add_argument("--keep", type=Path, default=None, help="Write here and keep the ledgers.")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="declouder-bench-ledger-"))
    print(f"compaction every {COMPACT_EVERY:,} records; local disk under {work}")
    for n in args.sizes:
        run(str(work / f"ledger_{n}"), n, None, "local disk")
        shutil.rmtree(work / f"ledger_{n}", ignore_errors=True)
    if args.s3_records:
        with moto_server() as options:
            run("s3://declouder-bench/ledger", args.s3_records, options, "S3 endpoint (moto, loopback)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
