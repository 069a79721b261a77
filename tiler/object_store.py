"""Object-store settings shared by every store declouder opens: how S3 requests are retried.

Kept apart from :mod:`tiler.store` (and free of heavy imports) so the campaign ledger can use it without
loading xarray.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["S3_RETRIES", "with_retries"]

#: How S3 (and S3-compatible) requests are retried: botocore's "standard" mode, which retries 5xx
#: answers, SlowDown and the other throttling codes, and connection errors, with truncated exponential
#: back-off with full jitter (a random wait in [0, min(2^attempt, 20)] s), and 10 attempts instead of its
#: default 3 (up to ~1+2+4+8+16+20×4 ≈ 111 s of waiting for one request), enough to ride out a
#: throttling burst. That is AWS's advice for 503 SlowDown (back off and retry;
#: docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html) and botocore's documented
#: retry configuration (boto3 "Retries" guide). "adaptive" mode would add client-side rate limiting but
#: is marked experimental there; set it per store with ``config_kwargs={"retries": {...}}`` if wanted.
#: s3fs adds its own 5 tries around each call (s3fs.core._error_wrapper: waits 0.1–0.8 s, also on
#: "SlowDown").
S3_RETRIES: dict[str, Any] = {"mode": "standard", "max_attempts": 10}


def with_retries(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with :data:`S3_RETRIES` added for ``s3://`` URLs, unless retries are set.

    The one place declouder configures object-store back-off: the tile store, the mosaic stores (via
    :func:`tiler.store.zarr_store`) and the campaign ledger all open their filesystems through it.
    A caller's own ``config_kwargs={"retries": ...}`` wins.
    """
    options = dict(storage_options or {})
    if not url.startswith(("s3://", "s3a://")):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_RETRIES))
    options["config_kwargs"] = config
    return options
