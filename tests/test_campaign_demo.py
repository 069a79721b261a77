"""`declouder demo` exactly as a user runs it: Ray embedded in the process, then the fit's evaluation.

(The default suite runs the demo's campaign on the shared test cluster, tests/test_campaign.py; this one
adds the embedded Ray start and the evaluation, a few minutes on 2 CPU cores.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_TIMEOUT_S = 1500


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_demo_command_as_users_run_it(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    done = subprocess.run(
        [sys.executable, "-m", "campaign", "demo", "--out", str(out), "--preset", "smoke", "--no-live"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "started an embedded Ray instance" in text
    assert "6/6 done, 0 failed" in text
    report = json.loads((out / "output-smoke" / "report.json").read_text())
    assert list(report["mosaics"].values()) == ["complete"]
    assert len(list((out / "output-smoke" / "outputs" / "32631" / "quicklooks").glob("*.png"))) == 20
    assert "evaluation: before/after quicklook" in text
    assert list((out / "evaluation").glob("*.png"))
