"""Fit cost against quality: ``paper`` vs ``fast`` (and the cost levers), in one run.

    python bench/fit_cost.py                                  # FLOPs + CPU speed (minutes here)
    python bench/fit_cost.py --sections quality               # + painted-region PSNR/SAM (long on a CPU)
    python bench/fit_cost.py --device cuda --sections speed,flops   # on a GPU: s/tile, TFLOP/s, memory

Sections:
- ``flops``: FLOPs per 384×768×30-date tile (13 bands, 2 S1 channels) per preset and lever, counted by
  torch.utils.flop_counter on the meta device (fit.cost.tile_flops), the ratio to ``paper`` (with its
  VGG16 term, and without it), and GPU seconds ESTIMATED from the FLOPs at the stated throughputs of
  fit.cost.GPU_THROUGHPUT_TFLOPS (estimates, not measurements).
- ``speed``: seconds per training step of each preset on ``--device``, fp32 against bf16 autocast (and
  channels-last 3D / torch.compile where asked), at 5 × 64×64 × 10 bands on a CPU or the full
  5 × 384×768 × 13 bands on CUDA; on CUDA also achieved TFLOP/s, peak memory and fits per GPU.
- ``quality``: the painted-region PSNR / SAM of fit.evaluate (cloudiest paint, S1 input) on two real
  30-date windows of the bundled WorldCereal sample, on its ``--crop``×``--crop`` centre (a proxy: the
  published schedule cannot run to its end on a CPU; see ``--paper-scale``), with each run's seconds.
- ``compare``: the full ``paper`` schedule (L2 only) on the crop against ``fast`` and the levers, in one
  run: FLOPs per tile, the ratios to ``paper``, PSNR / SAM per window, seconds; the reference is also
  scored after ``--snapshots`` passes of the same fit (~1.5-2 h per window on one CPU core).
- ``warm``: warm start between two adjacent, non-overlapping squares against cold fits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit.arrays import TileArrays  # noqa: E402
from fit.config import PRESETS, FitConfig  # noqa: E402
from fit.cost import (  # noqa: E402
    GPU_THROUGHPUT_TFLOPS,
    REFERENCE_BANDS,
    REFERENCE_DATES,
    REFERENCE_SIZE,
    fits_per_gpu,
    step_functions,
    tile_flops,
)
from fit.declouder import decloud, device_path  # noqa: E402
from fit.evaluate import evaluate  # noqa: E402
from tiler.store import open_tile  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "worldcereal_31ues.zarr"
SAMPLE_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: CPU timing window: the real sample's size (a 384×768 step takes tens of seconds per iteration here).
CPU_SIZE = (64, 64)
TIMED_STEPS = 3
#: Quality proxy defaults: centre crop side, and the paper schedule's iterations per window divided by this.
DEFAULT_CROP = 32
DEFAULT_PAPER_SCALE = 20
#: compare: target dates painted per window (more evidence per fit), and the passes of the reference
#: schedule after which it is scored (its quality at 1/20, 1/10, ... of its compute).
COMPARE_TARGETS = 3
COMPARE_SNAPSHOTS = (1, 2, 3, 5, 10, 15, 20)
#: The lighter network tried as a lever: every width halved.
LITE_CHANNELS = (8, 16, 32, 64, 64, 64)


def variants() -> dict[str, FitConfig]:
    """The presets and the levers measured against them."""
    paper, fast = PRESETS["paper"], PRESETS["fast"]
    return {
        "paper": paper,
        "paper (L2 only)": paper.replace(name="paper-l2", perceptual_weight=0.0),
        "fast": fast,
        "fast, 4 windows/step": fast.replace(name="fast-b4", windows_per_step=4),
        "fast, lite network": fast.replace(
            name="fast-lite", channels_down=LITE_CHANNELS, channels_up=LITE_CHANNELS
        ),
        "fast + VGG every 10th": fast.replace(name="fast-vgg10", perceptual_weight=0.01, perceptual_every=10),
    }


def section_flops() -> dict[str, float]:
    print(
        f"\n== FLOPs per tile ({REFERENCE_DATES} dates, {REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]} px, "
        f"{len(REFERENCE_BANDS)} bands); GPU seconds are ESTIMATES from FLOPs, not measured"
    )
    rows = {name: tile_flops(config) for name, config in variants().items()}
    paper, paper_l2 = rows["paper"].total, rows["paper (L2 only)"].total
    rates = list(GPU_THROUGHPUT_TFLOPS.items())
    head = " ".join(f"{'est. s @' + f'{v:.0f}TF/s':>14s}" for _, v in rates)
    print(
        f"{'settings':24s} {'TFLOP/iter':>10s} {'iters':>6s} {'TFLOP/tile':>11s} {'/paper':>8s} "
        f"{'/paper-L2':>9s} {head}"
    )
    for name, f in rows.items():
        est = " ".join(f"{f.gpu_seconds(v):14,.0f}" for _, v in rates)
        print(
            f"{name:24s} {f.per_iteration / 1e12:10.3f} {f.iterations:6d} {f.total / 1e12:11,.0f} "
            f"{f.total / paper:8.4f} {f.total / paper_l2:9.4f} {est}"
        )
    for label, value in rates:
        print(f"  {value:.1f} TFLOP/s = {label} (fit.cost.GPU_THROUGHPUT_TFLOPS)")
    return {name: f.total for name, f in rows.items()}


def _time_step(
    config: FitConfig, dates: int, size: tuple[int, int], bands: Sequence[str], device: str
) -> float:
    path = device_path(config, torch.device(device))
    step, _ = step_functions(config, dates, size, bands, device)
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        if path.precision == "bf16"
        else None
    )

    def once() -> float:
        started = time.perf_counter()
        if autocast is not None:
            with autocast:
                step()
        else:
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    once()  # warm-up (kernel selection, allocation)
    return statistics.median(once() for _ in range(TIMED_STEPS))


def section_speed(device: str, compile_mode: str) -> None:
    cuda = device.startswith("cuda")
    size, bands = (REFERENCE_SIZE, REFERENCE_BANDS) if cuda else (CPU_SIZE, SAMPLE_BANDS)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\n== seconds per training step on {where}, window 5 x {size[0]}x{size[1]} x {len(bands)} bands, "
        f"median of {TIMED_STEPS} after a warm-up"
    )
    print(
        f"{'settings':24s} {'precision':>9s} {'s/step':>8s} {'vs fp32':>8s} {'s/tile':>9s} "
        f"{'TFLOP/s':>8s} {'peak GiB':>9s} {'fits/GPU':>8s}"
    )
    for name in ("paper (L2 only)", "fast"):
        base = variants()[name]
        fp32 = None
        for precision in ("fp32", "bf16"):
            config = base.replace(precision=precision, compile=compile_mode if cuda else "off")
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _time_step(config, 5, size, bands, device)
            fp32 = seconds if fp32 is None else fp32
            flops = tile_flops(config, size=size, bands=bands)
            per_tile = seconds * flops.iterations
            achieved = flops.per_iteration / seconds / 1e12
            peak, fits = "-", "-"
            if cuda:
                peak_bytes = torch.cuda.max_memory_allocated(device)
                total = torch.cuda.get_device_properties(device).total_memory
                peak, fits = f"{peak_bytes / 2**30:.2f}", str(fits_per_gpu(peak_bytes, total))
            print(
                f"{name:24s} {precision:>9s} {seconds:8.3f} {seconds / fp32:8.2f} {per_tile:9,.0f} "
                f"{achieved:8.3f} {peak:>9s} {fits:>8s}"
            )
    if not cuda:
        print(
            "  (s/tile = s/step x the schedule's steps at THIS window size, not a 384x768 tile; "
            "GPU figures: python bench/fit.py --device cuda --sections cost)"
        )


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"0:30,30:60"`` -> [(0, 30), (30, 60)]: date windows of the sample."""
    return [(int(a), int(b)) for a, b in (w.split(":") for w in text.split(","))]


def neighbour_weights(square: TileArrays, config: FitConfig, device: str) -> Mapping[str, torch.Tensor]:
    """The final weights of a cold fit of ``square`` with ``config``: a neighbour's, for a warm start."""
    weights = decloud(
        square.reflectance,
        square.mask,
        square.s1,
        config.replace(warm_passes=None),
        bands=square.bands,
        days=square.days,
        device=device,
        keep_weights=True,
    ).weights
    assert weights is not None  # keep_weights
    return weights


def crop(tile: TileArrays, side: int, corner: tuple[int, int] | None = None) -> TileArrays:
    """The ``side`` x ``side`` centre of ``tile``, or the square at ``corner`` (y0, x0)."""
    height, width = tile.reflectance.shape[-2:]
    y0, x0 = ((height - side) // 2, (width - side) // 2) if corner is None else corner
    ys, xs = slice(y0, y0 + side), slice(x0, x0 + side)
    return TileArrays(
        tile.name,
        tile.reflectance[..., ys, xs],
        tile.mask[:, ys, xs],
        tile.s1[..., ys, xs],
        tile.bands,
        tile.times,
    )


def section_quality(
    device: str,
    windows: Sequence[tuple[int, int]],
    side: int,
    paper_scale: int,
    flops: dict[str, float] | None,
) -> None:
    paper = PRESETS["paper"]
    proxies = {
        f"paper/{paper_scale} (L2 only)": paper.replace(
            name=f"paper/{paper_scale}",
            perceptual_weight=0.0,
            iterations_per_window=max(1, paper.iterations_per_window // paper_scale),
        ),
        "fast": PRESETS["fast"],
        "fast + early stop": PRESETS["fast"].replace(
            name="fast-es", passes=6, holdout_fraction=0.05, stop_patience=0.5
        ),
        "fast + start at guide": PRESETS["fast"].replace(name="fast-sg", start_at_guide=True),
    }
    print(
        f"\n== painted-region quality (cloudiest paint, S1 input), {side}x{side} centre crop of two real "
        f"30-date windows; proxy for the published schedule: paper/{paper_scale} = {paper.passes} "
        f"passes x {paper.iterations_per_window // paper_scale} iterations per window, lr 0.01 constant, "
        "no VGG16"
    )
    tile = TileArrays.from_dataset(open_tile(str(SAMPLE)).load())
    results: dict[str, list[dict[str, float]]] = {name: [] for name in proxies}
    for start, stop in windows:
        window = crop(tile.dates(start, stop), side)
        for name, config in proxies.items():
            steps: list[int] = []
            started = time.perf_counter()
            ev = evaluate(
                window,
                config,
                inputs=("s1",),
                device=device,
                progress=lambda stage, event, seen=steps: seen.append(event.iteration),
            )
            fit, best = ev.row("fit", "s1"), ev.best_baseline()
            row = {
                "psnr": fit.painted.psnr,
                "sam": fit.painted.sam,
                "seconds": time.perf_counter() - started,
                "iterations": max(steps),
                "best": best.painted.psnr,
            }
            results[name].append(row)
            print(
                f"  dates {start}:{stop} {name:22s} PSNR {row['psnr']:6.2f} dB  SAM {row['sam']:5.2f} deg  "
                f"{row['iterations']:5d} steps  {row['seconds']:6.0f} s   (best baseline {best.label} "
                f"{best.painted.psnr:.2f} dB)"
            )
    reference = results[next(iter(proxies))]
    print("  mean over windows; difference to the paper proxy:")
    for name, rows in results.items():
        psnr = float(np.mean([r["psnr"] for r in rows]))
        sam = float(np.mean([r["sam"] for r in rows]))
        d = psnr - float(np.mean([r["psnr"] for r in reference]))
        print(
            f"  {name:24s} PSNR {psnr:6.2f} dB ({d:+.2f})  SAM {sam:5.2f} deg  "
            f"{json.dumps([r['iterations'] for r in rows])} steps"
        )


def candidates() -> dict[str, FitConfig]:
    """Settings at <= 1/20 of the paper schedule's L2-only FLOPs, compared against its full fit."""
    paper, fast = PRESETS["paper"], PRESETS["fast"]
    paper_l2 = paper.replace(perceptual_weight=0.0)
    return {
        "fast": fast,
        "fast + start at guide": fast.replace(name="fast-sg", start_at_guide=True),
        "paper/20 (20 x 5, constant lr)": paper_l2.replace(name="paper/20", iterations_per_window=5),
        "paper/20, cosine lr (4 x 25)": paper_l2.replace(
            name="paper/20-cos", passes=4, iterations_per_window=25, lr_decay="cosine"
        ),
        "fast, lite network": fast.replace(
            name="fast-lite", channels_down=LITE_CHANNELS, channels_up=LITE_CHANNELS
        ),
        "fast, 4 windows per step": fast.replace(name="fast-b4", windows_per_step=4),
        "fast + weight average (0.9)": fast.replace(name="fast-ema90", weight_average=0.9),
        "fast + weight average (0.97)": fast.replace(name="fast-ema97", weight_average=0.97),
        "paper/20 + weight average (0.99)": paper_l2.replace(
            name="paper/20-ema", iterations_per_window=5, weight_average=0.99
        ),
        # Campaign-level: one pass from the weights of a neighbour fitted cold (its cost is the
        # neighbour's own fit, so the tile's steps are the warm pass only).
        "fast, warm start (1 pass)": fast.replace(name="fast-warm", warm_passes=1),
    }


def section_compare(
    device: str,
    windows: Sequence[tuple[int, int]],
    side: int,
    targets: int,
    passes: Sequence[int],
    json_path: str | None,
    reference_scale: int = 1,
    only: Sequence[str] | None = None,
) -> None:
    """paper vs the candidates in one run: FLOPs per 384x768 tile, painted-region quality, seconds here.

    The reference is the full published schedule (20 passes x 100 iterations per window, constant lr)
    with the L2 loss only (no VGG16 weights here) on a ``side`` x ``side`` crop: the issue's proxy "the
    same schedule on a smaller crop". Its snapshots after ``passes`` passes are the schedule cut short.
    ``only``: the candidates (and "paper") to run, by name; None = all of them.
    """
    paper = PRESETS["paper"]
    flops_paper, flops_l2 = tile_flops(paper).total, tile_flops(paper.replace(perceptual_weight=0.0)).total
    reference = paper.replace(
        name="paper-l2",
        perceptual_weight=0.0,
        iterations_per_window=max(1, paper.iterations_per_window // reference_scale),
    )
    print(
        f"\n== paper vs candidates: painted-region PSNR / SAM (cloudiest paint, S1 input, {targets} target "
        f"date(s) per window) on the {side}x{side} centre crop; TFLOP per 384x768x30 tile and the ratio to "
        f"paper (with VGG16: {flops_paper / 1e12:,.0f} TFLOP) and paper L2-only ({flops_l2 / 1e12:,.0f})",
        flush=True,
    )
    tile = TileArrays.from_dataset(open_tile(str(SAMPLE)).load())
    head = f"{'settings':36s} {'steps':>6s} {'TFLOP/tile':>10s} {'/paper':>8s} {'/paper-L2':>9s}"
    rows: list[dict[str, object]] = []

    def emit(row: dict[str, object]) -> None:
        rows.append(row)
        print(
            f"  {row['dates']:6s} {row['settings']:36s} {row['steps']:6d} {row['tflop']:10,.1f} "
            f"{row['per_paper']:8.5f} {row['per_paper_l2']:9.4f}  PSNR {row['psnr']:6.2f} dB  "
            f"SAM {row['sam']:5.2f} deg  {row['seconds']:7.0f} s",
            flush=True,
        )
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    print(f"  {'dates':6s} {head}", flush=True)
    full_name = "paper (L2 only), full schedule"
    if reference_scale > 1:
        full_name += f" / {reference_scale}"
    runs = [*candidates().items(), (full_name, reference)]
    if only is not None:
        runs = [(n, c) for n, c in runs if n in only or (c is reference and "paper" in only)]
    for start, stop in windows:
        window = crop(tile.dates(start, stop), side)
        label = f"{start}:{stop}"
        for name, config in runs:
            started = time.perf_counter()
            full = config is reference
            init = None
            if config.warm_passes is not None:
                # The neighbour: the top-left square, which shares a quarter of its area with the centre
                # crop (tiles of a campaign overlap a little; this is more than they do).
                init = neighbour_weights(crop(tile.dates(start, stop), side, corner=(0, 0)), config, device)
                started = time.perf_counter()

            def snapshot(
                done: int, steps: int, scores: object, started: float = started, label: str = label
            ) -> None:
                flops = tile_flops(reference, iterations=steps)  # 30 dates: the crop's steps are the tile's
                painted = scores.painted  # type: ignore[attr-defined]
                emit({
                    "dates": label, "settings": f"paper (L2 only), cut after {done} pass(es)",
                    "steps": steps, "tflop": flops.total / 1e12, "per_paper": flops.total / flops_paper,
                    "per_paper_l2": flops.total / flops_l2, "psnr": painted.psnr, "sam": painted.sam,
                    "seconds": time.perf_counter() - started,
                })  # fmt: skip

            ev = evaluate(
                window,
                config,
                targets=targets,
                inputs=("s1",),
                device=device,
                # The end of the schedule is the full fit's own row.
                snapshot_passes=[p for p in passes if p < reference.passes] if full else (),
                on_snapshot=snapshot if full else None,
                init_weights=init,
            )
            fit = ev.row("fit", "s1")
            steps = config.total_iterations(REFERENCE_DATES, warm=init is not None)
            flops = tile_flops(config, iterations=steps)
            emit({
                "dates": label, "settings": name,
                "steps": steps,
                "tflop": flops.total / 1e12, "per_paper": flops.total / flops_paper,
                "per_paper_l2": flops.total / flops_l2, "psnr": fit.painted.psnr, "sam": fit.painted.sam,
                "seconds": time.perf_counter() - started,
            })  # fmt: skip
        best = ev.best_baseline()
        print(
            f"  {label}: targets {', '.join(ev.targets)}; best baseline {best.label} "
            f"{best.painted.psnr:.2f} dB / {best.painted.sam:.2f} deg",
            flush=True,
        )
    reference_psnr = {r["dates"]: r["psnr"] for r in rows if r["settings"] == full_name}
    if len(reference_psnr) == len(windows):
        print("  mean over windows, and the difference to the full paper schedule:")
        for name in dict.fromkeys(str(r["settings"]) for r in rows):
            mine = [r for r in rows if r["settings"] == name]
            if len(mine) != len(windows):
                continue
            psnr = float(np.mean([float(r["psnr"]) for r in mine]))  # type: ignore[arg-type]
            delta = psnr - float(np.mean(list(reference_psnr.values())))  # type: ignore[arg-type]
            print(f"  {name:36s} PSNR {psnr:6.2f} dB ({delta:+.2f})  /paper {mine[0]['per_paper']:.5f}")


def section_warm(device: str, windows: Sequence[tuple[int, int]], side: int, targets: int) -> None:
    """Warm start between two ADJACENT, non-overlapping squares (west and east halves of the sample's
    middle rows): each is scored fitted cold and warm-started from the other's plain ``fast`` fit."""
    fast = PRESETS["fast"]
    warm = fast.replace(name="fast-warm", warm_passes=1)
    print(
        f"\n== warm start between adjacent {side}x{side} squares, painted-region PSNR / SAM ({targets} "
        f"target date(s), cloudiest paint, S1 input): cold = fast "
        f"({fast.total_iterations(REFERENCE_DATES)} steps), warm = 1 pass from the neighbour's fast weights "
        f"({warm.total_iterations(REFERENCE_DATES, warm=True)} steps)",
        flush=True,
    )
    tile = TileArrays.from_dataset(open_tile(str(SAMPLE)).load())
    height, width = tile.reflectance.shape[-2:]
    row = (height - side) // 2
    corners = {"west": (row, 0), "east": (row, width - side)}
    for start, stop in windows:
        squares = {name: crop(tile.dates(start, stop), side, corner) for name, corner in corners.items()}
        weights = {name: neighbour_weights(square, fast, device) for name, square in squares.items()}
        for name, square in squares.items():
            other = next(n for n in squares if n != name)
            scores = {}
            for kind, config, init in (("cold", fast, None), ("warm", warm, weights[other])):
                started = time.perf_counter()
                ev = evaluate(
                    square, config, targets=targets, inputs=("s1",), device=device, init_weights=init
                )
                scores[kind] = (ev.row("fit", "s1").painted, time.perf_counter() - started)
            (cold, cold_s), (hot, hot_s) = scores["cold"], scores["warm"]
            print(
                f"  {start}:{stop} {name}: cold PSNR {cold.psnr:6.2f} dB SAM {cold.sam:5.2f} "
                f"({cold_s:4.0f} s)  "
                f"warm from {other} PSNR {hot.psnr:6.2f} dB SAM {hot.sam:5.2f} ({hot_s:4.0f} s)  "
                f"difference {hot.psnr - cold.psnr:+.2f} dB",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections", default="flops,speed", help="comma-separated: flops, speed, quality, compare, warm"
    )
    parser.add_argument(
        "--reference-scale", type=int, default=1, help="compare: the reference's iterations per window / N"
    )
    parser.add_argument(
        "--only", default=None, help='compare: ";"-separated candidate names to run ("paper" = the reference)'
    )
    parser.add_argument("--json", default=None, help="compare: append each row to this JSON-lines file")
    parser.add_argument(
        "--targets", type=int, default=COMPARE_TARGETS, help="compare: target dates per window"
    )
    parser.add_argument(
        "--snapshots",
        default=",".join(map(str, COMPARE_SNAPSHOTS)),
        help="compare: passes after which the reference is scored",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (shared cores here)")
    parser.add_argument(
        "--compile",
        default="off",
        choices=("off", "default", "reduce-overhead"),
        help="torch.compile mode for the CUDA timings",
    )
    parser.add_argument("--dates", default="0:30,30:60", help="30-date windows of the sample for quality")
    parser.add_argument(
        "--crop", type=int, default=DEFAULT_CROP, help="centre crop side for the quality proxy"
    )
    parser.add_argument(
        "--paper-scale", type=int, default=DEFAULT_PAPER_SCALE, help="paper proxy: iterations per window / N"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = {s.strip() for s in args.sections.split(",")}
    windows = parse_windows(args.dates)
    flops = section_flops() if "flops" in sections else None
    if "speed" in sections:
        section_speed(args.device, args.compile)
    if "quality" in sections:
        section_quality(args.device, windows, args.crop, args.paper_scale, flops)
    if "warm" in sections:
        section_warm(args.device, windows, args.crop, args.targets)
    if "compare" in sections:
        passes = [int(p) for p in args.snapshots.split(",")]
        section_compare(
            args.device,
            windows,
            args.crop,
            args.targets,
            passes,
            args.json,
            args.reference_scale,
            None if args.only is None else [n.strip() for n in args.only.split(";")],
        )


if __name__ == "__main__":
    main()
