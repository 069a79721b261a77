"""The rich live view of a running campaign (used by the CLI only; the driver just emits events)."""

from __future__ import annotations

import time
from collections import deque
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from campaign.driver import CampaignProgress
from campaign.ledger import TileState
from campaign.report import DONE_STATES, HOUR_S

#: Events a person wants to see scroll by; the others only update the counts.
NOTABLE = frozenset({"failed", "worker_died", "retry", "reingest", "empty", "planned", "finished"})
#: Lines of recent events kept under the counts.
RECENT_EVENTS = 6
#: Redraws per second: enough to follow, cheap enough for campaigns of many thousand tiles.
REFRESH_PER_S = 4


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class LiveView:
    """A progress callback that draws tiles per stage, failures, ETA and GPU-hours.

    On a terminal it redraws in place; elsewhere (``ray job logs``, CI) it prints one line per notable
    event and per finished tile, so a log file tells the same story.
    """

    def __init__(self, console: Console, name: str) -> None:
        self._console = console
        self._name = name
        self._last: CampaignProgress | None = None
        self._recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        )
        self._task = self._bar.add_task("tiles done", total=None)
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self._console.is_terminal:
            self._live = Live(self._render(), console=self._console, refresh_per_second=REFRESH_PER_S)
            self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(kind, err, tb)

    def __call__(self, event: CampaignProgress) -> None:
        self._last = event
        done = sum(event.states.get(str(s), 0) for s in DONE_STATES)
        self._bar.update(self._task, total=event.total, completed=done)
        stamp = time.strftime("%H:%M:%S")
        if event.kind in NOTABLE or event.kind in ("fitted", "mosaicked"):
            self._recent.append(f"{stamp} {event.message}")
        if self._live is not None:
            self._live.update(self._render())
        elif event.kind in NOTABLE or event.kind in ("ingested", "fitted", "mosaicked", "actor_ready"):
            self._console.print(
                f"{stamp} [{done}/{event.total}] {event.message}", highlight=False, soft_wrap=True
            )

    def _render(self) -> RenderableType:
        event = self._last
        table = Table(title=f"campaign {self._name}", title_justify="left", expand=False)
        columns = ("planned", "ingesting", "ingested", "fitting", "fitted", "mosaicked", "empty", "failed")
        for column in columns:
            table.add_column(column, justify="right")
        if event is not None:
            states = event.states
            table.add_row(
                str(states.get(TileState.PLANNED, 0)),
                str(event.ingesting),
                str(states.get(TileState.INGESTED, 0)),
                str(event.fitting),
                str(states.get(TileState.FITTED, 0)),
                str(states.get(TileState.MOSAICKED, 0)),
                str(states.get(TileState.EMPTY, 0)),
                f"[red]{states.get(TileState.FAILED, 0)}[/]" if states.get(TileState.FAILED) else "0",
            )
        facts = (
            "starting..."
            if event is None
            else (
                f"elapsed {_clock(event.elapsed_s)}   ETA {_clock(event.eta_s)}   "
                f"GPU-h held {event.gpu_seconds_held / HOUR_S:.3f}   GPU-h in fits "
                f"{event.gpu_seconds_fits / HOUR_S:.3f}"
            )
        )
        return Group(table, self._bar, facts, *self._recent)
