"""Find the items of a collection over a tile and a period: a STAC API or a saved ItemCollection.

Both sit behind :class:`ItemSource`, so tests and the campaign can pass their own (e.g. an ItemCollection
searched once for a whole region). Filtering by cloud cover happens later, on the client side, from item
properties: servers differ in their support of ``query`` (some silently return nothing).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import pystac
from shapely.geometry import box, shape

from ingest.errors import CatalogError

BBox = tuple[float, float, float, float]
T = TypeVar("T")
#: Items per page of a STAC API search: Planetary Computer and Earth Search both cap ``limit`` at 1000;
#: a 30-date tile with same-day duplicates needs ~60 S2 items.
PAGE_LIMIT = 250
#: Status codes worth retrying: throttling and server-side failures (PC answers 429 under load).
RETRY_STATUS = (429, 500, 502, 503, 504)


class ItemSource(Protocol):
    """Where items come from. ``search`` returns every item of ``collection`` whose footprint
    intersects ``bbox`` (lon/lat) with an acquisition time within [start 00:00, end 24:00) UTC."""

    description: str

    def search(self, collection: str, bbox: BBox, start: dt.date, end: dt.date) -> list[pystac.Item]: ...


def datetime_range(start: dt.date, end: dt.date) -> str:
    """RFC 3339 interval covering whole days, ``end`` included."""
    return f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999Z"


class StacApiSource:
    """A STAC API searched with pystac-client; transient failures are retried with exponential back-off."""

    def __init__(
        self,
        url: str,
        *,
        retries: int,
        backoff_s: float,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.description = f"STAC API {url}"
        self._retries = retries
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._headers = dict(headers or {})
        self._client: Any = None

    def _open(self) -> Any:
        """The pystac-client ``Client`` (imported lazily: ``declouder --help`` stays fast)."""
        if self._client is None:
            from pystac_client import Client
            from pystac_client.stac_api_io import StacApiIO
            from urllib3 import Retry

            retry = Retry(
                total=self._retries,
                connect=self._retries,
                read=self._retries,
                status=self._retries,
                backoff_factor=self._backoff_s,
                status_forcelist=RETRY_STATUS,
                allowed_methods=None,  # POST /search is a read: retry it like GET
                raise_on_status=False,
            )
            stac_io = StacApiIO(headers=self._headers, max_retries=retry, timeout=self._timeout_s)
            # Client.open resets its StacApiIO's timeout to its own argument: pass it to both.
            self._client = self._guard(
                lambda: Client.open(self.url, stac_io=stac_io, timeout=self._timeout_s), "open the catalogue"
            )
        return self._client

    def _guard(self, call: Callable[[], T], what: str) -> T:
        """Run one catalogue request, turning its failures (after urllib3's retries) into CatalogError."""
        import requests
        from pystac_client.exceptions import APIError

        try:
            return call()
        except (APIError, requests.RequestException) as err:
            status = getattr(err, "status_code", None)
            detail = (
                f"HTTP {status}: {str(err)[:200]}" if status else f"{type(err).__name__}: {str(err)[:300]}"
            )
            raise CatalogError(
                f"{self.description}: could not {what} after {self._retries} retries with back-off "
                f"({detail}); check the URL and the network, or retry later (--retries raises the attempts)"
            ) from err

    def search(self, collection: str, bbox: BBox, start: dt.date, end: dt.date) -> list[pystac.Item]:
        client = self._open()
        search = client.search(
            collections=[collection], bbox=list(bbox), datetime=datetime_range(start, end), limit=PAGE_LIMIT
        )
        items = self._guard(lambda: list(search.items()), f"search collection {collection!r}")
        return [item for item in items if item.collection_id in (None, collection)]


def item_time(item: pystac.Item) -> dt.datetime:
    """Acquisition time of an item (``datetime``, or the start of its range), timezone-aware UTC."""
    when = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class ItemCollectionSource:
    """A saved ItemCollection (GeoJSON FeatureCollection of items), filtered locally like a search."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(str(path).removeprefix("file://"))
        self.description = f"ItemCollection {self.path}"
        try:
            self._items = list(pystac.ItemCollection.from_file(str(self.path)))
        except (OSError, ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError) as err:
            raise CatalogError(
                f"{self.description}: cannot read it as a STAC ItemCollection ({err}); write one with "
                "`stac-client search URL ... > items.json`"
            ) from err

    def search(self, collection: str, bbox: BBox, start: dt.date, end: dt.date) -> list[pystac.Item]:
        area = box(*bbox)
        first = dt.datetime.combine(start, dt.time.min, dt.UTC)
        last = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, dt.UTC)
        found = []
        for item in self._items:
            if item.collection_id != collection:
                continue
            footprint = shape(item.geometry) if item.geometry else box(*cast(list[float], item.bbox))
            if footprint.intersects(area) and first <= item_time(item) < last:
                found.append(item)
        return found


def open_source(catalog: str, *, retries: int, backoff_s: float, timeout_s: float) -> ItemSource:
    """The item source for a catalogue option: an http(s) URL is a STAC API, anything else a file."""
    if catalog.startswith(("http://", "https://")):
        return StacApiSource(catalog, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
    return ItemCollectionSource(catalog)
