"""The campaign report: what was done, what failed and why, and what it cost, from the ledger alone.

Everything here is computed from ledger records (plus the runs' GPU time held), so the report of a
campaign resumed five times counts each tile once and each GPU-second once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from campaign.ledger import FitSpan, Ledger, RunRecord, Stage, TileDigest, TileRecord, TileState

#: Seconds per hour, for GPU-hours.
HOUR_S = 3600.0
DONE_STATES = frozenset({TileState.FITTED, TileState.MOSAICKED})
MOSAIC_COMPLETE = "complete"
#: Failed tiles the text summary names one by one; the rest are counted by reason.
FAILED_LISTED = 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FailedTile(_Frozen):
    tile_id: str
    stage: Stage | None
    error: str | None
    attempts: int
    permanent: bool


class GpuUse(_Frozen):
    """Fits one GPU ran, and the most that ever ran on it at the same time (from the fits' own clocks)."""

    node_id: str
    gpu_id: str
    fits: int
    max_concurrent: int


class CampaignReport(_Frozen):
    name: str
    output: str
    fingerprint: str
    run_id: str
    started: float
    ended: float
    interrupted: bool
    tiles_planned: int
    tiles_done: int
    tiles_failed: int
    tiles_pending: int
    #: Tiles without Sentinel-2 data (sea, outside every footprint): settled, neither done nor failed.
    tiles_empty: int = 0
    #: Tiles found already done at the start of this run (a resume skipped them).
    tiles_skipped: int
    km2_planned: float
    km2_done: float
    fit_attempts: int
    #: Fit attempts whose worker died (actor killed, OOM, node lost) and whose tile was requeued.
    worker_deaths: int
    fit_seconds: float
    gpu_seconds_fits: float
    gpu_seconds_held: float
    fits_per_gpu: int
    gpus: tuple[GpuUse, ...]
    failed: tuple[FailedTile, ...]
    #: Mosaic URL -> "complete", or why it is not.
    mosaics: dict[str, str] = {}
    #: Mosaic URL -> its outputs (quicklooks, cogs, stac) and where they are.
    outputs: dict[str, dict[str, str]] = {}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mosaics_incomplete(self) -> dict[str, str]:
        return {url: state for url, state in self.mosaics.items() if state != MOSAIC_COMPLETE}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def wall_seconds(self) -> float:
        return self.ended - self.started

    @computed_field  # type: ignore[prop-decorator]
    @property
    def km2_per_gpu_hour(self) -> float | None:
        """Area delivered per GPU-hour the campaign's fit actors held (what a cluster bills)."""
        if self.gpu_seconds_held <= 0:
            return None
        return self.km2_done / (self.gpu_seconds_held / HOUR_S)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_concurrent_per_gpu(self) -> int:
        return max((g.max_concurrent for g in self.gpus), default=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def exit_code(self) -> int:
        """0 when every planned tile is done and mosaicked; 1 when any failed or was left undone."""
        finished = self.tiles_failed == 0 and self.tiles_pending == 0 and not self.mosaics_incomplete
        return 0 if finished and not self.interrupted else 1


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an interval ending when another starts does not overlap it)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:  # ends (-1) sort before starts (+1) at equal times
        current += step
        most = max(most, current)
    return most


def gpu_use(records: Iterable[TileRecord]) -> tuple[GpuUse, ...]:
    """Per GPU (node, id): how many fits ran on it and the most at once."""
    return _gpu_use(f for record in records for f in TileDigest.of(record).fits)


def _gpu_use(fits: Iterable[FitSpan]) -> tuple[GpuUse, ...]:
    spans: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for started, ended, _, _, node_id, gpu_ids in fits:
        for gpu in gpu_ids:
            spans[(node_id or "?", gpu)].append((started, ended))
    return tuple(
        GpuUse(node_id=node, gpu_id=gpu, fits=len(s), max_concurrent=max_overlap(s))
        for (node, gpu), s in sorted(spans.items())
    )


def build_report(
    *,
    name: str,
    output: str,
    fingerprint: str,
    run_id: str,
    started: float,
    ended: float,
    interrupted: bool,
    planned: Sequence[tuple[str, float]],
    records: Iterable[TileRecord] | Ledger,
    runs: Iterable[RunRecord],
    skipped: int,
    fits_per_gpu: int,
    mosaics: Mapping[str, str] | None = None,
    outputs: Mapping[str, Mapping[str, str]] | None = None,
) -> CampaignReport:
    """Assemble the report; ``planned`` is (tile id, km²) of every tile of the plan.

    ``records`` may be a :class:`Ledger`: then the figures come from its digests (no record is parsed
    but those of failed tiles, whose errors the report lists), which is what keeps ``declouder status``
    fast at hundreds of thousands of tiles.
    """
    # Rows (tile id, state, failed stage, fit spans): a ledger's digests as stored, or the records'.
    rows: dict[str, Sequence[Any]]
    if isinstance(records, Ledger):
        rows = {row[0]: row for row in records.digest_rows()}
        full: Callable[[str], TileRecord | None] = records.get
    else:
        by_id = {r.tile_id: r for r in records}
        rows = {t: TileDigest.of(r) for t, r in by_id.items()}
        full = by_id.get
    km2 = dict(planned)
    in_plan = [rows[t] for t in km2 if t in rows]
    done = [row[0] for row in in_plan if row[1] in DONE_STATES]
    failed_ids = sorted(row[0] for row in in_plan if row[1] == TileState.FAILED)
    failed = [r for r in map(full, failed_ids) if r is not None]
    empty = sum(1 for row in in_plan if row[1] == TileState.EMPTY)
    fits: list[FitSpan] = [f for row in in_plan for f in row[3]]
    seconds = [max(0.0, f[1] - f[0]) for f in fits]
    return CampaignReport(
        name=name,
        output=output,
        fingerprint=fingerprint,
        run_id=run_id,
        started=started,
        ended=ended,
        interrupted=interrupted,
        tiles_planned=len(km2),
        tiles_done=len(done),
        tiles_failed=len(failed),
        tiles_pending=len(km2) - len(done) - len(failed) - empty,
        tiles_empty=empty,
        tiles_skipped=skipped,
        km2_planned=sum(km2.values()),
        km2_done=sum(km2[t] for t in done),
        fit_attempts=len(fits),
        worker_deaths=sum(1 for f in fits if f[2] == "worker_died"),
        fit_seconds=sum(seconds),
        gpu_seconds_fits=sum(s * f[3] for s, f in zip(seconds, fits, strict=True)),
        gpu_seconds_held=sum(run.gpu_seconds_held for run in runs),
        fits_per_gpu=fits_per_gpu,
        gpus=_gpu_use(fits),
        failed=tuple(
            FailedTile(
                tile_id=r.tile_id,
                stage=r.failed_stage,
                error=r.error,
                attempts=r.attempts_at(r.failed_stage) if r.failed_stage else 0,
                permanent=r.permanent,
            )
            for r in failed
        ),
        mosaics=dict(mosaics or {}),
        outputs={url: dict(kinds) for url, kinds in (outputs or {}).items()},
    )


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def summary_lines(report: CampaignReport) -> list[str]:
    """The human summary printed at the end of a run."""
    rate = report.km2_per_gpu_hour
    lines = [
        f"campaign {report.name!r} -> {report.output}" + ("  (interrupted)" if report.interrupted else ""),
        f"tiles: {report.tiles_done}/{report.tiles_planned} done, {report.tiles_failed} failed, "
        f"{report.tiles_pending} pending ({report.tiles_skipped} already done before this run)"
        + (f", {report.tiles_empty} empty (no Sentinel-2 data)" if report.tiles_empty else ""),
        f"area: {report.km2_done:,.1f} of {report.km2_planned:,.1f} km²",
        f"wall time (this run): {_duration(report.wall_seconds)}; fit time (all runs): "
        f"{_duration(report.fit_seconds)} over {report.fit_attempts} fit attempts "
        f"({report.worker_deaths} lost to dead workers)",
        f"GPU time: {report.gpu_seconds_held / HOUR_S:.3f} GPU-h held by fit actors, "
        f"{report.gpu_seconds_fits / HOUR_S:.3f} GPU-h in fits"
        + (f"; {rate:,.1f} km² per GPU-hour" if rate is not None else "; no GPUs used (CPU fits)"),
    ]
    if report.gpus:
        lines.append(
            f"GPU pinning: at most {report.max_concurrent_per_gpu} fits at once per GPU "
            f"(allowed {report.fits_per_gpu}) over {len(report.gpus)} GPUs"
        )
    for url, state in report.mosaics.items():
        lines.append(f"mosaic ({state}): {url}")
        lines.extend(f"  {kind}: {where}" for kind, where in report.outputs.get(url, {}).items())
    for tile in report.failed[:FAILED_LISTED]:
        lines.append(f"FAILED {tile.tile_id} at {tile.stage} ({_failure_kind(tile)}): {tile.error}")
    rest = report.failed[FAILED_LISTED:]
    if rest:
        # At continental scale thousands of tiles can fail for one reason: group the rest by reason.
        reasons = Counter((t.stage, _failure_kind(t), t.error) for t in rest)
        lines.append(
            f"... and {len(rest):,} more failed tiles (every one in `declouder status --json`), by reason:"
        )
        lines.extend(
            f"  {n:,} at {stage} ({kind}): {error}" for (stage, kind, error), n in reasons.most_common()
        )
    return lines


def _failure_kind(tile: FailedTile) -> str:
    return "bad input" if tile.permanent else f"after {tile.attempts} attempts"
