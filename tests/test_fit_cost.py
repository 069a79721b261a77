"""Fit cost levers on real data: held-out early stopping, batched windows, warm starts, the device path,
and the FLOP accounting the benchmark and ``declouder estimate`` rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fit.arrays import TileArrays
from fit.config import PRESETS, SMOKE, FitConfig
from fit.cost import fits_per_gpu, tile_flops
from fit.declouder import EarlyStop, decloud, device_path, split_holdout
from fit.errors import FitConfigError, WarmStartError
from fit.masks import MaskRefinement
from fit.network import EncoderDecoder3D
from fit.schedule import visit_groups, visit_order
from fit.tile import fit_tile, load_weights, weights_url
from tiler.store import open_tile, write_tile

#: 8 real dates (2018-10..11, clear and cloudy) of 24×24 px of the WorldCereal sample, as in test_fit_tile.
CROP = {"time": slice(10, 18), "y": slice(8, 32), "x": slice(16, 40)}
#: The neighbouring crop (shifted 24 px east) for warm starts.
NEIGHBOUR = {"time": slice(10, 18), "y": slice(8, 32), "x": slice(40, 64)}
TINY = SMOKE.replace(name="tiny", iterations_per_window=2)


@pytest.fixture(scope="module")
def tile(worldcereal_tile: Path) -> TileArrays:
    return TileArrays.from_dataset(open_tile(str(worldcereal_tile)).isel(CROP).load())


def run(tile: TileArrays, config: FitConfig, reflectance: np.ndarray | None = None, **kwargs: object):
    return decloud(
        tile.reflectance if reflectance is None else reflectance,
        tile.mask,
        tile.s1,
        config,
        bands=tile.bands,
        days=tile.days,
        device="cpu",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"holdout_fraction": 0.5}, "holdout_fraction"),
        ({"perceptual_every": 0}, "perceptual_every"),
        ({"windows_per_step": 0}, "windows_per_step"),
        ({"warm_passes": 0}, "warm_passes"),
        ({"precision": "fp8"}, "precision"),
        ({"memory_format": "nhwc"}, "memory_format"),
        ({"compile": "max"}, "compile"),
        ({"stop_patience": 0}, "stop_patience"),
        ({"weight_average": 1.0}, "weight_average"),
    ],
)
def test_bad_cost_settings_are_refused_by_name(change: dict[str, object], rule: str) -> None:
    with pytest.raises(FitConfigError, match=rf"fit settings 'fast' break: .*{rule}"):
        PRESETS["fast"].replace(**change)


def test_schedule_counts_batched_and_warm_steps() -> None:
    fast = PRESETS["fast"].replace(passes=4, iterations_per_window=10)
    assert fast.total_iterations(30) == 4 * 26 * 10
    assert fast.replace(windows_per_step=4).total_iterations(30) == 4 * 7 * 10  # ceil(26 / 4) = 7
    assert fast.replace(warm_passes=1).total_iterations(30, warm=True) == 1 * 26 * 10
    assert fast.replace(warm_passes=1).total_iterations(30) == fast.total_iterations(30)
    # settings with the new fields survive the store attributes' JSON round trip
    lever = fast.replace(holdout_fraction=0.05, windows_per_step=2, precision="bf16", compile="default")
    assert FitConfig.from_dict(lever.to_dict()) == lever


def test_grouped_visits_keep_the_published_order_and_cover_every_window() -> None:
    single = list(visit_groups(26, 3, 1, np.random.default_rng(7)))
    assert [(p, g[0]) for p, g in single] == list(visit_order(26, 3, np.random.default_rng(7)))
    grouped = list(visit_groups(26, 3, 4, np.random.default_rng(7)))
    for pass_index in range(3):
        seen = [w for p, g in grouped if p == pass_index for w in g]
        assert sorted(seen) == list(range(26))
    assert [len(g) for _, g in grouped[:7]] == [4, 4, 4, 4, 4, 4, 2]


def test_holdout_is_a_disjoint_share_of_the_clear_pixels(tile: TileArrays) -> None:
    clear = tile.mask == 0
    learn, held = split_holdout(clear, 0.2, seed=3)
    assert not (learn & held).any() and np.array_equal(learn | held, clear)
    assert held.sum() / clear.sum() == pytest.approx(0.2, abs=0.03)
    same_learn, same_held = split_holdout(clear, 0.2, seed=3)
    assert np.array_equal(held, same_held) and np.array_equal(learn, same_learn)
    assert not np.array_equal(held, split_holdout(clear, 0.2, seed=4)[1])


def test_early_stop_waits_for_a_plateau() -> None:
    improving = EarlyStop(visits_per_pass=3, patience=2, min_delta=0.01)
    assert not any(improving.update(1.0 / (i + 1)) for i in range(30))
    flat = EarlyStop(visits_per_pass=3, patience=2, min_delta=0.01)
    stops = [flat.update(v) for v in [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]]
    # pass means 0.9, 0.833, 0.8 (each a new best), then 0.8 twice: within 1 % twice = patience spent
    assert stops.index(True) == 6 and flat.current == pytest.approx(0.8)


def test_held_out_pixels_never_reach_the_loss(tile: TileArrays) -> None:
    """Changing the values of held-out pixels changes nothing the network learns (bit for bit on CPU);
    the same change on learned pixels does (the control that the comparison can fail)."""
    config = TINY.replace(
        holdout_fraction=0.2, stop_patience=1000.0, keep_clear=False, masks=MaskRefinement(enabled=False)
    )
    base = run(tile, config)
    clear = base.clear
    learn, held = split_holdout(clear, config.holdout_fraction, seed=0)
    red_edge = [tile.bands.index("B06"), tile.bands.index("B07")]

    def changed(pixels: np.ndarray) -> np.ndarray:
        reflectance = tile.reflectance.copy()
        band_view = reflectance[:, red_edge]
        band_view[np.broadcast_to(pixels[:, None], band_view.shape)] *= 0.5
        reflectance[:, red_edge] = band_view
        return reflectance

    assert np.array_equal(run(tile, config, changed(held)).prediction, base.prediction)
    assert not np.allclose(run(tile, config, changed(learn)).prediction, base.prediction)
    assert np.isfinite(base.holdout_loss) and base.holdout_loss > 0


def test_early_stopping_ends_a_long_schedule_sooner(tile: TileArrays) -> None:
    config = TINY.replace(passes=40, iterations_per_window=2, holdout_fraction=0.1, stop_patience=0.5)
    result = run(tile, config)
    assert result.stopped_early and result.iterations < result.scheduled_iterations == 40 * 4 * 2
    assert result.iterations % config.iterations_per_window == 0
    assert result.loss_curve[-1, 0] == result.iterations
    assert np.isfinite(result.prediction).all()


def test_snapshots_score_the_fit_along_the_way_without_changing_it(tile: TileArrays) -> None:
    config = TINY.replace(name="tiny-3", passes=3)
    per_pass = config.steps_per_pass(len(tile.times)) * config.iterations_per_window
    seen: dict[int, tuple[int, np.ndarray]] = {}
    watched = run(
        tile,
        config,
        keep_weights=True,
        snapshot=lambda passes, steps, prediction: seen.__setitem__(passes, (steps, prediction)),
        snapshot_passes=(1, 3),
    )
    plain = run(tile, config, keep_weights=True)
    # Snapshots touch neither the optimiser, the draws nor BatchNorm's statistics: the same fit, bit for bit.
    np.testing.assert_array_equal(watched.prediction, plain.prediction)
    assert watched.weights is not None and plain.weights is not None
    for key, value in plain.weights.items():
        torch.testing.assert_close(watched.weights[key], value, rtol=0, atol=0, msg=key)
    assert sorted(seen) == [1, 3]  # pass 2 was not asked for
    assert seen[1][0] == per_pass and seen[3][0] == 3 * per_pass
    np.testing.assert_array_equal(seen[3][1], plain.prediction)  # the last pass is the result
    assert seen[1][1].shape == plain.prediction.shape and seen[1][1].dtype == np.float32
    assert seen[1][1].min() >= 0 and seen[1][1].max() <= 1
    assert not np.array_equal(seen[1][1], plain.prediction)  # two more passes changed the network


def test_weight_average_predicts_with_averaged_weights_and_trains_the_same(tile: TileArrays) -> None:
    config = TINY.replace(name="tiny-3", passes=3)
    plain = run(tile, config, keep_weights=True)
    averaged = run(tile, config.replace(weight_average=0.9), keep_weights=True)
    # The average never feeds back into training: the same steps, losses and final weights (BatchNorm's
    # running statistics aside: the final inference pass runs through the average instead).
    np.testing.assert_array_equal(averaged.loss_curve, plain.loss_curve)
    assert averaged.weights is not None and plain.weights is not None
    for key, value in plain.weights.items():
        if "running_" not in key and "num_batches" not in key:
            torch.testing.assert_close(averaged.weights[key], value, rtol=0, atol=0, msg=key)
    # ...but the prediction comes from the average, which lags the last step's weights.
    assert np.abs(averaged.prediction - plain.prediction).max() > 1e-3
    # With almost no memory the average is the last step's weights.
    near_last = run(tile, config.replace(weight_average=1e-6))
    np.testing.assert_allclose(near_last.prediction, plain.prediction, atol=1e-4)


def test_batched_windows_fit_in_fewer_steps(tile: TileArrays) -> None:
    result = run(tile, TINY.replace(windows_per_step=2))
    assert result.iterations == result.scheduled_iterations == 1 * 2 * 2  # 4 windows in 2 steps of 2
    assert result.windows == 4 and np.isfinite(result.prediction).all()
    assert result.prediction.min() >= 0.0 and result.prediction.max() <= 1.0


def test_device_path_resolution_and_channels_last_network(tile: TileArrays) -> None:
    cpu = torch.device("cpu")
    auto = device_path(TINY, cpu)
    assert (auto.precision, auto.memory_format, auto.compile) == ("fp32", "contiguous", "off")
    # The same weights give the same output in either layout (the forward pass is layout-independent).
    torch.manual_seed(0)
    net = EncoderDecoder3D(2, 10, (8, 16, 16), (8, 16, 16), (4, 4, 4))
    x = torch.rand(1, 2, 5, 24, 24)
    plain = net(x)
    last = net.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(last, plain, atol=1e-5, rtol=1e-5)
    fitted = run(tile, TINY.replace(memory_format="channels_last"))
    assert fitted.memory_format == "channels_last" and np.isfinite(fitted.prediction).all()


def test_bf16_autocast_runs_on_cpu_and_stays_close(tile: TileArrays) -> None:
    plain = run(tile, TINY)
    bf16 = run(tile, TINY.replace(precision="bf16"))
    assert bf16.precision == "bf16" and bf16.prediction.dtype == np.float32
    assert np.isfinite(bf16.prediction).all()
    # bf16 keeps 8 bits of mantissa: after a short fit the two agree to a few hundredths of reflectance
    assert np.abs(bf16.prediction - plain.prediction).mean() < 0.05


@pytest.mark.slow
def test_compiled_step_matches_eager(tile: TileArrays) -> None:
    """The compiled step computes what the eager one does: the first step's loss (same initial weights)
    agrees to rounding. Whole fits are compared loosely, like bf16's: Adam's first updates are ±lr whatever
    a gradient's size, so rounding-level differences in near-zero gradients flip whole updates."""
    plain = run(tile, TINY)
    compiled = run(tile, TINY.replace(compile="default"))
    assert compiled.compile == "default"
    assert compiled.loss_curve[0, 1] == pytest.approx(plain.loss_curve[0, 1], rel=1e-4)
    assert np.isfinite(compiled.prediction).all()
    assert np.abs(compiled.prediction - plain.prediction).mean() < 0.05


def _store(worldcereal_tile: Path, where: Path, crop: dict[str, slice]) -> str:
    write_tile(open_tile(str(worldcereal_tile)).isel(crop).load(), str(where))
    return str(where)


def test_warm_start_from_a_saved_neighbour(worldcereal_tile: Path, tmp_path: Path) -> None:
    config = TINY.replace(passes=3, warm_passes=1)
    first = _store(worldcereal_tile, tmp_path / "a.zarr", CROP)
    second = _store(worldcereal_tile, tmp_path / "b.zarr", NEIGHBOUR)
    done = fit_tile(first, str(tmp_path / "a_out.zarr"), preset=config, device="cpu", save_weights=True)
    assert done.weights_url == weights_url(str(tmp_path / "a_out.zarr"))
    assert Path(done.weights_url).is_file() and not done.warm_started
    saved = load_weights(done.weights_url, None)
    assert "head.weight" in saved

    cold = fit_tile(second, str(tmp_path / "b_cold.zarr"), preset=config, device="cpu")
    warm = fit_tile(
        second, str(tmp_path / "b_warm.zarr"), preset=config, device="cpu", init_weights=done.weights_url
    )
    assert warm.warm_started and warm.iterations == 1 * 4 * 2 < cold.iterations == 3 * 4 * 2
    assert open_tile(str(tmp_path / "b_warm.zarr")).attrs["fit_warm_started"] is True
    assert warm.weights_url is None and not Path(weights_url(str(tmp_path / "b_warm.zarr"))).exists()


def test_warm_start_weights_are_checked(worldcereal_tile: Path, tmp_path: Path) -> None:
    store = _store(worldcereal_tile, tmp_path / "a.zarr", CROP)
    with pytest.raises(WarmStartError, match=r"not found.*--save-weights"):
        fit_tile(
            store, str(tmp_path / "o.zarr"), preset=TINY, device="cpu", init_weights=str(tmp_path / "x.pt")
        )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WarmStartError, match=r"cannot read warm-start weights"):
        fit_tile(store, str(tmp_path / "o.zarr"), preset=TINY, device="cpu", init_weights=str(bad))
    other = tmp_path / "other.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(WarmStartError, match=r"'worldcereal.*do not fit this tile's network.*same preset"):
        fit_tile(store, str(tmp_path / "o.zarr"), preset=TINY, device="cpu", init_weights=str(other))
    assert not (tmp_path / "o.zarr").exists()


def test_weights_round_trip_through_s3(worldcereal_tile: Path, s3_endpoint: dict) -> None:
    store = "s3://declouder-test/fit-cost/in.zarr"
    ds = open_tile(str(worldcereal_tile)).isel(CROP).load()
    write_tile(ds, store, overwrite=True, storage_options=s3_endpoint)
    out = "s3://declouder-test/fit-cost/a.zarr"
    options = {"device": "cpu", "storage_options": s3_endpoint, "overwrite": True}
    done = fit_tile(store, out, preset=TINY, save_weights=True, **options)
    assert done.weights_url == out + ".weights.pt"
    again = fit_tile(
        store, "s3://declouder-test/fit-cost/b.zarr", preset=TINY, init_weights=done.weights_url, **options
    )
    assert again.warm_started


def test_flop_accounting_follows_the_levers() -> None:
    bands, size = ("B02", "B03", "B04", "B08"), (64, 64)
    small = SMOKE.replace(passes=2, iterations_per_window=3)
    one = tile_flops(small, n_dates=8, size=size, bands=bands)
    assert one.iterations == small.total_iterations(8) == 2 * 4 * 3
    assert one.total == pytest.approx(one.per_iteration * one.iterations + one.inference)
    two = tile_flops(small.replace(windows_per_step=2), n_dates=8, size=size, bands=bands)
    assert two.per_iteration == pytest.approx(2 * one.per_iteration, rel=1e-6)
    assert two.iterations == one.iterations // 2
    vgg = tile_flops(small.replace(perceptual_weight=0.01), n_dates=8, size=size, bands=bands)
    half = tile_flops(
        small.replace(perceptual_weight=0.01, perceptual_every=2), n_dates=8, size=size, bands=bands
    )
    assert vgg.per_iteration > 2 * one.per_iteration
    assert half.per_iteration == pytest.approx((one.per_iteration + vgg.per_iteration) / 2, rel=1e-6)
    stopped = tile_flops(small, n_dates=8, size=size, bands=bands, iterations=5)
    assert stopped.training == pytest.approx(5 * one.per_iteration)
    assert one.gpu_seconds(1.0) == pytest.approx(one.total / 1e12)


def test_fits_per_gpu_is_chosen_from_memory() -> None:
    gib = 1 << 30
    assert fits_per_gpu(10 * gib, 80 * gib) == 7  # 72 GiB usable after the 10 % reserve
    assert fits_per_gpu(100 * gib, 80 * gib) == 0
    with pytest.raises(ValueError, match="positive"):
        fits_per_gpu(0, 80 * gib)


def test_fit_command_saves_and_warm_starts(
    worldcereal_tile: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from campaign.cli import main

    def declouder(*args: object) -> int:
        monkeypatch.setattr("sys.argv", ["declouder", *map(str, args)])
        try:
            main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    first = _store(worldcereal_tile, tmp_path / "a.zarr", CROP)
    second = _store(worldcereal_tile, tmp_path / "b.zarr", NEIGHBOUR)
    common = ("--preset", "smoke", "--device", "cpu")
    assert declouder("fit", first, "--out", tmp_path / "a_out.zarr", *common, "--save-weights") == 0
    saved = weights_url(str(tmp_path / "a_out.zarr"))
    assert Path(saved).is_file()
    assert declouder("fit", second, "--out", tmp_path / "b_out.zarr", *common, "--init-weights", saved) == 0
    assert open_tile(str(tmp_path / "b_out.zarr")).attrs["fit_warm_started"] is True
    capsys.readouterr()
    missing = tmp_path / "none.weights.pt"
    assert declouder("fit", second, "--out", tmp_path / "c.zarr", *common, "--init-weights", missing) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--save-weights" in err and "Traceback" not in err
