"""Campaign pieces that need no Ray: pool sizing, the output claim, the estimate, the live view."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from campaign.book import TileBook
from campaign.config import CampaignConfig, ResourcesConfig, RetriesConfig, parse_config
from campaign.driver import CampaignProgress, OutputLayout, claim_output, fit_pool
from campaign.errors import CampaignMismatchError
from campaign.estimate import estimate_campaign, estimate_lines
from campaign.ledger import FsspecLedgerStore, Ledger, LedgerError, TileState
from campaign.live import LiveView
from tiler.grid import TileRef

AREA = "4.0,50.7,4.3,50.9"


def _config(tmp_path: Path, **changes: object) -> CampaignConfig:
    (tmp_path / "items.json").write_text('{"type": "FeatureCollection", "features": []}')
    data: dict[str, object] = {
        "area": AREA,
        "start": "2021-04-01",
        "end": "2021-09-30",
        "output": "out",
        "catalog": {"items": "items.json"},
        "fit": {"preset": "smoke"},
    }
    data.update(changes)
    return parse_config(data, base=tmp_path)


def test_pool_on_gpus_is_fits_per_gpu_actors_per_gpu() -> None:
    pool = fit_pool(ResourcesConfig(gpus_per_fit=0.25, cpus_per_fit=1), {"GPU": 2, "CPU": 32}, "auto")
    assert (pool.actors, pool.num_gpus, pool.num_cpus, pool.device) == (8, 0.25, 1, "auto")


def test_pool_leaves_a_cpu_for_ingest() -> None:
    # 2 GPUs × 4 fits would take all 8 CPUs at 1 CPU each: no CPU left for an ingest task.
    pool = fit_pool(ResourcesConfig(gpus_per_fit=0.25, cpus_per_fit=1), {"GPU": 2, "CPU": 8}, "auto")
    assert pool.actors == 7
    cpu = fit_pool(ResourcesConfig(cpus_per_fit=0.5, ingest_cpus=1), {"CPU": 2}, "auto")
    assert (cpu.actors, cpu.num_gpus, cpu.device) == (2, 0.0, "cpu")
    assert "no GPUs in the Ray cluster" in cpu.note


def test_pool_on_a_cluster_scaling_up_from_zero_gpus() -> None:
    pool = fit_pool(ResourcesConfig(gpus_per_fit=0.5), {"CPU": 0}, "cuda")
    assert (pool.actors, pool.num_gpus) == (2, 0.5)
    assert "autoscaler" in pool.note
    wanted = fit_pool(ResourcesConfig(gpus_per_fit=0.5, fit_actors=16), {}, "cuda")
    assert wanted.actors == 16


def test_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    tiles = [TileRef(32631, 1, 1)]
    ledger = Ledger.open(OutputLayout(config.output).ledger)
    assert claim_output(ledger, config, tiles) is False
    assert claim_output(ledger, config, tiles) is True
    more = _config(tmp_path, resources={"ingest_concurrency": 9})
    assert claim_output(ledger, more, tiles) is True
    later = _config(tmp_path, end="2021-10-31")
    with pytest.raises(CampaignMismatchError, match=r"different settings \(end\).*use a new output URL"):
        claim_output(ledger, later, tiles)


def test_estimate_scales_a_measured_figure_by_the_tiles_flops(tmp_path: Path) -> None:
    from fit import PRESETS
    from fit.cost import tile_flops

    config = _config(
        tmp_path, grid={"size": [192, 384]}, catalog={"items": "items.json", "bands": ["B02", "B03"]}
    )
    measured = PRESETS["smoke"].replace(seconds_per_tile_reference=600.0, reference_device="NVIDIA H100 SXM")
    estimate = estimate_campaign(config, gpu_hour_price=2.0, gpus=4, fit_config=measured)
    assert estimate.tiles > 0 and estimate.bands == 2
    assert estimate.dates_per_tile == round(183 / 5)
    ours = tile_flops(measured, n_dates=estimate.dates_per_tile, size=(192, 384), bands=("B02", "B03")).total
    (figure,) = estimate.figures
    assert figure.from_preset and figure.device == "NVIDIA H100 SXM"
    assert figure.seconds_per_tile == pytest.approx(600.0 * ours / tile_flops(measured).total)
    hours = estimate.gpu_hours(figure)
    assert hours == pytest.approx(figure.seconds_per_tile * estimate.tiles / 3600)
    assert estimate.cost(figure) == pytest.approx(hours * 2.0)
    assert estimate.wall_hours(figure) == pytest.approx(hours / 4)
    text = "\n".join(estimate_lines(estimate, config))
    assert "GPU-hours on NVIDIA H100 SXM" in text and "cost " in text


@pytest.mark.parametrize("fits", [1, 4, 16])
def test_estimate_holds_the_gpu_while_the_host_works(tmp_path: Path, fits: int) -> None:
    from fit import PRESETS
    from fit.cost import HOST_REFERENCE_BANDS, HOST_REFERENCE_DATES

    config = _config(
        tmp_path,
        grid={"size": [192, 384]},
        catalog={"items": "items.json", "bands": ["B02", "B03"]},
        resources={"gpus_per_fit": 1 / fits},
    )
    measured = PRESETS["fast"].replace(
        seconds_per_tile_reference=10.0,
        reference_device="NVIDIA H100 SXM",
        host_seconds_per_tile_reference=70.0,
    )
    estimate = estimate_campaign(config, fit_config=measured)
    # per sample: a quarter of the reference's pixels, 2 of its 10 bands, the campaign's dates of its 30
    host = 70.0 * 0.25 * estimate.dates_per_tile / HOST_REFERENCE_DATES * 2 / HOST_REFERENCE_BANDS
    assert estimate.host_seconds_per_tile == pytest.approx(host)
    (figure,) = estimate.figures
    network = figure.seconds_per_tile
    assert estimate.held_seconds(figure) == pytest.approx(max(network, (network + host) / fits))
    assert estimate.gpu_hours(figure) == pytest.approx(estimate.held_seconds(figure) * estimate.tiles / 3600)
    busy = estimate.busy_fits_per_gpu(figure)
    assert busy is not None and (busy - 1) * network < network + host <= busy * network
    text = "\n".join(estimate_lines(estimate, config))
    assert "host work beside the network" in text and f"with {fits} fit(s) per GPU" in text
    # A preset without a measured host figure is priced by its network alone, as before.
    plain = estimate_campaign(config, fit_config=measured.replace(host_seconds_per_tile_reference=None))
    assert plain.held_seconds(plain.figures[0]) == pytest.approx(network)
    assert plain.busy_fits_per_gpu(plain.figures[0]) is None


def test_estimate_without_a_measurement_gives_the_flops_range(tmp_path: Path) -> None:
    from fit import PRESETS
    from fit.cost import GPU_THROUGHPUT_TFLOPS

    config = _config(tmp_path)
    estimate = estimate_campaign(config, fit_config=PRESETS["smoke"].replace(seconds_per_tile_reference=None))
    assert [f.from_preset for f in estimate.figures] == [False] * len(GPU_THROUGHPUT_TFLOPS)
    for figure, tflops in zip(estimate.figures, GPU_THROUGHPUT_TFLOPS.values(), strict=True):
        assert figure.seconds_per_tile == pytest.approx(estimate.tflop_per_tile / tflops)
    text = "\n".join(estimate_lines(estimate, config))
    assert "throughput assumed, not measured" in text and "estimates from its FLOPs" in text
    assert "carries no seconds per tile" in text


def test_live_view_prints_one_line_per_event_off_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)

    def event(kind: str, message: str, fitted: int) -> CampaignProgress:
        return CampaignProgress(
            kind=kind,
            message=message,
            tile_id=None,
            total=4,
            states={"fitted": fitted, "planned": 4 - fitted},
            ingesting=0,
            fitting=1,
            mosaicking=0,
            elapsed_s=10.0,
            eta_s=30.0,
            gpu_seconds_held=7.0,
            gpu_seconds_fits=5.0,
        )

    with LiveView(console, "t") as view:
        view(event("fit_started", "fitting a", 0))
        view(event("fitted", "fitted a in 3.0 s", 1))
        view(event("failed", "b failed at fit: no clear pixel", 1))
    lines = out.getvalue().splitlines()
    assert lines == [lines[0], lines[1]] and "[1/4] fitted a in 3.0 s" in lines[0]
    assert "[1/4] b failed at fit: no clear pixel" in lines[1]


def test_live_view_on_a_terminal_draws_counts_eta_and_gpu_hours() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    event = CampaignProgress(
        kind="fitted",
        message="fitted a in 3.0 s",
        tile_id="a",
        total=4,
        states={"planned": 1, "ingested": 1, "fitted": 2, "failed": 0},
        ingesting=1,
        fitting=1,
        mosaicking=0,
        elapsed_s=125.0,
        eta_s=250.0,
        gpu_seconds_held=7200.0,
        gpu_seconds_fits=3600.0,
    )
    with LiveView(console, "belgium") as view:
        view(event)
    text = out.getvalue()
    assert "campaign belgium" in text and "fitted a in 3.0 s" in text
    assert "ETA 0:04:10" in text and "GPU-h held 2.000" in text and "GPU-h in fits 1.000" in text


class _GatedStore(FsspecLedgerStore):
    """The local ledger store, whose journal writes wait for a gate (a slow fsync or PUT), or fail."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()
        self.fail = False

    def write(self, name: str, data: bytes) -> None:
        if name.startswith("journal/"):
            assert self.gate.wait(10), "the test never opened the gate"
            if self.fail:
                raise OSError("no space left on device")
        super().write(name, data)


def _book(tmp_path: Path) -> tuple[TileBook, _GatedStore]:
    store = _GatedStore(str(tmp_path / "ledger"))
    ledger = Ledger(store)
    ledger.load()
    tiles = {t.tile_id: t for t in (TileRef(32631, 4800 + i, 46900) for i in range(3))}
    return TileBook(tiles, ledger, run_id="r", retries=RetriesConfig()), store


def test_ledger_writes_do_not_hold_up_the_driver(tmp_path: Path) -> None:
    book, store = _book(tmp_path)
    first, second, _ = book.tiles
    book.put(book.record(first).model_copy(update={"state": TileState.INGESTED}))
    book.flush()  # returns while the write waits at the gate
    book.put(book.record(second).model_copy(update={"state": TileState.INGESTED}))
    assert book.get(first) is not None and book.get(first).state == TileState.INGESTED  # in flight
    assert book.get(second) is not None  # waiting
    assert Ledger.open(str(tmp_path / "ledger")).get(first) is None  # nothing in the store yet
    store.gate.set()
    book.close()
    stored = Ledger.open(str(tmp_path / "ledger"))
    assert {stored.state(first), stored.state(second)} == {TileState.INGESTED}
    assert (book.ledger_writes, book.records_written) == (2, 2)


def test_a_failed_ledger_write_reaches_the_driver_and_keeps_its_records(tmp_path: Path) -> None:
    book, store = _book(tmp_path)
    tile = next(iter(book.tiles))
    book.put(book.record(tile).model_copy(update={"state": TileState.FITTED}))
    store.fail = True
    book.flush()
    store.gate.set()
    with pytest.raises(LedgerError, match="cannot write"):
        book.sync()
    assert book.get(tile) is not None  # still waiting to be written
    store.fail = False
    book.close()
    assert Ledger.open(str(tmp_path / "ledger")).state(tile) == TileState.FITTED
