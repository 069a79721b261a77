"""`declouder fit`, `evaluate` and `demo` through the real entry point: results, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campaign.cli import main
from tiler.store import DECLOUDED, open_tile, tile_status, write_tile


def declouder(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the console script in-process; returns its exit code."""
    monkeypatch.setattr("sys.argv", ["declouder", *map(str, args)])
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture
def small_tile(worldcereal_tile: Path, tmp_path: Path) -> Path:
    """6 real dates, 16×16 px of the WorldCereal sample."""
    ds = open_tile(str(worldcereal_tile)).isel(time=slice(10, 16), y=slice(0, 16), x=slice(0, 16)).load()
    path = tmp_path / "tile.zarr"
    write_tile(ds, str(path))
    return path


def test_fit_command_writes_the_output(
    small_tile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fitted.zarr"
    code = declouder(monkeypatch, "fit", small_tile, "--out", out, "--preset", "smoke", "--device", "cpu")
    assert code == 0
    assert tile_status(str(out)) == "complete"
    assert DECLOUDED in open_tile(str(out), require=[DECLOUDED])
    assert "wrote" in capsys.readouterr().err


def test_fit_command_errors_are_one_line_with_exit_2(
    small_tile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fitted.zarr"
    code = declouder(monkeypatch, "fit", small_tile, "--out", out, "--preset", "smoke", "--device", "cpu")
    assert code == 0
    capsys.readouterr()
    code = declouder(monkeypatch, "fit", small_tile, "--out", out, "--preset", "smoke")
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--overwrite" in err and "Traceback" not in err

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    code = declouder(monkeypatch, "fit", small_tile, "--out", tmp_path / "p.zarr", "--preset", "paper")
    err = capsys.readouterr().err
    assert code == 2 and "vgg16-397923af.pth" in err and "--vgg-weights" in err
    assert tile_status(str(tmp_path / "p.zarr")) == "missing"

    code = declouder(monkeypatch, "fit", tmp_path / "missing.zarr", "--out", tmp_path / "x.zarr")
    err = capsys.readouterr().err
    assert code == 2 and "no tile store" in err


def test_evaluate_command_table_and_json(
    worldcereal_tile: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = tmp_path / "eval.json"
    code = declouder(
        monkeypatch, "evaluate", worldcereal_tile, "--preset", "smoke", "--paint", "partial",
        "--dates", "30:60", "--inputs", "noise", "--device", "cpu", "--json", report,
    )  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    for label in ("fit", "linear", "mosaic", "nearest", "refined", "scl", "painted input", "PSNR", "SAM"):
        assert label in table
    record = json.loads(report.read_text())
    times = open_tile(str(worldcereal_tile))["time"].values
    assert record["paint"] == "partial"
    assert record["dates"] == [str(times[30])[:10], str(times[59])[:10]]
    assert {(r["method"], r["variant"]) for r in record["rows"]} >= {("fit", "noise"), ("linear", "scl")}


def test_evaluate_command_bad_options(
    worldcereal_tile: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert declouder(monkeypatch, "evaluate", worldcereal_tile, "--dates", "40:200") == 2
    assert "dates 40:200 are outside its 72 dates" in capsys.readouterr().err
    assert declouder(monkeypatch, "evaluate", worldcereal_tile, "--dates", "x") == 2
    assert "expected START:STOP" in capsys.readouterr().err
    assert declouder(monkeypatch, "evaluate", worldcereal_tile, "--inputs", "s1,sar") == 2
    assert "unknown input(s) ['sar']" in capsys.readouterr().err
    assert declouder(monkeypatch, "evaluate", worldcereal_tile, "--paint", "half", "--preset", "smoke") == 2
    assert "unknown paint mode 'half'" in capsys.readouterr().err


def test_demo_writes_quicklook_and_metrics(
    worldcereal_tile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from fit.demo import run_demo

    result = run_demo(tmp_path / "demo", preset="smoke", dates=(10, 22), device="cpu")
    image = Image.open(result.quicklook)
    assert image.size[0] > 3 * image.size[1] - 100  # three square panels side by side
    metrics = json.loads(result.metrics.read_text())
    assert metrics["fit"]["preset"] == "smoke"
    assert {r["method"] for r in metrics["evaluation"]["rows"]} >= {"fit", "linear", "mosaic", "nearest"}
    assert tile_status(result.fitted_url) == "complete"
