"""The quality suite's machinery (bench/quality.py) on a tiny real case, and its option parsing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fit.config import PRESETS
from fit.errors import FitConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_overrides_are_parsed_with_the_field_types(quality: ModuleType) -> None:
    overrides = quality.parse_overrides(
        [
            "passes=3",
            "lr=0.005",
            "keep_clear=false",
            "lr_decay=none",
            "channels_down=8,16",
            "warm_passes=none",
            "masks.dilation_px=2",
        ]
    )
    assert overrides == {"passes": 3, "lr": 0.005, "keep_clear": False, "lr_decay": "none",
                         "channels_down": (8, 16), "warm_passes": None, "masks.dilation_px": 2}  # fmt: skip
    config = quality.apply_overrides(PRESETS["fast"], {"passes": 3, "masks.dilation_px": 2})
    assert (config.passes, config.masks.dilation_px) == (3, 2)
    assert config.masks.b02_max == PRESETS["fast"].masks.b02_max
    assert config.name.startswith("fast+")
    assert quality.apply_overrides(PRESETS["fast"], {}) is PRESETS["fast"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("passes", r"key=value"),
        ("no_such_field=1", r"no settable field 'no_such_field'"),
        ("masks.nope=1", r"MaskRefinement has no field 'nope'"),
        ("passes=two", r"passes takes a int"),
        ("keep_clear=maybe", r"keep_clear is true or false"),
        ("lr_decay=linear", r"lr_decay is one of none, cosine"),
    ],
)
def test_bad_overrides_are_refused_by_name(quality: ModuleType, item: str, message: str) -> None:
    with pytest.raises(FitConfigError, match=message):
        quality.parse_overrides([item])


def test_cases_run_seed_by_seed_with_the_held_out_window_last(quality: ModuleType) -> None:
    every = quality.cases()
    assert len(every) == len(quality.SERIES) * 2 * 2 * 3  # series x paint modes x protocols x seeds
    seed0 = [c for c in every if c.seed == 0]
    assert every[: len(seed0)] == seed0
    assert all(c.series.held_out for c in seed0[-4:]) and not seed0[0].series.held_out
    quick = quality.cases(seeds=[0], protocols=["oracle"], patterns=["gen-*/partial/*"])
    assert [c.id for c in quick] == ["gen-34tet/partial/oracle/s0", "gen-29snd/partial/oracle/s0"]


def test_the_suite_runs_a_tiny_case_writes_a_line_and_resumes(
    quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.jsonl"
    argv = [
        "--preset",
        "smoke",
        "--quick",
        "--cases",
        "gen-29snd/partial",
        "--crop",
        "12",
        "--json",
        str(out),
    ]
    assert quality.main(argv) == 0
    printed = capsys.readouterr().out
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["case"] == "gen-29snd/partial/oracle/s0" and record["crop"] == 12
    assert record["painted_trusted_fraction"] == 0.0  # oracle holes: nothing painted is trusted
    assert set(record["fit"]) == {"noise"}  # S2-only series: noise input
    methods = {(r["method"], r["variant"]) for r in record["rows"]}
    assert {("ridge", "refined"), ("ridge", "scl"), ("linear", "refined")} <= methods
    assert record["best_refined"]["label"].endswith("(refined)")
    fit = record["fit"]["noise"]
    assert fit["margin_db"] == pytest.approx(fit["psnr"] - record["best_refined"]["psnr"])
    assert "| gen-29snd/partial/oracle |" in printed and "| oracle | 1 |" in printed
    # a second run with the same settings finds the case done and runs nothing
    assert quality.main(argv) == 0
    assert "(1 already in" in capsys.readouterr().out and len(out.read_text().splitlines()) == 1
    # other settings are another key: the case runs again
    assert quality.main([*argv, "--set", "passes=2"]) == 0
    assert len(out.read_text().splitlines()) == 2
    # before / after, per case: the two settings side by side
    records = quality.read_records(out)
    table = quality.compare(records[:1], records[1:])
    (line,) = [row for row in table.splitlines() if row.startswith("| gen-29snd/partial/oracle")]
    before, after = records[0]["fit"]["noise"]["margin_db"], records[1]["fit"]["noise"]["margin_db"]
    assert f"{after - before:+.2f}" in line and "1 / 1" in line
    # the command line itself: the table of a finished file
    report = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--report", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert report.returncode == 0, report.stderr
    assert "gen-29snd/partial/oracle" in report.stdout


def test_the_protocols_agree_only_where_they_paint_the_same_series(quality: ModuleType) -> None:
    # winter 0:30: the cloudiest source (2018-08-14) is cloud in SCL wherever it is painted, the
    # partial one (SCL misses part of its clouds) is not
    (cloudiest,) = quality.cases(seeds=[0], protocols=["realistic"], patterns=["wc-winter/cloudiest"])
    (partial,) = quality.cases(seeds=[0], protocols=["realistic"], patterns=["wc-winter/partial"])
    tiles: dict[str, object] = {}
    assert quality.protocols_agree(cloudiest, PRESETS["fast"], 24, 2, tiles)
    assert not quality.protocols_agree(partial, PRESETS["fast"], 24, 2, tiles)


def test_the_suite_reports_the_sigma_calibration_and_reads_files_without_it(
    quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.jsonl"
    argv = ["--preset", "smoke", "--quick", "--cases", "gen-29snd/partial", "--crop", "12", "--set",
            "holdout_fraction=0.1", "--set", "holdout_shapes=clouds", "--json", str(out)]  # fmt: skip
    assert quality.main(argv) == 0
    capsys.readouterr()
    (record,) = quality.read_records(out)
    fit = record["fit"]["noise"]
    assert 0 <= fit["coverage"] <= 1 and -1 <= fit["spearman"] <= 1 and fit["rmse_drop"] < 1
    summary = quality.group_summary([record])
    assert summary["coverage"] == fit["coverage"] and summary["rmse_drop"] == fit["rmse_drop"]
    table = quality.summarise([record])
    assert f"{fit['coverage']:.1%}" in table and "±1σ coverage min / max" in table
    # a file written before the calibration existed: the same tables, the new cells empty
    old = json.loads(json.dumps(record))
    for key in ("coverage", "spearman", "rmse_drop"):
        del old["fit"]["noise"][key]
    assert quality.group_summary([old])["coverage"] is None
    (line,) = [row for row in quality.summarise([old]).splitlines() if row.startswith("| oracle |")]
    assert line.rstrip(" |").endswith("– / – | – | –")
    assert "gen-29snd/partial/oracle" in quality.compare([old], [record])
