"""The quality suite: the fit against every baseline on every bundled real series, both paint modes,
both protocols, several seeds; one line of JSON per case, a summary table at the end.

    python bench/quality.py                                   # the full suite (~40 min on one core here)
    python bench/quality.py --quick                           # one seed, oracle protocol only
    python bench/quality.py --set holdout_fraction=0.1 --set masks.dilation_px=2 --json after.jsonl
    python bench/quality.py --preset smoke --cases wc-winter --quick
    python bench/quality.py --report before.jsonl --report after.jsonl   # tables of finished runs
    python bench/quality.py --compare before.jsonl after.jsonl          # per case, side by side

Series (``SERIES``; the held-out one is run and reported last, and kept out of every tuning decision):

- WorldCereal 31UES (tests/data/worldcereal_31ues.zarr, S1 + S2, 10 bands, 10 m): three 30-date windows,
  ``wc-winter`` (dates 0:30, 2018-08..2019-02), ``wc-spring`` (20:50, 2018-12..2019-07) and
  ``wc-summer`` (42:72, 2019-05..2019-11), fitted with S1 and with noise input; and ``wc-heldout``
  (10:40, 2018-10..2019-04), whose target dates are no target of the other windows.
- GreenEarthNet 34TET (Mar-Aug 2021) and 29SND (May-Oct 2021) (S2 only, 4 bands, 20 m): noise input.
- ``wc-tiny``: 12 WorldCereal dates (48:60, 2019-06-30..2019-09-08) on 6×6 px: a tile a few pixels wide
  with a short series, where a fit must still not end below linear interpolation.

Per case (series × paint mode × protocol × seed): ``fit.evaluate.evaluate`` on the series' centre crop
(``--crop``; defaults in ``DEFAULT_CROPS``), two targets painted; the fit with each input, every baseline
(temporal linear, mosaic, nearest, the learned ``ridge``) with SCL's and the refined masks, the margin of
each fit over the best *refined* baseline (painted-region PSNR), SAM and its difference to that
baseline's, the seam ratio, seconds. Cases run seed by seed (every series at seed 0 first), and each
line is appended to ``--json`` as it finishes: a long run can be read while it goes, and a rerun with the
same file skips the cases it already holds for the same settings (resume). Where both protocols paint
exactly the same series (a fully clouded source whose SCL already says cloud everywhere it is painted),
the realistic case takes the oracle case's result (marked ``same_input_as``) instead of refitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import math
import statistics
import sys
import time
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit.arrays import TileArrays  # noqa: E402
from fit.config import FitConfig, resolve_config  # noqa: E402
from fit.errors import EvaluationError, FitConfigError  # noqa: E402
from fit.evaluate import PAINT_MODES, PROTOCOLS, Evaluation, evaluate, paint  # noqa: E402
from fit.masks import MaskRefinement  # noqa: E402
from tiler.store import open_tile  # noqa: E402

DATA = ROOT / "tests" / "data"


@dataclass(frozen=True)
class Series:
    """One real series of the suite: a store, its dates, the inputs to fit it with."""

    key: str
    store: str
    dates: tuple[int, int]
    kind: str  # "worldcereal", "greenearthnet" or "tiny": picks the default crop
    inputs: tuple[str, ...]
    label: str
    held_out: bool = False


#: The suite's series; the held-out window comes last (run last, reported last).
SERIES: tuple[Series, ...] = (
    Series("wc-winter", "worldcereal_31ues.zarr", (0, 30), "worldcereal", ("s1", "noise"),
           "WorldCereal 31UES 2018-08-04..2019-02-20 (targets Oct, Jan)"),
    Series("wc-spring", "worldcereal_31ues.zarr", (20, 50), "worldcereal", ("s1", "noise"),
           "WorldCereal 31UES 2018-12-07..2019-07-05 (targets Mar, May)"),
    Series("wc-summer", "worldcereal_31ues.zarr", (42, 72), "worldcereal", ("s1", "noise"),
           "WorldCereal 31UES 2019-05-11..2019-11-27 (targets Jul, Oct/Nov)"),
    Series("gen-34tet", "greenearthnet_34tet.zarr", (0, 30), "greenearthnet", ("noise",),
           "GreenEarthNet 34TET 2021-03-12..2021-08-04 (S2 only)"),
    Series("gen-29snd", "greenearthnet_29snd.zarr", (0, 30), "greenearthnet", ("noise",),
           "GreenEarthNet 29SND 2021-05-14..2021-10-06 (S2 only)"),
    Series("wc-tiny", "worldcereal_31ues.zarr", (48, 60), "tiny", ("s1", "noise"),
           "WorldCereal 31UES 2019-06-30..2019-09-08, 12 dates of 6x6 px (targets Jul)"),
    Series("wc-heldout", "worldcereal_31ues.zarr", (10, 40), "worldcereal", ("s1", "noise"),
           "WorldCereal 31UES 2018-10-08..2019-04-26 (targets Feb, Apr): HELD OUT", held_out=True),
)  # fmt: skip
#: Centre-crop side per series kind: sized so the full suite (72 cases, 120 fits of today's ``fast``)
#: runs in about 40 minutes on one core of this 2-core machine (a fit of 30 dates: ~12 s at 24×24 px,
#: ~20 s at 32×32 px, 3 network levels either way). GreenEarthNet's 20 m pixels and its one fit per
#: case allow the larger crop.
DEFAULT_CROPS: dict[str, int] = {"worldcereal": 24, "greenearthnet": 32, "tiny": 6}
SEEDS: tuple[int, ...] = (0, 1, 2)
#: Clear dates painted per case (spread over the window; scored one by one and averaged).
TARGETS = 2
#: Protocols in report order: reconstruction quality first, then end to end.
SUITE_PROTOCOLS: tuple[str, ...] = ("oracle", "realistic")
assert set(SUITE_PROTOCOLS) == set(PROTOCOLS)


@dataclass(frozen=True)
class Case:
    series: Series
    paint: str
    protocol: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.series.key}/{self.paint}/{self.protocol}/s{self.seed}"

    @property
    def group(self) -> str:
        """The case without its seed: what the seed spread is taken over."""
        return f"{self.series.key}/{self.paint}/{self.protocol}"


def cases(
    series: Sequence[Series] = SERIES,
    seeds: Sequence[int] = SEEDS,
    protocols: Sequence[str] = SUITE_PROTOCOLS,
    patterns: Sequence[str] = (),
) -> list[Case]:
    """Every case, seed by seed (all series at the first seed first), held-out series last per seed.

    ``patterns``: keep the cases whose id matches one of them (fnmatch, or a plain substring).
    """
    ordered = sorted(series, key=lambda s: s.held_out)
    out = [
        Case(s, paint, protocol, seed)
        for seed in seeds
        for s in ordered
        for paint in PAINT_MODES
        for protocol in protocols
    ]
    if patterns:
        out = [c for c in out if any(p in c.id or fnmatch.fnmatch(c.id, p) for p in patterns)]
    return out


# -- FitConfig overrides (--set key=value) --------------------------------------------------------------


def _parse_value(key: str, text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint`` (the FitConfig field's annotation)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(key, text, inner)
    if origin is typing.Literal:
        if text not in args:
            raise FitConfigError(f"--set {key}={text}: {key} is one of {', '.join(map(str, args))}")
        return text
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse_value(key, part.strip(), item) for part in text.split(",") if part.strip())
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise FitConfigError(f"--set {key}={text}: {key} is true or false")
    if hint in (int, float, str):
        try:
            return hint(text)
        except ValueError:
            raise FitConfigError(f"--set {key}={text}: {key} takes a {hint.__name__}") from None
    raise FitConfigError(f"--set {key}: a field of type {hint} cannot be set from the command line")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings -> FitConfig field values, parsed with the fields' types.

    Mask refinement settings are ``masks.<field>`` (e.g. ``masks.dilation_px=2``).
    """
    hints = typing.get_type_hints(FitConfig)
    mask_hints = typing.get_type_hints(MaskRefinement)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise FitConfigError(f"--set {item!r}: write it as key=value, e.g. --set passes=3")
        if key.startswith("masks."):
            field = key.removeprefix("masks.")
            if field not in mask_hints:
                raise FitConfigError(
                    f"--set {key}: MaskRefinement has no field {field!r} (fields: {', '.join(mask_hints)})"
                )
            out[key] = _parse_value(key, text, mask_hints[field])
        elif key in hints and key not in ("name", "masks"):
            out[key] = _parse_value(key, text, hints[key])
        else:
            settable = [k for k in hints if k not in ("name", "masks")]
            raise FitConfigError(
                f"--set {key}: FitConfig has no settable field {key!r} (fields: {', '.join(settable)}; "
                "mask settings as masks.<field>)"
            )
    return out


def apply_overrides(config: FitConfig, overrides: dict[str, Any]) -> FitConfig:
    """The config with the overrides applied (validated by FitConfig itself); renamed when changed."""
    if not overrides:
        return config
    masks = {k.removeprefix("masks."): v for k, v in overrides.items() if k.startswith("masks.")}
    fields = {k: v for k, v in overrides.items() if not k.startswith("masks.")}
    if masks:
        fields["masks"] = dataclasses.replace(config.masks, **masks)
    label = ",".join(f"{k}={v}" for k, v in overrides.items())
    return config.replace(name=f"{config.name}+{label}", **fields)


# -- one case -----------------------------------------------------------------------------------------


def centre_crop(tile: TileArrays, side: int) -> TileArrays:
    """The ``side`` × ``side`` centre of the tile (the whole tile where it is smaller)."""
    height, width = tile.reflectance.shape[2:]
    y0, x0 = max(0, (height - side) // 2), max(0, (width - side) // 2)
    cut = np.s_[..., y0 : y0 + side, x0 : x0 + side]
    return TileArrays(tile.name, tile.reflectance[cut], tile.mask[cut], tile.s1[cut], tile.bands, tile.times)


def settings_key(config: FitConfig, crops: dict[str, int], targets: int) -> str:
    """What decides a case's result besides the case itself: a run resumes only with the same key."""
    text = json.dumps({"config": config.to_dict(), "crops": crops, "targets": targets}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def case_record(case: Case, evaluation: Evaluation, crop: int, key: str, seconds: float) -> dict[str, Any]:
    """One JSON line: the case, every row's scores, the fits' margins over the best refined baseline."""
    best = evaluation.best_baseline(variant="refined")
    best_any = evaluation.best_baseline()
    linear = evaluation.row("linear", "refined")
    fits = {}
    for row in evaluation.rows:
        if row.method != "fit":
            continue
        c = row.calibration
        fits[row.variant] = {
            "psnr": row.painted.psnr,
            "sam": row.painted.sam,
            "ssim": row.painted.ssim,
            "seam": _finite(row.seam),
            "seconds": row.seconds,
            "margin_db": row.painted.psnr - best.painted.psnr,
            "vs_linear_db": row.painted.psnr - linear.painted.psnr,
            "sam_vs_best": row.painted.sam - best.painted.sam,
            # The fit's σ on the painted pixels (fit.metrics.calibration); None without a σ.
            "coverage": None if c is None else _finite(c.coverage),
            "spearman": None if c is None else _finite(c.spearman),
            "rmse_drop": None if c is None else _finite(c.rmse_drop),
            "rmse_drop_ceiling": None if c is None else _finite(c.rmse_drop_ceiling),
        }
    return {
        "case": case.id,
        "group": case.group,
        "series": case.series.key,
        "held_out": case.series.held_out,
        "paint": case.paint,
        "protocol": case.protocol,
        "seed": case.seed,
        "crop": crop,
        "settings_key": key,
        "preset": evaluation.preset,
        "dates": list(evaluation.dates),
        "targets": list(evaluation.targets),
        "source": evaluation.source,
        "painted_fraction": evaluation.painted_fraction,
        "painted_trusted_fraction": _finite(evaluation.painted_trusted_fraction),
        "best_refined": {"label": best.label, "psnr": best.painted.psnr, "sam": best.painted.sam},
        "best_any": {"label": best_any.label, "psnr": best_any.painted.psnr},
        "fit": fits,
        "rows": [
            {
                "method": r.method,
                "variant": r.variant,
                "psnr": r.painted.psnr,
                "sam": r.painted.sam,
                "ssim": r.painted.ssim,
                "rmse": r.painted.rmse,
                "whole_psnr": r.whole.psnr,
                "seam": _finite(r.seam),
                "seconds": r.seconds,
            }
            for r in evaluation.rows
        ],
        "seconds": seconds,
    }


def _window(case: Case, crop: int, tiles: dict[str, TileArrays]) -> TileArrays:
    if case.series.store not in tiles:
        tiles[case.series.store] = TileArrays.from_dataset(open_tile(str(DATA / case.series.store)).load())
    return centre_crop(tiles[case.series.store].dates(*case.series.dates), crop)


def protocols_agree(
    case: Case, config: FitConfig, crop: int, targets: int, tiles: dict[str, TileArrays]
) -> bool:
    """True when both protocols paint exactly the same series (the source's SCL already says cloud
    wherever it is painted, typical of a fully clouded source): the fit and every baseline then see
    the same input, so the realistic case's result is the oracle one's (fits are deterministic)."""
    window = _window(case, crop, tiles)
    oracle = paint(window, config, k=targets, mode=case.paint, protocol="oracle")
    realistic = paint(window, config, k=targets, mode=case.paint, protocol="realistic")
    return bool(np.array_equal(oracle.tile.mask, realistic.tile.mask))


def run_case(
    case: Case,
    config: FitConfig,
    crop: int,
    targets: int,
    device: str,
    key: str,
    tiles: dict[str, TileArrays],
) -> dict[str, Any]:
    window = _window(case, crop, tiles)
    started = time.perf_counter()
    evaluation = evaluate(
        window,
        config,
        paint_mode=case.paint,
        protocol=case.protocol,
        targets=targets,
        inputs=case.series.inputs,
        device=device,
        seed=case.seed,
    )
    return case_record(case, evaluation, crop, key, time.perf_counter() - started)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a (possibly still growing) suite file; a torn last line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# -- the summary --------------------------------------------------------------------------------------


def _primary(record: dict[str, Any]) -> str:
    """The input a case is judged by: S1 where the series has radar, else noise."""
    return "s1" if "s1" in record["fit"] else "noise"


def _fmt(value: float | None, spec: str = "+.2f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


SERIES_ORDER = [s.key for s in SERIES]


def _group_order(first: dict[str, Any]) -> tuple[bool, int, int, str]:
    """Report order: tuned series before the held-out one, oracle before realistic, suite order."""
    series = SERIES_ORDER.index(first["series"]) if first["series"] in SERIES_ORDER else len(SERIES_ORDER)
    return first["held_out"], SUITE_PROTOCOLS.index(first["protocol"]), series, first["group"]


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.mean(kept) if kept else None


def _linear_psnr(record: dict[str, Any]) -> float:
    """Painted-region PSNR of temporal linear interpolation with the refined masks in one case."""
    (row,) = [r for r in record["rows"] if (r["method"], r["variant"]) == ("linear", "refined")]
    return float(row["psnr"])


def group_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One case over its seeds: mean margin, worst seed, seed spread, S1 − noise, SAM and seam."""
    primary = _primary(runs[0])
    margins = [r["fit"][primary]["margin_db"] for r in runs]
    return {
        "group": runs[0]["group"],
        "held_out": runs[0]["held_out"],
        "protocol": runs[0]["protocol"],
        "input": primary,
        "seeds": len(runs),
        "best": runs[0]["best_refined"]["label"],
        "best_psnr": statistics.mean(r["best_refined"]["psnr"] for r in runs),
        "fit_psnr": statistics.mean(r["fit"][primary]["psnr"] for r in runs),
        "margin": statistics.mean(margins),
        "worst_seed": min(margins),
        "spread": max(margins) - min(margins) if len(margins) > 1 else None,
        "s1_noise": _mean(
            r["fit"]["s1"]["psnr"] - r["fit"]["noise"]["psnr"]
            for r in runs
            if {"s1", "noise"} <= set(r["fit"])
        ),
        "sam": statistics.mean(r["fit"][primary]["sam_vs_best"] for r in runs),
        "seam": _mean(r["fit"][primary]["seam"] for r in runs),
        "vs_linear": statistics.mean(r["fit"][primary]["psnr"] - _linear_psnr(r) for r in runs),
        "trusted": _mean(r["painted_trusted_fraction"] for r in runs),
        # Calibration of the fit's σ (files written before it existed lack the fields: None).
        "coverage": _mean(r["fit"][primary].get("coverage") for r in runs),
        "spearman": _mean(r["fit"][primary].get("spearman") for r in runs),
        "rmse_drop": _mean(r["fit"][primary].get("rmse_drop") for r in runs),
        "rmse_drop_ceiling": _mean(r["fit"][primary].get("rmse_drop_ceiling") for r in runs),
        "seconds": statistics.mean(r["seconds"] for r in runs),
    }


CASE_HEADER = (
    "| case (series/paint/protocol) | seeds | input | best refined baseline | its PSNR | fit PSNR "
    "| margin dB | seed spread | worst seed | S1 − noise | SAM − best° | seam | painted trusted "
    "| ±1σ coverage | Spearman σ vs err | RMSE drop (10 % most uncertain) / ceiling | s/case |\n"
    "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
SUMMARY_HEADER = (
    "| summary | cases | mean margin dB | worst case dB | worst run dB | S1 − noise dB "
    "| seed spread mean / max dB | SAM ≤ best | seam max | worst vs linear (refined) dB "
    "| ±1σ coverage min / max | mean Spearman | mean RMSE drop |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _case_line(g: dict[str, Any]) -> str:
    name = g["group"] + (" (HELD OUT)" if g["held_out"] else "")
    cells = [
        name, str(g["seeds"]), g["input"], g["best"], f"{g['best_psnr']:.2f}", f"{g['fit_psnr']:.2f}",
        _fmt(g["margin"]), _fmt(g["spread"], ".2f"), _fmt(g["worst_seed"]), _fmt(g["s1_noise"]),
        _fmt(g["sam"]), _fmt(g["seam"], ".2f"), _fmt(g["trusted"], ".1%"), _fmt(g["coverage"], ".1%"),
        _fmt(g["spearman"], ".2f"), f"{_fmt(g['rmse_drop'], '.1%')} / {_fmt(g['rmse_drop_ceiling'], '.1%')}",
        f"{g['seconds']:.0f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _summary_line(name: str, chosen: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> str:
    spreads = [g["spread"] for g in chosen if g["spread"] is not None]
    seams = [g["seam"] for g in chosen if g["seam"] is not None]
    coverages = [g["coverage"] for g in chosen if g["coverage"] is not None]
    cells = [
        name,
        str(len(chosen)),
        _fmt(statistics.mean(g["margin"] for g in chosen)),
        _fmt(min(g["margin"] for g in chosen)),
        _fmt(min(r["fit"][_primary(r)]["margin_db"] for r in runs)),
        _fmt(_mean(g["s1_noise"] for g in chosen)),
        f"{_fmt(_mean(spreads), '.2f')} / {_fmt(max(spreads) if spreads else None, '.2f')}",
        f"{sum(g['sam'] <= 0 for g in chosen)}/{len(chosen)}",
        _fmt(max(seams) if seams else None, ".2f"),
        _fmt(min(g["vs_linear"] for g in chosen)),
        f"{_fmt(min(coverages) if coverages else None, '.1%')} / "
        f"{_fmt(max(coverages) if coverages else None, '.1%')}",
        _fmt(_mean(g["spearman"] for g in chosen), ".2f"),
        _fmt(_mean(g["rmse_drop"] for g in chosen), ".1%"),
    ]
    return "| " + " | ".join(cells) + " |"


def summarise(records: Sequence[dict[str, Any]]) -> str:
    """Per case (mean over seeds) and per protocol: mean and worst margin, S1 − noise, seed spread.

    Margins are the fit's painted-region PSNR minus the best refined baseline's, with S1 input where the
    series has radar, else noise. The held-out window is summarised on its own lines, last.
    """
    if not records:
        return "(no finished case)"
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    summaries = sorted(
        (group_summary(runs) for runs in groups.values()), key=lambda g: _group_order(groups[g["group"]][0])
    )
    lines = [CASE_HEADER, *(_case_line(g) for g in summaries), "", SUMMARY_HEADER]
    for held_out in (False, True):
        for protocol in SUITE_PROTOCOLS:
            chosen = [g for g in summaries if g["held_out"] == held_out and g["protocol"] == protocol]
            if chosen:
                runs = [r for g in chosen for r in groups[g["group"]]]
                lines.append(_summary_line(protocol + (" (HELD OUT)" if held_out else ""), chosen, runs))
    return "\n".join(lines)


def _order_key(summary: dict[str, Any]) -> tuple[bool, int, int, str]:
    series = summary["group"].split("/")[0]
    position = SERIES_ORDER.index(series) if series in SERIES_ORDER else len(SERIES_ORDER)
    return summary["held_out"], SUITE_PROTOCOLS.index(summary["protocol"]), position, summary["group"]


def compare(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> str:
    """Per case, over the seeds both runs have: margin, SAM − best and seam, before and after."""
    common = {(r["group"], r["seed"]) for r in before} & {(r["group"], r["seed"]) for r in after}
    groups = {}
    for label, all_records in (("before", before), ("after", after)):
        records = [r for r in all_records if (r["group"], r["seed"]) in common]
        by_group: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_group.setdefault(r["group"], []).append(r)
        groups[label] = {g: group_summary(runs) for g, runs in by_group.items()}
    names = sorted(set(groups["before"]) & set(groups["after"]), key=lambda g: _order_key(groups["after"][g]))
    lines = [
        "| case | seeds before / after | margin before | margin after | change dB "
        "| SAM − best before / after | seam before / after | S1 − noise before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in names:
        b, a = groups["before"][g], groups["after"][g]
        cells = [
            g + (" (HELD OUT)" if a["held_out"] else ""),
            f"{b['seeds']} / {a['seeds']}",
            _fmt(b["margin"]),
            _fmt(a["margin"]),
            _fmt(a["margin"] - b["margin"]),
            f"{_fmt(b['sam'])} / {_fmt(a['sam'])}",
            f"{_fmt(b['seam'], '.2f')} / {_fmt(a['seam'], '.2f')}",
            f"{_fmt(b['s1_noise'])} / {_fmt(a['s1_noise'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    missing = sorted({r["group"] for r in (*before, *after)} - set(names))
    if missing:
        lines.append(f"\n(not in both runs for any seed: {', '.join(missing)})")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="fast", help="fit preset (default fast)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig override, parsed with the field's type (repeatable; masks.<field> too)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, oracle protocol only")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated fit seeds")
    parser.add_argument("--protocols", default=",".join(SUITE_PROTOCOLS), help="oracle and/or realistic")
    parser.add_argument(
        "--cases", default="", help="comma-separated filters on case ids (series/paint/protocol/sN)"
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=None,
        help=f"centre-crop side for every series (default per kind: {DEFAULT_CROPS})",
    )
    parser.add_argument("--targets", type=int, default=TARGETS, help="clear dates painted per case")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one core by default)")
    parser.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=None,
        help="append one JSON line per finished case here; cases already there are skipped",
    )
    parser.add_argument(
        "--report",
        action="append",
        type=Path,
        default=[],
        help="print the tables of finished suite files (repeatable) and run nothing",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print two finished suite files side by side, per case, and run nothing",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    if args.compare:
        print(compare(read_records(args.compare[0]), read_records(args.compare[1])))
        return 0
    if args.report:
        for path in args.report:
            print(f"\n== {path}\n")
            print(summarise(read_records(path)))
        return 0
    torch.set_num_threads(args.threads)
    config = apply_overrides(resolve_config(args.preset), parse_overrides(args.overrides))
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",") if s.strip()]
    protocols = ["oracle"] if args.quick else [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise EvaluationError(f"--protocols: unknown {unknown}; use {', '.join(PROTOCOLS)}")
    todo = cases(seeds=seeds, protocols=protocols, patterns=[p for p in args.cases.split(",") if p.strip()])
    if not todo:
        raise EvaluationError(f"--cases {args.cases!r} matches no case; --list shows them")
    crops = {kind: args.crop or side for kind, side in DEFAULT_CROPS.items()}
    key = settings_key(config, crops, args.targets)
    if args.list:
        print("\n".join(c.id for c in todo))
        return 0
    done = (
        {r["case"] for r in read_records(args.json_path) if r.get("settings_key") == key}
        if args.json_path
        else set()
    )
    already = len(done & {c.id for c in todo})
    print(
        f"quality suite: {len(todo)} cases ({already} already in {args.json_path}), preset {config.name}, "
        f"crops {crops}, {args.targets} targets, device {args.device}, {args.threads} torch thread(s), "
        f"settings key {key}",
        flush=True,
    )
    tiles: dict[str, TileArrays] = {}
    records = (
        [r for r in read_records(args.json_path) if r.get("settings_key") == key] if args.json_path else []
    )
    started = time.perf_counter()
    for i, case in enumerate(todo, 1):
        if case.id in done:
            continue
        crop = crops[case.series.kind]
        twin = next((r for r in records if r["case"] == case.id.replace("/realistic/", "/oracle/")), None)
        if (
            case.protocol == "realistic"
            and twin is not None
            and protocols_agree(case, config, crop, args.targets, tiles)
        ):
            record = {**twin, "case": case.id, "group": case.group, "protocol": case.protocol,
                      "same_input_as": twin["case"]}  # fmt: skip
        else:
            record = run_case(case, config, crop, args.targets, args.device, key, tiles)
        records.append(record)
        if args.json_path is not None:
            args.json_path.parent.mkdir(parents=True, exist_ok=True)
            with args.json_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        margins = ", ".join(f"{k} {_fmt(v['margin_db'])} dB (seam {_fmt(v['seam'], '.2f')}, ±1σ "
                            f"{_fmt(v.get('coverage'), '.0%')}, ρ {_fmt(v.get('spearman'), '.2f')}, "
                            f"drop {_fmt(v.get('rmse_drop'), '.0%')})"
                            for k, v in record["fit"].items())  # fmt: skip
        print(f"[{i}/{len(todo)}] {case.id}: vs {record['best_refined']['label']} "
              f"{record['best_refined']['psnr']:.2f} dB: {margins}; {record['seconds']:.0f} s "
              f"(elapsed {time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    wanted = {c.id for c in todo}
    print()
    print(summarise([r for r in records if r["case"] in wanted]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
