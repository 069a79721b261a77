"""The schedule: windows, whose output counts, iteration counts, determinism; on real pixels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fit.arrays import TileArrays
from fit.config import SMOKE
from fit.declouder import ProgressEvent, decloud
from fit.schedule import output_windows, visit_order, windows
from tiler.store import open_tile


def test_windows_of_five_at_stride_one() -> None:
    spans = windows(30, 5, 1)
    assert len(spans) == 26  # N - 4 (REFERENCE.md)
    assert spans[0] == (0, 5) and spans[-1] == (25, 30)
    assert windows(3, 5) == [(0, 3)]  # shorter than a window: one window of everything
    assert windows(10, 5, 3)[-1] == (5, 10)  # a stride that does not divide still reaches the end


def test_each_date_comes_from_the_window_it_is_centred_in() -> None:
    spans = windows(30, 5, 1)
    chosen = output_windows(30, spans)
    assert list(chosen[:3]) == [0, 0, 0]  # dates 0-1 from the first window, date 2 is its centre
    assert all(chosen[f] == f - 2 for f in range(2, 28))
    assert list(chosen[-3:]) == [25, 25, 25]


def test_every_pass_visits_every_window_once_in_a_new_order() -> None:
    order = list(visit_order(6, 3, np.random.default_rng(0)))
    passes = [[w for p, w in order if p == k] for k in range(3)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


@pytest.fixture(scope="module")
def real_crop(worldcereal_tile: Path) -> TileArrays:
    """8 real dates (2018-08..10), 24×24 px of the WorldCereal sample."""
    ds = open_tile(str(worldcereal_tile)).isel(time=slice(10, 18), y=slice(0, 24), x=slice(0, 24)).load()
    return TileArrays.from_dataset(ds)


def run(tile: TileArrays, seed: int = 0, **changes: object):
    config = SMOKE.replace(**changes)
    events: list[ProgressEvent] = []
    result = decloud(
        tile.reflectance, tile.mask, tile.s1, config, bands=tile.bands, days=tile.days,
        device="cpu", seed=seed, progress=events.append,
    )  # fmt: skip
    return result, events


def test_schedule_runs_the_specified_iterations_and_windows(real_crop: TileArrays) -> None:
    result, events = run(real_crop, passes=2, iterations_per_window=3)
    assert result.windows == 4  # 8 dates, windows of 5
    assert result.iterations == 2 * 4 * 3 == len(events)  # few iterations: one event each
    assert [e.iteration for e in events] == list(range(1, 25))
    per_window = Counter(e.window for e in events)
    assert per_window == {w: 2 * 3 for w in range(4)}
    per_pass = Counter(e.pass_index for e in events)
    assert per_pass == {0: 12, 1: 12}
    assert np.isfinite([e.loss for e in events]).all()
    assert result.prediction.shape == real_crop.reflectance.shape
    assert len(result.loss_curve) == 24


def test_deterministic_on_cpu(real_crop: TileArrays) -> None:
    a, _ = run(real_crop, seed=3)
    b, _ = run(real_crop, seed=3)
    c, _ = run(real_crop, seed=4)
    assert np.array_equal(a.prediction, b.prediction)
    assert np.array_equal(a.loss_curve, b.loss_curve)
    assert not np.array_equal(a.prediction, c.prediction)


def test_series_shorter_than_a_window(real_crop: TileArrays) -> None:
    short = real_crop.dates(0, 3)
    result, events = run(short, passes=2, iterations_per_window=2)
    assert result.windows == 1 and len(events) == 4
    assert result.prediction.shape == short.reflectance.shape


def test_guide_with_gap_channels(real_crop: TileArrays) -> None:
    result, events = run(real_crop, guide=True, guide_gaps=True, iterations_per_window=2)
    assert len(events) == 8 and np.isfinite(result.prediction).all()


def test_start_at_guide_begins_exactly_at_the_interpolation(real_crop: TileArrays) -> None:
    """With the output layer zeroed, an (almost) untrained fit returns the guide itself; without it, not."""
    from fit.declouder import GUIDE_EPS, guide_series, trusted_clear

    settings = dict(guide=True, keep_clear=False, lr=1e-12, passes=1, iterations_per_window=1)
    started, _ = run(real_crop, start_at_guide=True, **settings)
    plain, _ = run(real_crop, **settings)
    config = SMOKE.replace(guide=True)
    _, clear = trusted_clear(real_crop.reflectance, real_crop.mask, real_crop.bands, config)
    guide = guide_series(np.nan_to_num(real_crop.reflectance), clear, real_crop.days)
    expected = np.clip(guide, GUIDE_EPS, 1 - GUIDE_EPS)
    np.testing.assert_allclose(started.prediction, expected, atol=1e-5)
    assert np.abs(plain.prediction - expected).max() > 0.01


def test_start_at_guide_needs_the_guide() -> None:
    from fit.errors import FitConfigError

    with pytest.raises(FitConfigError, match="start_at_guide only with guide"):
        SMOKE.replace(guide=False, start_at_guide=True)
