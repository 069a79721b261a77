"""What differs between STAC catalogues, as data: collections, asset keys, units, offsets, signing.

Everything catalogue-specific lives in :data:`PROFILES`; the rest of the ingest code asks a
:class:`CatalogProfile` instead of testing catalogue names. Facts from REFERENCE.md ("Catalogues").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

import pystac

from ingest.errors import CatalogMismatchError, IngestConfigError

PLANETARY_COMPUTER_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH_URL = "https://earth-search.aws.element84.com/v1"

#: Sentinel-2 L2A bands by their ESA names, in spectral order (no B10: cirrus is an L1C-only band).
S2_L2A_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
)
#: Native resolution of each band in metres (Sentinel-2 MSI user guide; PC item ``gsd``).
BAND_RESOLUTION: Mapping[str, int] = MappingProxyType(
    {
        "B01": 60,
        "B02": 10,
        "B03": 10,
        "B04": 10,
        "B05": 20,
        "B06": 20,
        "B07": 20,
        "B08": 10,
        "B8A": 20,
        "B09": 60,
        "B11": 20,
        "B12": 20,
        "SCL": 20,
    }
)
#: Processing baseline 04.00 (25 Jan 2022) shifts L2A digital numbers by BOA_ADD_OFFSET = -1000:
#: reflectance = (DN - 1000) / 10000 (ESA product notice; PlanetaryComputer issue #134).
BOA_OFFSET_BASELINE = (4, 0)
BOA_ADD_OFFSET_DN = 1000
#: First acquisitions processed with baseline 04.00, used only for items that lack ``s2:processing_baseline``.
BOA_OFFSET_FIRST_DAY = dt.date(2022, 1, 25)
#: Sentinel-1 polarisations of the tile store, in its order.
POLARIZATIONS: tuple[str, ...] = ("VV", "VH")


@dataclass(frozen=True)
class CatalogProfile:
    """How one catalogue names and encodes Sentinel-2 L2A and Sentinel-1 data."""

    name: str
    url: str
    hosts: tuple[str, ...]
    s2_collection: str
    #: Terrain-corrected, projected S1 backscatter; ``None`` where the catalogue has none.
    s1_collection: str | None
    band_assets: Mapping[str, str]
    scl_asset: str | None
    s1_assets: Mapping[str, str]
    #: S1 assets hold linear power (converted with 10·log10) rather than dB.
    s1_linear: bool = True
    s1_nodata: float = -32768.0
    cloud_cover_property: str = "eo:cloud_cover"
    #: Item property set to true where the provider already removed the BOA offset from the pixels.
    offset_applied_property: str | None = None
    #: Asset hrefs must be signed with ``planetary_computer.sign`` before reading.
    signed: bool = False
    notes: tuple[str, ...] = field(default=())

    def band_asset(self, band: str) -> str:
        return self.band_assets[band]

    def s2_asset_keys(self, bands: Sequence[str], with_scl: bool) -> tuple[str, ...]:
        keys = tuple(self.band_assets[b] for b in bands)
        return (*keys, self.scl_asset) if with_scl and self.scl_asset else keys

    def sign(self, item: pystac.Item) -> pystac.Item:
        """Signed copy of ``item`` for catalogues that need it (a no-op for every host but PC's blobs)."""
        if not self.signed or not any(_on_blob_storage(a.href) for a in item.assets.values()):
            return item  # what planetary_computer.sign does for other hosts, without its deep copy
        import planetary_computer

        # The subscription key (PC_SDK_SUBSCRIPTION_KEY) is optional and read by the SDK from the
        # environment; it is never logged here.
        return planetary_computer.sign(item)

    def boa_offset(self, item: pystac.Item) -> tuple[int, str]:
        """DN offset to subtract from this item's reflectance bands, and why (for the summary)."""
        props = item.properties
        if self.offset_applied_property and props.get(self.offset_applied_property) is True:
            return 0, f"{self.offset_applied_property} is true (provider removed the offset)"
        baseline = props.get("s2:processing_baseline")
        if baseline is None:
            day = item.datetime.date() if item.datetime else None
            if day is not None and day >= BOA_OFFSET_FIRST_DAY:
                return BOA_ADD_OFFSET_DN, "no s2:processing_baseline; acquired on/after 2022-01-25"
            return 0, "no s2:processing_baseline; acquired before 2022-01-25"
        if parse_baseline(baseline, item.id) >= BOA_OFFSET_BASELINE:
            return BOA_ADD_OFFSET_DN, f"processing baseline {baseline} >= 04.00"
        return 0, f"processing baseline {baseline} < 04.00"


#: Planetary Computer serves its assets from Azure blob storage: only such hrefs need a SAS token.
PC_BLOB_HOST_SUFFIX = ".blob.core.windows.net"


def _on_blob_storage(href: str) -> bool:
    return (urlparse(href).hostname or "").endswith(PC_BLOB_HOST_SUFFIX)


def parse_baseline(value: Any, item_id: str) -> tuple[int, int]:
    try:
        major, minor = str(value).split(".")
        return int(major), int(minor)
    except ValueError as err:
        raise CatalogMismatchError(
            f"item {item_id!r}: s2:processing_baseline {value!r} is not of the form NN.NN; fix the item "
            "or remove the property"
        ) from err


_PC_BANDS = {b: b for b in S2_L2A_BANDS}
#: Earth Search v1 names its assets by common name (REFERENCE.md; recorded items: tests/data/stac/templates).
_ES_BANDS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
}

PLANETARY_COMPUTER = CatalogProfile(
    name="planetary-computer",
    url=PLANETARY_COMPUTER_URL,
    hosts=("planetarycomputer.microsoft.com",),
    s2_collection="sentinel-2-l2a",
    s1_collection="sentinel-1-rtc",
    band_assets=MappingProxyType(_PC_BANDS),
    scl_asset="SCL",
    s1_assets=MappingProxyType({"VV": "vv", "VH": "vh"}),
    signed=True,
    notes=("PC does not remove the BOA offset: it is removed here from s2:processing_baseline",),
)
EARTH_SEARCH = CatalogProfile(
    name="earth-search",
    url=EARTH_SEARCH_URL,
    hosts=("earth-search.aws.element84.com",),
    s2_collection="sentinel-2-l2a",
    # Earth Search's sentinel-1-grd is in radar geometry (not terrain-corrected or projected): pair its
    # S2 with PC's sentinel-1-rtc through IngestConfig.s1_catalog.
    s1_collection=None,
    band_assets=MappingProxyType(_ES_BANDS),
    scl_asset="scl",
    s1_assets=MappingProxyType({"VV": "vv", "VH": "vh"}),
    offset_applied_property="earthsearch:boa_offset_applied",
    notes=("earthsearch:boa_offset_applied is sometimes wrong (earth-search issues #66, #71)",),
)
PROFILES: Mapping[str, CatalogProfile] = MappingProxyType(
    {p.name: p for p in (PLANETARY_COMPUTER, EARTH_SEARCH)}
)


def profile_named(name: str) -> CatalogProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise IngestConfigError(
            f"catalogue profile {name!r} is unknown; choose one of {sorted(PROFILES)} or 'auto'"
        ) from None


def profile_for_url(url: str) -> CatalogProfile | None:
    """The profile of a well-known catalogue URL; ``None`` for any other (local servers, files)."""
    host = urlparse(url).hostname or ""
    for profile in PROFILES.values():
        if host in profile.hosts:
            return profile
    return None


def _matches(profile: CatalogProfile, keys: set[str], bands: Sequence[str]) -> int:
    return sum(profile.band_assets[b] in keys for b in bands)


def detect_profile(items: Iterable[pystac.Item], bands: Sequence[str]) -> CatalogProfile:
    """The profile whose band asset names the S2 items carry (``B02``: PC, ``blue``: Earth Search)."""
    keys: set[str] = set()
    for item in items:
        keys.update(item.assets)
    best = max(PROFILES.values(), key=lambda p: _matches(p, keys, bands))
    if _matches(best, keys, bands) == 0:
        raise CatalogMismatchError(
            f"the Sentinel-2 items carry none of the band assets of any known catalogue (asset keys: "
            f"{sorted(keys)[:12]}); known: "
            + "; ".join(f"{p.name}: {[p.band_assets[b] for b in bands[:3]]}..." for p in PROFILES.values())
        )
    return best


def check_profile(profile: CatalogProfile, items: Sequence[pystac.Item], bands: Sequence[str]) -> None:
    """Refuse items whose asset names belong to another catalogue than ``profile`` (names mixed up)."""
    keys: set[str] = set()
    for item in items:
        keys.update(item.assets)
    if _matches(profile, keys, bands) > 0:
        return
    for other in PROFILES.values():
        if other is not profile and _matches(other, keys, bands) > 0:
            sample = [other.band_assets[b] for b in bands[:3]]
            expected = [profile.band_assets[b] for b in bands[:3]]
            raise CatalogMismatchError(
                f"the Sentinel-2 items carry {other.name} asset names ({', '.join(sample)}, ...) but the "
                f"catalogue profile is {profile.name} (expects {', '.join(expected)}, ...): pass "
                f"--profile {other.name} (or --profile auto)"
            )
    raise CatalogMismatchError(
        f"the Sentinel-2 items carry none of the {profile.name} band assets "
        f"({', '.join(profile.band_assets[b] for b in bands)}); asset keys seen: {sorted(keys)[:12]}"
    )


def canonical_band(name: str) -> str:
    """Validate one requested band name; catalogue asset names (e.g. ``blue``) are refused with a hint."""
    if name in S2_L2A_BANDS:
        return name
    for profile in PROFILES.values():
        for band, key in profile.band_assets.items():
            if key == name:
                raise IngestConfigError(
                    f"band {name!r} is an asset name of {profile.name}; give bands by their Sentinel-2 names "
                    f"(here {band!r}); valid: {', '.join(S2_L2A_BANDS)}"
                )
    raise IngestConfigError(
        f"band {name!r} is not a Sentinel-2 L2A band; valid: {', '.join(S2_L2A_BANDS)} (B10 is L1C-only)"
    )
