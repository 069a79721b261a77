"""Errors of the ingest stage. Each names the tile, item, asset or option at fault and says what to do."""

from __future__ import annotations

from tiler.errors import DeclouderError


class IngestError(DeclouderError):
    """Base of every ingest error."""


class IngestConfigError(IngestError, ValueError):
    """An ingest option (dates, bounds, bands, windows, profile) is invalid; raised before any request."""


class NoS2ItemsError(IngestError):
    """No usable Sentinel-2 item covers the tile in the period: nothing is written."""


class CatalogError(IngestError):
    """The catalogue (STAC API or ItemCollection file) could not be searched, even after retries."""


class CatalogMismatchError(IngestError):
    """Items carry the asset names of another catalogue (e.g. Earth Search ``blue`` vs PC ``B02``)."""


class AssetReadError(IngestError):
    """An asset could not be read, even after retries with back-off."""
