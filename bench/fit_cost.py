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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
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
from fit.declouder import device_path  # noqa: E402
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


def crop(tile: TileArrays, side: int) -> TileArrays:
    height, width = tile.reflectance.shape[-2:]
    y0, x0 = (height - side) // 2, (width - side) // 2
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="flops,speed", help="comma-separated: flops, speed, quality")
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
    flops = section_flops() if "flops" in sections else None
    if "speed" in sections:
        section_speed(args.device, args.compile)
    if "quality" in sections:
        windows = [(int(a), int(b)) for a, b in (w.split(":") for w in args.dates.split(","))]
        section_quality(args.device, windows, args.crop, args.paper_scale, flops)


if __name__ == "__main__":
    main()
