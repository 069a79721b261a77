"""Pair every Sentinel-2 date with the nearest Sentinel-1 acquisition of one orbit direction.

One direction per tile: ascending and descending passes see the ground from opposite sides (and, in dual
pol, at other local times), so mixing them would feed the fit backscatter that changes for reasons
unrelated to the surface. Within that direction, each S2 date takes the nearest acquisition inside the
window (ties: the earlier one); dates with none get NaT and an all-NaN ``s1``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pystac

from ingest.search import item_time

ORBIT_PROPERTY = "sat:orbit_state"
RELATIVE_ORBIT_PROPERTY = "sat:relative_orbit"
ORBITS = ("ascending", "descending")
NAT = np.datetime64("NaT", "ns")
#: The Earth turns 15 degrees of longitude per hour of solar time.
DEGREES_PER_HOUR = 15.0


@dataclass(frozen=True)
class S1Acquisition:
    """One S1 pass over the tile: the items (slices) of one orbit direction and track on one UTC day."""

    time: np.datetime64
    orbit: str | None
    relative_orbit: int | None
    items: tuple[pystac.Item, ...]

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)


@dataclass(frozen=True)
class Pairing:
    """For each S2 date: the index of its S1 acquisition (or -1), that acquisition's time, the gap."""

    orbit: str | None
    index: np.ndarray  # int, -1 where unpaired
    s1_time: np.ndarray  # datetime64[ns], NaT where unpaired
    gap_days: np.ndarray  # float, NaN where unpaired

    @property
    def n_paired(self) -> int:
        return int((self.index >= 0).sum())


def solar_day(when: dt.datetime, longitude: float) -> dt.date:
    """Local mean solar date at ``longitude``: one satellite pass never straddles it (UTC dates do, near
    the antimeridian)."""
    return (when + dt.timedelta(hours=longitude / DEGREES_PER_HOUR)).date()


def group_acquisitions(items: Iterable[pystac.Item], *, longitude: float = 0.0) -> list[S1Acquisition]:
    """Group S1 items into passes (same solar day, orbit direction and track), sorted by time."""
    groups: dict[tuple[dt.date, str | None, int | None], list[pystac.Item]] = {}
    for item in items:
        when = item_time(item)
        key = (
            solar_day(when, longitude),
            item.properties.get(ORBIT_PROPERTY),
            item.properties.get(RELATIVE_ORBIT_PROPERTY),
        )
        groups.setdefault(key, []).append(item)
    acquisitions = []
    for (_, orbit, relative), members in groups.items():
        members.sort(key=lambda i: (item_time(i), i.id))
        times = np.array([np.datetime64(item_time(i).replace(tzinfo=None), "ns") for i in members])
        # The pass's time is its first slice's: slices of one pass are seconds apart.
        acquisitions.append(
            S1Acquisition(time=times.min(), orbit=orbit, relative_orbit=relative, items=tuple(members))
        )
    acquisitions.sort(key=lambda a: (a.time, a.orbit or "", a.item_ids))
    return acquisitions


def _nearest(s2_times: np.ndarray, s1_times: np.ndarray, window: np.timedelta64) -> np.ndarray:
    """Index into ``s1_times`` of the nearest within ``window`` for every S2 date, -1 where none."""
    index = np.full(s2_times.size, -1, dtype=np.int64)
    if s1_times.size == 0:
        return index
    for i, t in enumerate(s2_times):
        gaps = np.abs(s1_times - t)
        j = int(np.argmin(gaps))  # first minimum: the earlier acquisition on a tie (times are sorted)
        if gaps[j] <= window:
            index[i] = j
    return index


def pair_s1(
    s2_times: Sequence[np.datetime64] | np.ndarray,
    acquisitions: Sequence[S1Acquisition],
    *,
    window_days: float,
    orbit: str = "auto",
) -> Pairing:
    """Pair S2 dates with S1 passes of one direction: ``orbit``, or with ``auto`` the direction that pairs
    the most dates (then the smaller total gap, then ascending)."""
    s2 = np.asarray(s2_times, dtype="datetime64[ns]")
    window = np.timedelta64(round(window_days * 86_400e9), "ns")
    candidates = (
        [orbit] if orbit != "auto" else sorted({a.orbit for a in acquisitions}, key=lambda o: o or "")
    )

    best: tuple[tuple[int, float, str], str | None, np.ndarray, list[int]] | None = None
    for direction in candidates:
        subset = [k for k, a in enumerate(acquisitions) if a.orbit == direction]
        times = np.array([acquisitions[k].time for k in subset], dtype="datetime64[ns]")
        index = _nearest(s2, times, window)
        paired = index >= 0
        total_gap = (
            float(np.abs(times[index[paired]] - s2[paired]).astype(np.float64).sum()) if paired.any() else 0.0
        )
        score = (-int(paired.sum()), total_gap, direction or "")
        if best is None or score < best[0]:
            best = (score, direction, index, subset)

    if best is None:
        empty = np.full(s2.size, -1, dtype=np.int64)
        return Pairing(
            orbit=None if orbit == "auto" else orbit,
            index=empty,
            s1_time=np.full(s2.size, NAT),
            gap_days=np.full(s2.size, np.nan),
        )
    _, direction, local, subset = best
    # Indices refer to the full acquisition list, so callers can look the pass up directly.
    global_index = np.array([subset[j] if j >= 0 else -1 for j in local], dtype=np.int64)
    s1_time = np.array(
        [acquisitions[j].time if j >= 0 else NAT for j in global_index], dtype="datetime64[ns]"
    )
    gap = (s1_time - s2).astype("timedelta64[s]").astype(np.float64) / 86_400.0
    gap[global_index < 0] = np.nan
    return Pairing(orbit=direction, index=global_index, s1_time=s1_time, gap_days=gap)
