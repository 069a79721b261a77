"""The campaign config file: valid files load into frozen models, bad ones fail naming the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from campaign.config import CampaignConfig, ingest_config, load_config
from campaign.errors import ConfigError

GOOD = """
name = "belgium-2019"
area = "area.geojson"
start = 2019-03-01
end = 2019-07-31
output = "out"

[catalog]
items = "items.json"
max_cloud = 80
s1_window_days = 4

[fit]
preset = "smoke"

[resources]
gpus_per_fit = 0.25
ingest_concurrency = 2

[retries]
fit = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "items.json").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "area.geojson").write_text(
        '{"type": "Polygon", "coordinates": [[[4.0, 50.7], [4.1, 50.7], [4.1, 50.8], [4.0, 50.7]]]}'
    )
    path = tmp_path / "campaign.toml"
    path.write_text(text)
    return path


def test_valid_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert config.name == "belgium-2019"
    assert config.area == str(tmp_path / "area.geojson")
    assert config.output == str(tmp_path / "out")
    assert config.catalog.items == str(tmp_path / "items.json")
    assert config.resources.fits_per_gpu == 4
    assert config.retries.fit == 2 and config.retries.ingest == 3  # the default
    assert config.grid.size == (384, 768)
    ingest = ingest_config(config)
    assert (ingest.catalog, ingest.max_cloud, ingest.s1_window_days) == (str(tmp_path / "items.json"), 80, 4)
    assert str(ingest.start) == "2019-03-01"
    with pytest.raises(ValidationError):
        config.name = "other"  # type: ignore[misc]


def test_object_store_output_and_bbox_area_stay_as_given(tmp_path: Path) -> None:
    text = GOOD.replace('area = "area.geojson"', 'area = "4.0,50.7,4.1,50.8"').replace(
        'output = "out"', 'output = "s3://bucket/campaign"\nstorage_options = { anon = false }'
    )
    config = load_config(_write(tmp_path, text))
    assert config.area == "4.0,50.7,4.1,50.8"
    assert config.output == "s3://bucket/campaign"
    assert config.storage_options == {"anon": False}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("gpus_per_fit = 0.25", "gpu_per_fit = 0.25"),
            r"resources\.gpu_per_fit: unknown key; did you mean 'gpus_per_fit'",
        ),
        (("gpus_per_fit = 0.25", "gpus_per_fit = 0.3"), r"resources\.gpus_per_fit.*1/n of a GPU.*got 0\.3"),
        (
            ("gpus_per_fit = 0.25", "gpus_per_fit = 2"),
            r"resources\.gpus_per_fit = 2.*less than or equal to 1",
        ),
        (("end = 2019-07-31", "end = 2019-01-31"), r"end 2019-01-31 is before start 2019-03-01: swap them"),
        (
            ('preset = "smoke"', 'preset = "fastest"'),
            r"fit\.preset = 'fastest': unknown preset; choose one of .*smoke",
        ),
        (
            ("max_cloud = 80", "max_clouds = 80"),
            r"catalog\.max_clouds: unknown key; did you mean 'max_cloud'",
        ),
        (("max_cloud = 80", "max_cloud = 180"), r"\[catalog\].*max_cloud.*180"),
        (('items = "items.json"', 'items = "items.json"\nurl = "https://x"'), r"exactly one of catalog\.url"),
        (('items = "items.json"', 'items = "nowhere.json"'), r"\[catalog\].*nowhere\.json"),
        (('output = "out"\n', ""), r"output: required key is missing"),
        (("fit = 2", "fit = 0"), r"retries\.fit = 0: .*greater than or equal to 1"),
        (('area = "area.geojson"', "area = 5"), r"area = 5: Input should be a valid string"),
        (("[retries]", "[retry]"), r"retry: unknown key; did you mean 'retries'"),
    ],
)
def test_bad_config_names_the_key_and_the_fix(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; write one"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2.*fix the syntax"):
        load_config(_write(tmp_path, 'name = "x"\nstart = = 2019'))


def test_fingerprint_follows_outputs_not_resources(tmp_path: Path) -> None:
    base = load_config(_write(tmp_path, GOOD))
    more_gpus = load_config(_write(tmp_path, GOOD.replace("gpus_per_fit = 0.25", "gpus_per_fit = 1")))
    other_period = load_config(_write(tmp_path, GOOD.replace("end = 2019-07-31", "end = 2019-08-31")))
    other_preset = load_config(_write(tmp_path, GOOD.replace('preset = "smoke"', 'preset = "fast"')))
    assert base.fingerprint() == more_gpus.fingerprint()
    assert len({base.fingerprint(), other_period.fingerprint(), other_preset.fingerprint()}) == 3


def test_models_are_frozen_and_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="extra"):
        CampaignConfig.model_validate(
            {
                "area": "1,2,3,4",
                "start": "2020-01-01",
                "end": "2020-02-01",
                "output": "/o",
                "catalog": {"url": "https://x"},
                "bogus": 1,
            }
        )


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("gpus_per_fit = 0.25", "gpus_per_fit = 0.3"))
    done = subprocess.run(
        [sys.executable, "-m", "campaign", "estimate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "resources.gpus_per_fit" in done.stderr and "1/n of a GPU" in done.stderr
