"""The campaign config file: one TOML document, validated into frozen models with errors that name the key.

A campaign is an area, a period, a catalogue, an output URL, a fit preset and the resources to spend::

    area = "2.54,49.49,6.41,51.51"        # GeoJSON file, WKT, or minlon,minlat,maxlon,maxlat
    start = 2023-01-01
    end = 2023-12-31
    output = "s3://bucket/belgium-2023"   # local path or any fsspec URL

    [catalog]
    url = "https://planetarycomputer.microsoft.com/api/stac/v1"   # or: items = "items.json"

    [fit]
    preset = "fast"

    [resources]
    gpus_per_fit = 0.5                    # two fits share each GPU

Relative paths (``area`` files, ``catalog.items``, a local ``output``) are taken relative to the config
file, so a campaign directory can be moved or shipped whole with ``ray job submit --working-dir``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from campaign.errors import ConfigError
from tiler.errors import DeclouderError
from tiler.grid import DEFAULT_OVERLAP, DEFAULT_RESOLUTION, DEFAULT_TILE_SIZE

#: Fit presets the fit stage ships (fit.PRESETS); checked again against the installed fit stage at run time.
DEFAULT_PRESET = "fast"
#: A fit is retried this many times in all (actor deaths included) before its tile is marked failed.
DEFAULT_ATTEMPTS = 3
#: Concurrent ingest tasks: each holds one tile's arrays (~0.5 GB at 384×768×30 dates) while it loads.
DEFAULT_INGEST_CONCURRENCY = 4
#: Fractions of a GPU a fit may hold: 1/n, so n fits pack each GPU exactly (Ray's fractional GPUs).
MAX_FITS_PER_GPU = 16


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CatalogConfig(BaseModel):
    """Where the Sentinel-1/2 items come from, and how ingest reads them.

    ``url`` (a STAC API) or ``items`` (a saved ItemCollection, for offline runs) is the catalogue; any
    other key is an option of the ingest stage's ``IngestConfig`` (``s2_collection``, ``s1_collection``,
    ``max_cloud``, ``s1_window_days``, ``bands``, ``profile``, ...), checked by the ingest stage itself.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    url: str | None = Field(default=None, description="STAC API URL")
    items: str | None = Field(default=None, description="ItemCollection (GeoJSON) file instead of an API")
    s1_url: str | None = Field(default=None, description="another STAC API for Sentinel-1")
    s1_items: str | None = Field(default=None, description="another ItemCollection for Sentinel-1")

    @model_validator(mode="after")
    def _one_source(self) -> CatalogConfig:
        if (self.url is None) == (self.items is None):
            raise ValueError(
                "give exactly one of catalog.url (a STAC API) or catalog.items (an ItemCollection file)"
            )
        if self.s1_url is not None and self.s1_items is not None:
            raise ValueError("give at most one of catalog.s1_url and catalog.s1_items")
        return self

    @property
    def ingest_options(self) -> dict[str, Any]:
        """The ingest stage's options (IngestConfig keyword arguments) besides the period."""
        options: dict[str, Any] = dict(self.model_extra or {})
        options["catalog"] = self.url if self.url is not None else self.items
        s1 = self.s1_url if self.s1_url is not None else self.s1_items
        if s1 is not None:
            options["s1_catalog"] = s1
        return options


class GridConfig(_Section):
    """The tile grid (tiler.grid): tile size including overlap, overlap and pixel size."""

    size: tuple[int, int] = DEFAULT_TILE_SIZE
    overlap: int = Field(default=DEFAULT_OVERLAP, ge=0)
    resolution: float = Field(default=DEFAULT_RESOLUTION, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> GridConfig:
        if min(self.size) <= 0:
            raise ValueError(f"grid.size {list(self.size)} must be two positive pixel counts [height, width]")
        if self.overlap >= min(self.size) // 2:
            raise ValueError(f"grid.overlap {self.overlap} px must be less than half of grid.size")
        return self


class FitSection(_Section):
    """How each tile is fitted (fit.fit_tile's options)."""

    preset: str = DEFAULT_PRESET
    input: Literal["s1", "noise"] = "s1"
    device: str = "auto"
    seed: int = 0
    vgg_weights: str | None = Field(default=None, description="path to VGG16 weights for presets that use it")
    #: Start each fit from a fitted neighbour's weights (fit_tile's init_weights; every fit then saves its
    #: weights beside its store). With a preset's ``warm_passes`` a warm fit runs fewer passes.
    warm_start: bool = False


class ResourcesConfig(_Section):
    """What each task and actor holds on the cluster."""

    gpus_per_fit: float = Field(default=1.0, gt=0, le=1, description="GPU share per fit actor: 1/n")
    cpus_per_fit: float = Field(default=1.0, gt=0, description="CPUs per fit actor (its data loading)")
    fit_actors: int | None = Field(
        default=None, ge=1, description="fit actors to start; None: as many as the cluster's GPUs hold"
    )
    ingest_cpus: float = Field(default=1.0, gt=0)
    ingest_concurrency: int = Field(default=DEFAULT_INGEST_CONCURRENCY, ge=1)
    mosaic_cpus: float = Field(default=1.0, gt=0)

    @field_validator("gpus_per_fit")
    @classmethod
    def _one_over_n(cls, value: float) -> float:
        n = round(1 / value)
        if n > MAX_FITS_PER_GPU or not math.isclose(n * value, 1.0, rel_tol=1e-6):
            raise ValueError(
                f"must be 1/n of a GPU with n <= {MAX_FITS_PER_GPU} (1, 0.5, 0.25, ...) so fits pack "
                f"each GPU evenly; got {value}"
            )
        return 1.0 / n

    @property
    def fits_per_gpu(self) -> int:
        return round(1 / self.gpus_per_fit)


class RetriesConfig(_Section):
    """Attempts per tile and stage (first try included) before the tile is marked failed."""

    ingest: int = Field(default=DEFAULT_ATTEMPTS, ge=1)
    fit: int = Field(default=DEFAULT_ATTEMPTS, ge=1)
    mosaic: int = Field(default=DEFAULT_ATTEMPTS, ge=1)


class OutputsConfig(_Section):
    """What is written from each zone's finished mosaic besides the Zarr store (tiler.outputs)."""

    quicklooks: bool = Field(default=True, description="an RGB PNG per date")
    cogs: bool = Field(default=False, description="a cloud-optimised GeoTIFF per date, all bands")
    stac: bool = Field(default=True, description="a STAC collection describing the mosaic's dates")
    #: A regular calendar beside each zone's mosaic (tiler.calendar): "5D", "10D", "1MS", "SMS", "W", ...;
    #: each mosaic region fills its cell of it from the blended series it holds (no serial step).
    cadence: str | None = Field(default=None, description="calendar steps (pandas offset alias), or none")
    #: The fit's σ in the mosaic (and calendar): None = when the fit preset holds out pixels (the fit
    #: then writes ``s2_declouded_sigma``); true / false to decide it here.
    sigma: bool | None = None

    @field_validator("cadence")
    @classmethod
    def _cadence(cls, value: str | None) -> str | None:
        from tiler.calendar import CADENCE_FORMS, CalendarError, check_cadence

        if value is None:
            return None
        try:
            return check_cadence(value, option="outputs.cadence")
        except CalendarError:
            raise ValueError(
                f"not a cadence; accepted forms: {', '.join(CADENCE_FORMS)} (pandas offset aliases), or "
                "leave the key out for no calendar"
            ) from None

    @property
    def any(self) -> bool:
        return self.quicklooks or self.cogs or self.stac


class CampaignConfig(_Section):
    """A whole campaign, as read from its config file."""

    name: str = Field(default="campaign", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    area: str = Field(description="GeoJSON file, WKT, or minlon,minlat,maxlon,maxlat")
    start: date
    end: date
    output: str = Field(description="output URL: local path or fsspec URL (s3://...)")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    catalog: CatalogConfig
    grid: GridConfig = GridConfig()
    fit: FitSection = FitSection()
    resources: ResourcesConfig = ResourcesConfig()
    retries: RetriesConfig = RetriesConfig()
    outputs: OutputsConfig = OutputsConfig()

    @model_validator(mode="after")
    def _period(self) -> CampaignConfig:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}: swap them")
        return self

    def fingerprint(self) -> str:
        """Hash of what decides a campaign's outputs (not its resources, retries or storage credentials).

        A rerun must match it to resume: mixing tiles of two grids, periods or presets in one output
        would be silently wrong.
        """
        decisive = self.model_dump(mode="json", include={"area", "start", "end", "catalog", "grid", "fit"})
        decisive["fit"].pop("device", None)
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def _local_path(value: str, base: Path) -> str:
    """A relative local path in the config is relative to the config file; URLs stay as they are."""
    if "://" in value:
        return value
    return str((base / Path(value).expanduser()).resolve())


def _is_area_file(spec: str) -> bool:
    """An area is a file unless it is WKT (parentheses), inline GeoJSON (braces) or a bbox (numbers)."""
    return not any(c in spec for c in "({") and not re.fullmatch(r"[\s\d.,eE+-]+", spec)


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        parent: Any = model
        for part in error["loc"][:-1]:
            # cast for mypy only: a class on an extra_forbidden error's path is a pydantic model
            fields = cast("type[BaseModel]", parent).model_fields if isinstance(parent, type) else None
            field = fields.get(str(part)) if fields is not None else None
            parent = field.annotation if field is not None else None
        known = sorted(cast("type[BaseModel]", parent).model_fields) if isinstance(parent, type) else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{loc}: unknown key; {hint}known keys here: {', '.join(known)}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind != "value_error" and not isinstance(error["input"], dict):
        return f"{loc} = {error['input']!r}: {message}"
    return f"{loc}: {message}" if loc else message


def parse_config(data: Mapping[str, Any], *, base: Path, source: str = "config") -> CampaignConfig:
    """Validate a config mapping; relative paths are resolved against ``base``."""
    raw = dict(data)
    if isinstance(raw.get("area"), str) and _is_area_file(raw["area"]):
        raw["area"] = _local_path(raw["area"], base)
    if isinstance(raw.get("output"), str):
        raw["output"] = _local_path(raw["output"], base)
    catalog = raw.get("catalog")
    if isinstance(catalog, Mapping):
        files = {
            k: _local_path(v, base)
            for k, v in catalog.items()
            if k in ("items", "s1_items") and isinstance(v, str)
        }
        raw["catalog"] = {**catalog, **files}
    try:
        config = CampaignConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(e, CampaignConfig) for e in err.errors())
        raise ConfigError(
            f"{source}: {problems} (see docs/campaign.md, 'Config file', for every key)"
        ) from None
    check_stages(config, source=source)
    return config


def mosaic_sigma(config: CampaignConfig) -> bool:
    """Whether the campaign's mosaics carry the fit's σ: ``outputs.sigma``, or by default whether the fit
    preset holds out pixels (a fit writes ``s2_declouded_sigma`` only then), decided before any fit."""
    if config.outputs.sigma is not None:
        return config.outputs.sigma
    from fit import PRESETS

    preset = PRESETS.get(config.fit.preset)
    return preset is not None and preset.holdout_fraction > 0


def ingest_config(config: CampaignConfig) -> Any:
    """The ingest stage's own frozen ``IngestConfig`` for this campaign."""
    from ingest import IngestConfig

    known = {f.name for f in dataclasses.fields(IngestConfig)} - {"start", "end", "catalog", "s1_catalog"}
    options = config.catalog.ingest_options
    unknown = sorted(set(options) - known - {"catalog", "s1_catalog"})
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"catalog.{unknown[0]}: unknown key; {hint}known keys here: url, items, s1_url, s1_items, "
            f"{', '.join(sorted(known))}"
        )
    return IngestConfig(start=config.start, end=config.end, **options)


def check_stages(config: CampaignConfig, *, source: str = "config") -> None:
    """Let the stages check their own options now, before any tile is planned or any GPU is held."""
    from fit import PRESETS

    if config.fit.preset not in PRESETS:
        raise ConfigError(
            f"{source}: fit.preset = {config.fit.preset!r}: unknown preset; choose one of "
            f"{', '.join(sorted(PRESETS))}"
        )
    if config.fit.vgg_weights is not None and not Path(config.fit.vgg_weights).is_file():
        raise ConfigError(
            f"{source}: fit.vgg_weights = {config.fit.vgg_weights!r}: no such file; give the path of the "
            "VGG16 weights (docs/fit.md says how to get them) or remove the key"
        )
    try:
        ingest_config(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except DeclouderError as err:
        raise ConfigError(f"{source}: [catalog] {err}") from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign config file (TOML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"campaign config {str(path)!r} does not exist; write one (docs/campaign.md, 'Config file') "
            "or check the path"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}; fix the syntax at that line") from None
    return parse_config(data, base=path.resolve().parent, source=str(path))
