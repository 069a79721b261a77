"""Fit cost and quality: FLOPs per iteration and per tile, seconds per iteration here, PSNR vs iterations.

    python bench/fit.py                      # flops + speed (a couple of minutes on 2 cores)
    python bench/fit.py --sections psnr      # PSNR from `evaluate` against iterations (tens of minutes)
    python bench/fit.py --sections tile      # seconds per iteration at the full 5 x 384x768 window
    python bench/fit.py --sections flops,speed,psnr --threads 2
    python bench/fit.py --device cuda --sections cost   # the cost table on a GPU (bench/fit_cost.py)
    python bench/fit.py --sections compare    # paper vs fast and the levers: FLOPs, quality, seconds
    python bench/fit.py --sections field      # the same-date field at a full tile: with similar pixels vs
                                              # the date's mean (seconds, on --device)
    python bench/fit.py --sections overhead --threads 1   # a fit's work beside the network at a full
                                              # tile, stage by stage, against the network's (~7 min here)
                                              # (the full paper schedule on a crop: ~1.5 h per window here)

Every figure is printed next to a baseline measured in the same process: the ``paper`` preset for cost,
the best baseline of the same evaluation for quality. FLOPs are counted with torch.utils.flop_counter on
the meta device (shapes only, no arithmetic), for one iteration (forward + backward, with the VGG16 of the
perceptual loss where the preset has one) at the paper's 5 dates × 384×768 × 13 bands with 2 S1 channels.
Seconds per iteration are measured on this machine's CPU at the real sample's 5 × 64×64 × 10 bands; the
perceptual loss there runs on SEEDED RANDOM VGG16 weights (its cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit.arrays import TileArrays  # noqa: E402
from fit.config import PRESETS, FitConfig  # noqa: E402
from fit.evaluate import evaluate  # noqa: E402
from fit.losses import PerceptualLoss, masked_l2  # noqa: E402
from fit.network import EncoderDecoder3D, spatial_plan  # noqa: E402
from fit.vgg import VGG16  # noqa: E402
from tiler.store import open_tile  # noqa: E402

#: The paper's tile and window: 5 dates of 384×768 px, 13 S2 bands out, 2 S1 channels in (+13 guide).
PAPER_SHAPE = (5, 384, 768)
PAPER_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1_CHANNELS = 2
#: The paper's series length: cost per tile is quoted for N = 30 dates.
TILE_DATES = 30
#: The real sample's window for timing: 5 dates of 64×64 px, its 10 bands.
SAMPLE_SHAPE = (5, 64, 64)
SAMPLE_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SAMPLE = ROOT / "tests" / "data" / "worldcereal_31ues.zarr"
TIMED_ITERATIONS = 5
#: Fractions of the fast preset's passes at which PSNR is measured (1.0 = the preset itself).
PSNR_PASS_FRACTIONS = (0.25, 0.5, 1.0, 2.0)


def build(config: FitConfig, shape: tuple[int, int, int], bands: Sequence[str], device: str):
    dates, height, width = shape
    plan = spatial_plan(height, width, config.depth)
    d = plan.depth
    in_channels = S1_CHANNELS + (len(bands) if config.guide else 0)
    net = EncoderDecoder3D(
        in_channels, len(bands), config.channels_down[:d], config.channels_up[:d], config.skip_channels[:d]
    ).to(device)
    perceptual = PerceptualLoss(VGG16(), bands).to(device) if config.perceptual_weight > 0 else None
    x = torch.rand(1, in_channels, dates, *plan.padded_shape, device=device)
    y = torch.rand(1, len(bands), dates, *plan.padded_shape, device=device)
    w = torch.ones(1, 1, dates, *plan.padded_shape, device=device)

    def step() -> torch.Tensor:
        out = net(x)
        loss = masked_l2(out, y, w)
        if perceptual is not None:
            loss = loss + config.perceptual_weight * perceptual(out, y, w)
        loss.backward()
        return loss

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    return step, forward


def count(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def section_flops() -> None:
    print(f"\n== FLOPs (torch.utils.flop_counter, meta device), window {PAPER_SHAPE} x "
          f"{len(PAPER_BANDS)} bands")  # fmt: skip
    rows = {}
    for name, config in PRESETS.items():
        step, forward = build(config, PAPER_SHAPE, PAPER_BANDS, "meta")
        per_iteration = count(step)
        inference = count(forward) * config.n_windows(TILE_DATES)
        per_tile = per_iteration * config.total_iterations(TILE_DATES) + inference
        rows[name] = (per_iteration, config.total_iterations(TILE_DATES), per_tile)
    paper_tile = rows["paper"][2]
    print(f"{'preset':8s} {'TFLOP/iter':>11s} {'iters/tile':>11s} {'TFLOP/tile':>12s} {'vs paper':>9s}")
    for name, (per_iteration, iterations, per_tile) in rows.items():
        print(f"{name:8s} {per_iteration / 1e12:11.3f} {iterations:11d} {per_tile / 1e12:12,.0f} "
              f"{per_tile / paper_tile:9.4f}")  # fmt: skip


def section_speed(threads: int) -> None:
    print(f"\n== seconds per iteration on this CPU ({threads} threads), window {SAMPLE_SHAPE} x "
          f"{len(SAMPLE_BANDS)} bands; median of {TIMED_ITERATIONS} after one warm-up")  # fmt: skip
    torch.manual_seed(0)
    results = {}
    for name, config in PRESETS.items():
        step, _ = build(config, SAMPLE_SHAPE, SAMPLE_BANDS, "cpu")
        step()
        times = []
        for _ in range(TIMED_ITERATIONS):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        results[name] = statistics.median(times)
    paper = results["paper"]
    print(f"{'preset':8s} {'s/iter':>8s} {'vs paper':>9s} {'iters (30 dates)':>17s} {'est. s/tile':>12s}")
    for name, seconds in results.items():
        iterations = PRESETS[name].total_iterations(TILE_DATES)
        estimate = seconds * iterations
        print(f"{name:8s} {seconds:8.3f} {seconds / paper:9.3f} {iterations:17d} {estimate:12,.0f}")


def section_tile(threads: int) -> None:
    """One iteration at the paper's full window: the figure the presets' seconds per tile come from."""
    print(f"\n== seconds per iteration on this CPU ({threads} threads) at the full window {PAPER_SHAPE} x "
          f"{len(PAPER_BANDS)} bands, L2-only presets; one iteration after a warm-up")  # fmt: skip
    for name, config in PRESETS.items():
        if config.perceptual_weight > 0:
            continue  # a CPU iteration with VGG at this size takes minutes; its FLOPs are above
        step, _ = build(config, PAPER_SHAPE, PAPER_BANDS, "cpu")
        step()
        started = time.perf_counter()
        step()
        seconds = time.perf_counter() - started
        iterations = config.total_iterations(TILE_DATES)
        per_tile = seconds * iterations
        print(f"{name:8s} {seconds:8.2f} s/iter x {iterations} iterations = {per_tile:,.0f} s/tile")


def _tile_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``array`` (..., y, x) repeated over its last two axes and cut to ``height`` × ``width``."""
    reps = (1,) * (array.ndim - 2) + (-(-height // array.shape[-2]), -(-width // array.shape[-1]))
    return np.tile(array, reps)[..., :height, :width]


def section_field(device: str) -> None:
    """Seconds of one same-date field over a full tile, with :data:`fit.config.FAST`'s similar pixels and
    without (the date's mean): the fit computes two such fields (the held-out check's and the output's).

    The series is the real sample's first 30 dates (its 10 bands, its refined clear masks) tiled to
    384×768 px, plus seeded noise (σ 0.005) so that no two pixels are equal: the search's cost depends on
    how the pixels' trajectories spread, which random values would not show.
    """
    from fit.config import FAST
    from fit.date_field import date_residual_field
    from fit.declouder import guide_series, trusted_clear

    sample = TileArrays.from_dataset(open_tile(str(SAMPLE)).load()).dates(0, TILE_DATES)
    _, clear = trusted_clear(sample.reflectance, sample.mask, sample.bands, FAST)
    height, width = PAPER_SHAPE[1:]
    rng = np.random.default_rng(0)
    observed = _tile_to(np.nan_to_num(sample.reflectance), height, width)
    observed = np.clip(observed + rng.normal(0.0, 0.005, observed.shape), 0.0, 1.0).astype(np.float32)
    visible = _tile_to(clear, height, width)
    guide = guide_series(observed, visible, sample.days)
    print(f"\n== the same-date field at a full tile ({observed.shape[0]} dates x {observed.shape[1]} bands x "
          f"{height}x{width} px: the real sample tiled, {visible.mean():.0%} of the samples visible), "
          f"device {device}, {torch.get_num_threads()} threads")  # fmt: skip
    torch_device = torch.device(device)
    blue = list(sample.bands).index("B02")
    seconds = {}
    for similar in (0, FAST.date_field_similar):
        started = time.perf_counter()
        date_residual_field(observed, guide, visible, blue=blue, device=torch_device, similar=similar)
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        seconds[similar] = time.perf_counter() - started
    base = seconds[0]
    for similar, value in seconds.items():
        label = "the date's mean" if similar == 0 else f"{similar} similar pixels"
        print(f"  {label:20s} {value:8.1f} s per field  ({value / base:.2f}x the date's mean)")


#: ``bench/fit.py --sections overhead``: the stages of a fit outside the network, by the function whose
#: cumulative profile time is theirs ((file name, function name), every call summed).
OVERHEAD_STAGES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("masks (refine_masks)", (("masks.py", "refine_masks"),)),
    ("guide (guide_series: interpolation in time)", (("declouder.py", "guide_series"),)),
    ("same-date field, less its search", (("date_field.py", "date_residual_field"),)),
    ("similar-pixel search (_nearest)", (("date_field.py", "_nearest"),)),
    ("shrinkage (fit_shrinkage, _apply_factors)",
     (("declouder.py", "fit_shrinkage"), ("declouder.py", "_apply_factors"))),
    ("sigma: error model (fit_error_model)", (("uncertainty.py", "fit_error_model"),)),
    ("sigma: prediction (predict_sigma)", (("uncertainty.py", "predict_sigma"),)),
)  # fmt: skip
#: The network's own work in that profile: its forward passes (the outermost ``forward`` of
#: fit/network.py, whose time holds its blocks') and every backward pass.
NETWORK_FORWARD = ("network.py", "forward")
NETWORK_BACKWARD = ("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>")


def section_overhead(threads: int) -> None:
    """Seconds of one ``fast`` fit's work outside the network on a full 30-date 384×768 tile, by stage.

    On a GPU the network of ``fast`` is seconds per tile (its FLOPs at the stated throughputs below); what
    runs beside it on the host (masks, guide, fields, shrinkage, σ) decides how many tiles a GPU-hour
    fits once the host is the slower side. The fit is ``fast`` with the smoke preset's small network and
    one step per window, so that its network time is small and reported apart: every stage outside the
    network does the same work as in ``fast`` (the same tile, masks, hold-out, fields and σ). The tile is
    the real sample's first 30 dates (10 bands, S1) tiled to 384×768 px with seeded noise (σ 0.005), as
    in the ``field`` section. Timed with cProfile on the CPU (the profiler adds a little per call).
    """
    import cProfile
    import dataclasses
    import pstats

    from fit.config import FAST, SMOKE
    from fit.cost import GPU_THROUGHPUT_TFLOPS, tile_flops
    from fit.declouder import decloud

    sample = TileArrays.from_dataset(open_tile(str(SAMPLE)).load()).dates(0, TILE_DATES)
    height, width = PAPER_SHAPE[1:]
    rng = np.random.default_rng(0)
    s2 = _tile_to(np.nan_to_num(sample.reflectance), height, width)
    # Floored above 0, which the store reads as no data.
    s2 = np.clip(s2 + rng.normal(0.0, 0.005, s2.shape), 1e-4, 1.0).astype(np.float32)
    mask = _tile_to(sample.mask, height, width)
    s1 = _tile_to(sample.s1, height, width)
    config = dataclasses.replace(
        FAST,
        passes=1,
        iterations_per_window=1,
        channels_down=SMOKE.channels_down,
        channels_up=SMOKE.channels_up,
        skip_channels=SMOKE.skip_channels,
    )
    print(f"\n== a fit's work beside the network at a full tile ({s2.shape[0]} dates x {s2.shape[1]} bands "
          f"x {height}x{width} px, the real sample tiled), fast with a small network, cpu, "
          f"{threads} threads")  # fmt: skip
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    decloud(s2, mask, s1, config, bands=sample.bands, days=sample.days, device="cpu", seed=0)
    profile.disable()
    total = time.perf_counter() - started
    cumulative: dict[tuple[str, str], float] = {}
    outermost: dict[tuple[str, str], float] = {}
    for (filename, _, function), row in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        key = (Path(filename).name, function)
        cumulative[key] = cumulative.get(key, 0.0) + row[3]
        outermost[key] = max(outermost.get(key, 0.0), row[3])
    seconds = {label: sum(cumulative.get(f, 0.0) for f in functions) for label, functions in OVERHEAD_STAGES}
    seconds["same-date field, less its search"] -= seconds["similar-pixel search (_nearest)"]
    network = outermost.get(NETWORK_FORWARD, 0.0) + cumulative.get(NETWORK_BACKWARD, 0.0)
    beside = total - network
    for label, value in seconds.items():
        print(f"  {label:48s} {value:8.1f} s  ({value / beside:5.1%} of the work beside the network)")
    print(f"  {'the rest (I/O, windows, losses, bookkeeping)':48s} {beside - sum(seconds.values()):8.1f} s")
    print(f"  {'beside the network, in all':48s} {beside:8.1f} s")
    on_host = beside - seconds["similar-pixel search (_nearest)"]
    print(f"  {'the same less the search (on a GPU it runs there)':48s} {on_host:8.1f} s  (fast's "
          f"host_seconds_per_tile_reference: {FAST.host_seconds_per_tile_reference} s)")  # fmt: skip
    print(f"  {'the small network (forward + backward)':48s} {network:8.1f} s  (not fast's network)")
    flops = tile_flops(FAST)
    for name, tflops in GPU_THROUGHPUT_TFLOPS.items():
        gpu = flops.gpu_seconds(tflops)
        print(f"  fast's network on a GPU at {tflops:.1f} TFLOP/s ({name}, an estimate): {gpu:6.1f} s per "
              f"tile; the host's part here is {on_host / gpu:.1f}x that")  # fmt: skip


def section_psnr(device: str, dates: Sequence[tuple[int, int]]) -> None:
    print("\n== PSNR (painted region, cloudiest paint) from `evaluate` against iterations, fast preset")
    tile = TileArrays.from_dataset(open_tile(str(SAMPLE)).load())
    fast = PRESETS["fast"]
    for start, stop in dates:
        window = tile.dates(start, stop)
        print(f"-- dates {start}:{stop} ({window.iso_dates()[0]}..{window.iso_dates()[-1]})")
        for fraction in PSNR_PASS_FRACTIONS:
            passes = max(1, round(fast.passes * fraction))
            config = fast.replace(name=f"fast x{fraction:g}", passes=passes)
            started = time.perf_counter()
            ev = evaluate(window, config, inputs=("s1",), device=device)
            fit, best = ev.row("fit", "s1"), ev.best_baseline()
            iterations = config.total_iterations(window.n_dates)
            margin = fit.painted.psnr - best.painted.psnr
            print(f"  {iterations:6d} iterations: fit {fit.painted.psnr:6.2f} dB, best baseline "
                  f"{best.label} {best.painted.psnr:6.2f} dB, margin {margin:+.2f} dB "
                  f"({time.perf_counter() - started:.0f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections",
        default="flops,speed,cost",
        help="comma-separated: flops, speed, tile, psnr, cost, cost-quality, compare, field, overhead",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dates", default="0:30,30:60", help="date windows for the psnr section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.set_printoptions(precision=3)
    sections = {s.strip() for s in args.sections.split(",")}
    if "flops" in sections:
        section_flops()
    if "speed" in sections:
        section_speed(args.threads)
    if "tile" in sections:
        section_tile(args.threads)
    if "field" in sections:
        section_field(args.device)
    if "overhead" in sections:
        section_overhead(args.threads)
    if "psnr" in sections:
        windows = [tuple(int(v) for v in w.split(":")) for w in args.dates.split(",")]
        section_psnr(args.device, windows)
    if "compare" in sections:
        # The paper schedule (L2 only) on a crop against fast and the levers, in one run: FLOPs per tile,
        # the ratio to paper, painted-region PSNR / SAM on each window, seconds here (bench/fit_cost.py).
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fit_cost

        fit_cost.section_compare(
            args.device,
            fit_cost.parse_windows(args.dates),
            fit_cost.DEFAULT_CROP,
            fit_cost.COMPARE_TARGETS,
            fit_cost.COMPARE_SNAPSHOTS,
            None,
        )
    if sections & {"cost", "cost-quality"}:
        # The cost table of bench/fit_cost.py: FLOPs per tile and ratios to paper, GPU-second estimates,
        # fp32 vs bf16 step times on --device (on CUDA with achieved TFLOP/s, peak memory, fits per GPU);
        # "cost-quality" adds the paper-proxy vs fast painted-region quality (long on a CPU).
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fit_cost

        fit_cost.section_flops()
        fit_cost.section_speed(args.device, "off")
        if "cost-quality" in sections:
            windows = fit_cost.parse_windows(args.dates)
            fit_cost.section_quality(
                args.device, windows, fit_cost.DEFAULT_CROP, fit_cost.DEFAULT_PAPER_SCALE, None
            )


if __name__ == "__main__":
    main()
