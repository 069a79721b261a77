"""An object store that throttles (HTTP 503 SlowDown) is backed off, not failed.

Real components: moto's S3 server on loopback behind a real HTTP proxy (tests/s3_proxy.py) that
answers ``503 SlowDown`` to every n-th request of each method; real s3fs/botocore clients with
declouder's retry settings (``tiler.object_store.S3_RETRIES``); real tile stores (the committed
WorldCereal sample) and a real ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import xarray as xr
from s3_proxy import ThrottleLog, ThrottleRule, throttling_proxy

from campaign.ledger import Ledger, TileRecord
from tiler.object_store import S3_RETRIES, with_retries
from tiler.store import open_tile, tile_status, write_tile

#: Tile stores: every 12th request of each method answered 503 (a small tile's write and read are ~300
#: requests, mostly small metadata objects; each 503 costs a random back-off of up to 1 s, so this keeps
#: the test short).
TILE_EVERY = 12
#: Ledger: every third request of each method answered 503 (one PUT per record).
LEDGER_EVERY = 3

Throttled = Callable[[int], AbstractContextManager[tuple[dict[str, Any], ThrottleLog]]]


@pytest.fixture
def throttled_s3(s3_endpoint: dict[str, Any]) -> Throttled:
    """Storage options that reach moto through a proxy throttling every ``every``-th request of each
    HTTP method, and the proxy's log."""

    @contextmanager
    def proxy(every: int) -> Iterator[tuple[dict[str, Any], ThrottleLog]]:
        target = s3_endpoint["client_kwargs"]["endpoint_url"]
        with throttling_proxy(target, ThrottleRule(every=every, per_method=True)) as (url, log):
            options = {**s3_endpoint, "client_kwargs": {**s3_endpoint["client_kwargs"], "endpoint_url": url}}
            options["skip_instance_cache"] = True  # a fresh client: no connection reused across proxies
            yield options, log

    return proxy


def small_tile(worldcereal_tile: Path) -> xr.Dataset:
    return open_tile(str(worldcereal_tile)).isel(time=slice(0, 2), x=slice(0, 16), y=slice(0, 16)).load()


def test_tile_store_write_and_read_ride_out_throttling(
    worldcereal_tile: Path, throttled_s3: Throttled
) -> None:
    ds = small_tile(worldcereal_tile)
    url = "s3://declouder-test/throttle/tile.zarr"
    with throttled_s3(TILE_EVERY) as (options, log):
        write_tile(ds, url, overwrite=True, storage_options=options)
        after_write = len(log.throttled)
        assert tile_status(url, options) == "complete"
        back = open_tile(url, storage_options=options).load()
    for var in ("s2", "s1", "mask", "s1_time"):
        np.testing.assert_array_equal(back[var].values, ds[var].values)
    assert after_write > 0, "the proxy throttled no write"
    assert len(log.throttled) > after_write, "the proxy throttled no read"
    assert {"PUT", "GET"} <= log.methods_throttled()
    assert len(log.throttled) == sum(n // TILE_EVERY for n in log.by_method.values())


def test_ledger_writes_ride_out_throttling(s3_endpoint: dict[str, Any], throttled_s3: Throttled) -> None:
    url = "s3://declouder-test/throttle/ledger"
    tiles = [f"32631_c{c:04d}_r1597" for c in range(8)]
    with throttled_s3(LEDGER_EVERY) as (options, log):
        ledger = Ledger.open(url, options)
        for tile_id in tiles:
            ledger.put(TileRecord(tile_id=tile_id, epsg=32631, area_km2=25.9))
    assert "PUT" in log.methods_throttled()
    # Read back past the proxy: every record reached the store.
    direct = Ledger.open(url, s3_endpoint)
    assert sorted(r.tile_id for r in direct) == tiles
    fs = fsspec.filesystem("s3", **s3_endpoint)
    assert len(fs.find("declouder-test/throttle/ledger")) >= len(tiles)


def test_with_retries_is_added_for_s3_only() -> None:
    options = with_retries("s3://b/t.zarr", {"key": "k"})
    assert options["config_kwargs"]["retries"] == S3_RETRIES
    assert options["key"] == "k"
    assert with_retries("/data/t.zarr", None) == {}
    assert with_retries("gs://b/t.zarr", {"token": "anon"}) == {"token": "anon"}
    own = {"config_kwargs": {"retries": {"mode": "standard", "max_attempts": 3}, "read_timeout": 5}}
    assert with_retries("s3://b/t.zarr", own) == own  # a caller's own retry settings win
