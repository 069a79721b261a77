"""The internal-learning schedule: windows of consecutive dates, their order, and whose output counts.

Zhang et al.'s inpainting_dataset.py / inpainting_test.py (REFERENCE.md "Schedule semantics"): windows are
every run of ``size`` consecutive dates at ``stride`` (N − 4 windows of 5 for N dates at stride 1); each
pass visits every window once in a fresh random order and trains it for a number of iterations; one
network is shared by all windows and never re-initialised. A date's output comes from the window whose
centre is nearest to it (the window where it is the centre, or the first / last window for the first /
last dates). A series shorter than a window is one window of all its dates.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def windows(n_dates: int, size: int, stride: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of every window; the last window always ends at the last date."""
    if n_dates <= 0:
        raise ValueError(f"a series needs at least one date, got {n_dates}")
    if n_dates <= size:
        return [(0, n_dates)]
    starts = list(range(0, n_dates - size + 1, stride))
    if starts[-1] != n_dates - size:
        starts.append(n_dates - size)
    return [(s, s + size) for s in starts]


def output_windows(n_dates: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """For every date, the index of the window its output is taken from (nearest centre; ties: earlier)."""
    centres = np.array([(start + stop - 1) / 2 for start, stop in spans])
    choice = np.empty(n_dates, dtype=np.int64)
    for date in range(n_dates):
        inside = [i for i, (start, stop) in enumerate(spans) if start <= date < stop]
        choice[date] = min(inside, key=lambda i: (abs(centres[i] - date), i))
    return choice


def visit_order(n_windows: int, passes: int, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """(pass, window) in training order: every pass shuffles all windows afresh."""
    for pass_index in range(passes):
        for window in rng.permutation(n_windows):
            yield pass_index, int(window)


def visit_groups(
    n_windows: int, passes: int, group: int, rng: np.random.Generator
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """(pass, windows) in training order, ``group`` windows trained together per step.

    Every pass shuffles all windows afresh (the same draws as :func:`visit_order`) and cuts the shuffled
    order into groups of ``group``; with ``group == 1`` the order is exactly :func:`visit_order`'s.
    """
    for pass_index in range(passes):
        order = [int(w) for w in rng.permutation(n_windows)]
        for start in range(0, n_windows, group):
            yield pass_index, tuple(order[start : start + group])
