"""Ingest: STAC search -> S1/S2 pairing -> stackstac load on a tile grid -> masks -> tile store.

The entry point is :func:`ingest_tile` with an :class:`IngestConfig`. Names are imported lazily (PEP 562),
so importing a light submodule (``ingest.catalogs``, ``ingest.config``) does not pull in xarray or
stackstac, and ``declouder --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IngestConfig": "ingest.config",
    "TileBox": "ingest.config",
    "AssetReadError": "ingest.errors",
    "CatalogError": "ingest.errors",
    "CatalogMismatchError": "ingest.errors",
    "IngestConfigError": "ingest.errors",
    "IngestError": "ingest.errors",
    "NoS2ItemsError": "ingest.errors",
    "DateSummary": "ingest.ingest",
    "IngestSummary": "ingest.ingest",
    "ProgressEvent": "ingest.ingest",
    "SkippedItem": "ingest.ingest",
    "ingest_tile": "ingest.ingest",
    "ItemCollectionSource": "ingest.search",
    "ItemSource": "ingest.search",
    "StacApiSource": "ingest.search",
    "write_sample_catalog": "ingest.sample",
}
__all__ = [
    "AssetReadError",
    "CatalogError",
    "CatalogMismatchError",
    "DateSummary",
    "IngestConfig",
    "IngestConfigError",
    "IngestError",
    "IngestSummary",
    "ItemCollectionSource",
    "ItemSource",
    "NoS2ItemsError",
    "ProgressEvent",
    "SkippedItem",
    "StacApiSource",
    "TileBox",
    "ingest_tile",
    "write_sample_catalog",
]

if TYPE_CHECKING:
    from ingest.config import IngestConfig, TileBox
    from ingest.errors import (
        AssetReadError,
        CatalogError,
        CatalogMismatchError,
        IngestConfigError,
        IngestError,
        NoS2ItemsError,
    )
    from ingest.ingest import DateSummary, IngestSummary, ProgressEvent, SkippedItem, ingest_tile
    from ingest.sample import write_sample_catalog
    from ingest.search import ItemCollectionSource, ItemSource, StacApiSource


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
