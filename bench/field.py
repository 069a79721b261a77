"""The same-date field alone, no network: how far each way of filling deep inside a cloud takes the guide.

    python bench/field.py                          # seeds 0-2, both protocols, the date's mean vs 16 similar
    python bench/field.py --seeds 0 --similar 0,8,16 --components 4,8,16 --protocols oracle

On the quality suite's partly painted tuning cases (``bench/quality.py``: the same series, crops, two
painted targets; the held-out window ``wc-heldout`` is never run here), each series is painted, its
refined masks drawn and its held-out samples split as ``fast`` does (``--preset``); the guide is the
leave-one-out interpolation of the trusted samples plus the same-date field, each band taking the field
by the share that fits the held-out samples (``fit.declouder.fit_shrinkage``; with fewer than
``SHRINK_MIN_SAMPLES`` of them on dates that show pixels, the visible samples' own leave-self-out field),
and trusted pixels kept as observed. Printed: painted-region PSNR over the best of linear interpolation
and ``ridge`` with the same refined masks, per case and as the mean and worst over the cases, for each
setting. The seed only changes the held-out split (the paint and crops are the suite's). This is what
docs/fit.md "Similar pixels" reports as "the guide alone"; the fit itself is measured by
``bench/quality.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality  # noqa: E402

from fit.arrays import TileArrays  # noqa: E402
from fit.baselines import learned_linear, temporal_linear  # noqa: E402
from fit.config import FitConfig, resolve_config  # noqa: E402
from fit.date_field import date_residual_field  # noqa: E402
from fit.declouder import (  # noqa: E402
    BLUE_BAND,
    SHRINK_MIN_SAMPLES,
    cloud_shapes,
    fit_shrinkage,
    guide_series,
    split_holdout,
    trusted_clear,
)
from fit.evaluate import paint  # noqa: E402
from fit.metrics import psnr  # noqa: E402


def guide_alone(
    case: quality.Case, config: FitConfig, similar: int, components: int, tiles: dict[str, TileArrays]
) -> tuple[float, float]:
    """(PSNR of the guide with the field, PSNR of the best of linear and ridge), dB, targets averaged."""
    window = quality._window(case, quality.DEFAULT_CROPS[case.series.kind], tiles)
    painted = paint(window, config, k=quality.TARGETS, mode=case.paint, protocol=case.protocol)
    series = painted.tile
    truth = np.nan_to_num(window.reflectance)
    observed = np.nan_to_num(series.reflectance)
    refined, trusted = trusted_clear(series.reflectance, series.mask, series.bands, config)
    learn, held = split_holdout(
        trusted, config.holdout_fraction, case.seed, cloud_shapes(refined, trusted), config.holdout_dates
    )
    blue = list(series.bands).index(BLUE_BAND) if BLUE_BAND in series.bands else None

    def field(guide: np.ndarray, visible: np.ndarray) -> np.ndarray:
        return date_residual_field(
            observed, guide, visible, blue=blue, similar=similar, components=components
        )

    seen = guide_series(observed, learn, series.days)
    check = held & learn.any(axis=(1, 2), keepdims=True)
    if check.sum() < SHRINK_MIN_SAMPLES:
        check = learn
    share = fit_shrinkage(seen + field(seen, learn), seen, observed, check).reshape(1, -1, 1, 1)
    guide = guide_series(observed, trusted, series.days)
    filled = np.where(trusted[:, None], observed, np.clip(guide + share * field(guide, trusted), 0.0, 1.0))
    baselines = (
        temporal_linear(observed, trusted, series.days),
        learned_linear(observed, trusted, series.days, series.s1),
    )

    def score(prediction: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    psnr(truth[t], prediction[t], painted.region & painted.truth_clear[t])
                    for t in painted.targets
                ]
            )
        )

    return score(filled), max(score(b) for b in baselines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="held-out splits (comma-separated)")
    parser.add_argument("--protocols", default="oracle,realistic", help="oracle, realistic or both")
    parser.add_argument("--similar", default="0,16", help="similar pixels per setting (0: the date's mean)")
    parser.add_argument("--components", default="8", help="trajectory components (with similar > 0)")
    parser.add_argument(
        "--preset", default="fast", help="masks, hold-out and shrink settings from this preset"
    )
    args = parser.parse_args(argv)
    config = resolve_config(args.preset)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [(0, 0)] if "0" in args.similar.split(",") else []
    settings += [
        (int(k), int(c)) for k in args.similar.split(",") if int(k) for c in args.components.split(",")
    ]
    tiles: dict[str, TileArrays] = {}
    for protocol in args.protocols.split(","):
        margins: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
        chosen = [
            c
            for c in quality.cases(seeds=seeds, protocols=[protocol])
            if c.paint == "partial" and not c.series.held_out
        ]
        print(f"\n== {protocol}: {len(chosen)} runs (partly painted tuning cases × seeds), margin dB over "
              "the best of linear and ridge (refined masks)")  # fmt: skip
        for case in chosen:
            row = []
            for similar, components in settings:
                filled, best = guide_alone(case, config, similar, components, tiles)
                margins[(similar, components)].append(filled - best)
                row.append(f"{filled - best:+6.2f}")
            print(f"  {case.id:36s} " + " ".join(row), flush=True)
        for (similar, components), values in margins.items():
            label = (
                "the date's mean" if similar == 0 else f"{similar} similar pixels, {components} components"
            )
            print(f"  {label:40s} mean {np.mean(values):+.2f}  worst {np.min(values):+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
