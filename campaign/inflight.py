"""Work in flight: the Ray futures a run waits on, what each one is, and how many of each kind."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Work:
    """What a future in flight stands for."""

    kind: str  # ingest | fit | ready | mosaic_init | mosaic_region | mosaic_finalize | mosaic_outputs
    tile_id: str | None
    submitted: float
    slot: int | None = None
    zone: int | None = None
    overwrite: bool = False
    actor: str | None = None
    warm: bool = False


class Inflight:
    """Futures in flight (at most the concurrency the run allows), with a count per kind kept as they come
    and go, so asking how many ingests or mosaic tasks run is O(1)."""

    def __init__(self) -> None:
        self._work: dict[Any, Work] = {}
        self._kinds: Counter[str] = Counter()

    def add(self, ref: Any, work: Work) -> None:
        self._work[ref] = work
        self._kinds[work.kind] += 1

    def pop(self, ref: Any) -> Work:
        work = self._work.pop(ref)
        self._kinds[work.kind] -= 1
        return work

    def count(self, kind: str) -> int:
        return self._kinds[kind]

    def mosaics(self) -> int:
        return sum(n for kind, n in self._kinds.items() if kind.startswith("mosaic"))

    def refs(self) -> list[Any]:
        return list(self._work)

    def items(self) -> list[tuple[Any, Work]]:
        return list(self._work.items())

    def clear(self) -> None:
        self._work.clear()
        self._kinds.clear()

    def __len__(self) -> int:
        return len(self._work)

    def __bool__(self) -> bool:
        return bool(self._work)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._work)
