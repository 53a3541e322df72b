"""GPU health from NVML (monitor/ingest/gpu.py), the composite source, and the gpu pack on samples
recorded on real H200s (tests/data/gpu_*: how they were made is in tests/data/gpu_load.py).

No NVIDIA driver exists on this machine or on CI, so NVML cannot be loaded here. Where a test
needs NVML to answer, it passes NvmlSource a fake module (``_FakeNvml``) that keeps pynvml's
real exception classes and constants (clock-event bit masks, ECC selectors) and fakes only the
answers a GPU would give.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from tests.conftest import run_cli
from trainguard.events import parse_line
from trainguard.monitor.daemon import EXIT_DEGRADED, Monitor
from trainguard.monitor.ingest.composite import CompositeSource
from trainguard.monitor.ingest.gpu import GPU_KIND, NVML_STREAM, NvmlSource
from trainguard.monitor.ingest.sources import FileSource
from trainguard.rules.loader import load_rules

DATA = Path(__file__).resolve().parent / "data"
RECORDING = DATA / "gpu_h200_load.jsonl"

nvml_here = not NvmlSource().problems()


class _FakeNvml:
    """pynvml's API for GPUs that do not exist here: real errors and constants, fake answers."""

    def __init__(self, gpus: int = 2, *, util: float = 97.0, used: float = 0.5,
                 reasons: int = 0, ecc: bool = True, power: bool = True,
                 xids: list[tuple[int, int]] | None = None) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVMLError", "NVML_", "nvmlClocksEventReason", "nvmlEventType")):
                setattr(self, name, getattr(pynvml, name))
        self.gpus, self.util, self.used, self.reasons = gpus, util, used, reasons
        self.ecc, self.power = ecc, power
        self.xids = list(xids or [])
        self.shutdowns = 0

    def _error(self, code: int) -> Exception:
        return pynvml.NVMLError(code)  # pynvml maps the code to its subclass

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetEccMode(self, handle: int) -> tuple[int, int]:
        if not self.ecc:
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 1, 1

    def nvmlEventSetCreate(self) -> str:
        return "events"

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, events: str) -> None:
        pass

    def nvmlEventSetFree(self, events: str) -> None:
        pass

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> Any:
        if not self.xids:
            raise self._error(pynvml.NVML_ERROR_TIMEOUT)
        device, xid = self.xids.pop(0)
        return SimpleNamespace(device=device, eventData=xid)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=self.util, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=1000, used=int(self.used * 1000), free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if not self.power:
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 690_500  # milliwatts

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self.reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        assert (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC) == (kind,
                                                                                         counter)
        return 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _metrics(line_data: bytes) -> tuple[int, int, str, dict[str, float]]:
    record = parse_line(line_data)
    return record.rank, record.step, record.kind, record.metrics  # type: ignore[union-attr]


def test_a_sample_is_one_canonical_line_per_gpu_with_the_latest_step():
    """Each GPU gives one `kind: gpu` line on stream nvml, rank = GPU index, step = step()."""
    source = NvmlSource(step=lambda: 42, nvml=_FakeNvml(gpus=2))
    lines = source.poll()
    assert [(NVML_STREAM, 1), (NVML_STREAM, 2)] == [(x.stream, x.number) for x in lines]
    expected = {"gpu/utilization": 97.0, "gpu/memory_used_frac": 0.5, "gpu/temperature_c": 61.0,
                "gpu/power_w": 690.5, "gpu/sm_clock_mhz": 1980.0, "gpu/throttle_thermal": 0.0,
                "gpu/ecc_uncorrected": 0.0}
    assert [(0, 42, GPU_KIND, expected), (1, 42, GPU_KIND, expected)] == [
        _metrics(x.data) for x in lines]
    source.close()


def test_thermal_reasons_set_throttle_and_unsupported_metrics_are_left_out():
    """A HW thermal slowdown bit gives throttle 1; no ECC and no power reading: keys absent."""
    fake = _FakeNvml(gpus=1, reasons=pynvml.nvmlClocksEventReasonHwThermalSlowdown
                     | pynvml.nvmlClocksEventReasonSwPowerCap, ecc=False, power=False)
    _, _, _, metrics = _metrics(NvmlSource(nvml=fake).poll()[0].data)
    assert (1.0, False, False) == (metrics["gpu/throttle_thermal"],
                                   "gpu/ecc_uncorrected" in metrics, "gpu/power_w" in metrics)


def test_a_power_cap_alone_is_not_thermal_throttling():
    """SwPowerCap (normal under full load) leaves gpu/throttle_thermal at 0."""
    fake = _FakeNvml(gpus=1, reasons=pynvml.nvmlClocksEventReasonSwPowerCap)
    assert 0.0 == _metrics(NvmlSource(nvml=fake).poll()[0].data)[3]["gpu/throttle_thermal"]


def test_a_critical_xid_event_shows_on_its_gpu_only_once():
    """An Xid event of GPU 1 is gpu/xid on GPU 1's next line, and absent after."""
    fake = _FakeNvml(gpus=2, xids=[(1, 79)])
    clock = _Clock()
    source = NvmlSource(interval=5.0, clock=clock, nvml=fake)
    first = [_metrics(x.data)[3].get("gpu/xid") for x in source.poll()]
    clock.now += 5.0
    second = [_metrics(x.data)[3].get("gpu/xid") for x in source.poll()]
    assert ([None, 79.0], [None, None], True) == (first, second, source.xid_events)


def test_samples_come_once_per_interval():
    """The first poll samples at once; the next only after the interval has passed."""
    clock = _Clock()
    source = NvmlSource(interval=5.0, clock=clock, nvml=_FakeNvml(gpus=1))
    counts = [len(source.poll())]
    clock.now += 4.9
    counts.append(len(source.poll()))
    clock.now += 0.1
    counts.append(len(source.poll()))
    assert [1, 0, 1] == counts


def test_a_gpu_whose_query_fails_is_a_problem_until_it_answers_again():
    """A lost GPU gives no line and a problem naming it; the other GPUs still report."""
    fake = _FakeNvml(gpus=2)
    answer = fake.nvmlDeviceGetUtilizationRates
    lost = {1}

    def utilization(handle: int) -> Any:
        if handle in lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return answer(handle)

    fake.nvmlDeviceGetUtilizationRates = utilization  # type: ignore[method-assign]
    clock = _Clock()
    source = NvmlSource(clock=clock, nvml=fake)
    ranks = [_metrics(x.data)[0] for x in source.poll()]
    problems = source.problems()
    lost.clear()
    clock.now += 10
    source.poll()
    assert ([0], ["GPU 1: NVML query failed: GPU is lost"], []) == (ranks, problems,
                                                                    source.problems())


@pytest.mark.skipif(nvml_here, reason="NVML is available here")
def test_without_nvml_the_source_reports_one_problem_and_yields_nothing():
    """No driver: poll gives nothing and problems() says what is missing and what to do."""
    source = NvmlSource()
    problems = source.problems()
    assert ([], 1, True) == (source.poll(), len(problems),
                             problems[0].startswith("nvml: GPU sampling asked for but NVML is "
                                                    "not available: "))
    source.close()


def test_the_composite_source_interleaves_primary_then_gpu_lines(tmp_path: Path):
    """Each poll returns the file's new lines, then the GPU lines when a sample is due."""
    events = tmp_path / "events.jsonl"
    events.write_text('{"step": 1, "metrics": {"loss": 1.0}}\n')
    clock = _Clock()
    composite = CompositeSource(FileSource(events),
                                NvmlSource(interval=5.0, clock=clock, nvml=_FakeNvml(gpus=2)))
    polls = [[(x.stream == NVML_STREAM, x.number) for x in composite.poll()]]
    with events.open("a") as fh:
        fh.write('{"step": 2, "metrics": {"loss": 0.9}}\n')
    clock.now += 1
    polls.append([(x.stream == NVML_STREAM, x.number) for x in composite.poll()])
    with events.open("a") as fh:
        fh.write('{"step": 3, "metrics": {"loss": 0.8}}\n')
    clock.now += 5
    polls.append([(x.stream == NVML_STREAM, x.number) for x in composite.poll()])
    assert [[(False, 1), (True, 1), (True, 2)], [(False, 2)],
            [(False, 3), (True, 3), (True, 4)]] == polls
    assert (str(events), False, [str(events), NVML_STREAM]) == (
        composite.name, composite.exhausted, list(composite.stats()))
    composite.close()


def test_the_composite_source_has_the_primarys_optional_capabilities(tmp_path: Path):
    """Positions and watched directories are the primary's (checkpoints and inotify work)."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    primary = FileSource(events)
    composite = CompositeSource(primary, NvmlSource(nvml=_FakeNvml(gpus=1)))
    assert (primary.positions(), primary.watch_dirs(), False) == (
        composite.positions(), composite.watch_dirs(), hasattr(composite, "streaming"))
    composite.close()


def test_gpu_samples_are_evaluated_but_are_not_training_steps(tmp_path: Path):
    """A GPU rule fires on samples; records, last steps and straggler ranks stay training's."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"step": s, "rank": r, "metrics": {"step_time": 1.0}})
                              + "\n" for s in (1, 2) for r in (0, 1)))
    clock = _Clock()
    gpus = NvmlSource(interval=1.0, clock=clock, nvml=_FakeNvml(gpus=4, used=0.99),
                      step=lambda: monitor.max_step or 0)
    monitor = Monitor(CompositeSource(FileSource(events), gpus), load_rules(["gpu"]))
    for _ in range(3):
        monitor.poll_once()
        clock.now += 1
    firing = sorted((a.rule, a.rank, a.step) for a in monitor.alerts if a.state == "firing")
    assert [("gpu.memory_nearly_full", r, 2) for r in range(4)] == firing
    assert (4, {0, 1}, {0, 1}) == (monitor.counters.records, set(monitor.last_records),
                                   monitor.stragglers._ranks)
    monitor.source.close()


@pytest.mark.skipif(nvml_here, reason="NVML is available here")
def test_monitor_gpu_without_nvml_evaluates_events_exits_degraded_and_says_so_once(
        tmp_path: Path):
    """Following with --gpu and no driver: the run's alert still fires, exit 1, one problem."""
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"step": s, "metrics": {"loss": 9.0}}) + "\n"
                              for s in range(1, 6)))
    alerts = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(events), "--gpu", "--poll",
         "--alerts", str(alerts), "--alert", "loss > 5 -> medium: loss is {value}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "250"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (alerts.exists() and alerts.read_text()):
        time.sleep(0.05)
    time.sleep(0.5)  # ten more polls, each of which sees the same problem
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=20)[0].decode()
    live = [x for x in out.splitlines() if x.startswith("DEGRADED: cannot read nvml: GPU sampling")]
    fired = [json.loads(x)["rule"] for x in alerts.read_text().splitlines()]
    assert (EXIT_DEGRADED, 1, ["inline.1"]) == (proc.returncode, len(live), fired)
    assert "(common, gpu + the trainer's pack)" in out


def test_recorded_h200_samples_fire_the_idle_and_memory_rules(tmp_path: Path):
    """Replaying the H200 recording: idle during the stall (step 179), memory full at 208."""
    alerts = tmp_path / "alerts.jsonl"
    result = run_cli("monitor", str(RECORDING), "--once", "--rules", "gpu",
                     "--alerts", str(alerts))
    fired = [(a["rule"], a["rank"], a["step"]) for a in map(json.loads, alerts.open())
             if a["state"] == "firing"]
    assert (0, [("gpu.idle", 0, 179), ("gpu.memory_nearly_full", 0, 208)]) == (
        result.returncode, fired)


@pytest.mark.parametrize(("run", "expected"), [
    ("gpu_ddp_h200_slow", [("common.straggler", 1)]),
    ("gpu_ddp_h200_healthy", []),
])
def test_recorded_two_h200_ddp_runs_name_the_slow_rank_and_leave_the_healthy_run_alone(
        tmp_path: Path, run: str, expected: list[tuple[str, int, int]]):
    """2-rank NCCL DDP on H200s, rank 1 forwarding 3x: straggler rank 1; healthy: no alert."""
    run_dir = tmp_path / run
    shutil.copytree(DATA / run, run_dir)
    result = run_cli("monitor", str(run_dir), "--once", "--rules", "common")
    alerts = run_dir / "alerts.jsonl"
    fired = [(a["rule"], a["rank"]) for a in map(json.loads, alerts.open())
             if a["state"] == "firing"] if alerts.exists() else []
    assert (0, expected) == (result.returncode, fired)
