"""GPU health from NVML, as canonical events: ``trainguard monitor ... --gpu``.

:class:`NvmlSource` is a :class:`~trainguard.monitor.ingest.sources.Source` that samples every local
GPU through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml`` when the source is
opened, never at import time) once per ``interval`` seconds, on the monitor's own poll: no
thread. Each sample is one canonical JSONL line on stream ``nvml`` per GPU::

    {"time": ..., "step": 120, "rank": 3, "host": "node-a", "local_rank": 3, "kind": "gpu",
     "metrics": {"gpu/utilization": 97.0, ...}}

* ``rank`` is ``rank_base`` plus the GPU's NVML index, ``local_rank`` the NVML index and
  ``host`` this node's name. That assumes one training process per GPU, rank r on GPU r, as
  ``torchrun`` with one process per device does; on a multi-node job each node's agent gives
  ``rank_base = node index x GPUs per node`` (see ``trainguard.monitor.ray``), so GPU labels of
  different nodes never collide and an alert names the host and the local GPU.
* ``step`` is the latest training step the monitor has seen (``step()``; 0 before any), so an
  alert says where in the run the GPU misbehaved.
* ``kind`` is ``gpu``: the monitor evaluates rules on these records but does not count them as
  training steps (no trainer detection, no straggler scores, no "last step" of a rank).

Metrics (only those the GPU supports; a metric NVML answers NotSupported is left out):

==========================  ===================================================================
``gpu/utilization``         percent of the sample period a kernel ran (NVML's "GPU busy")
``gpu/memory_used_frac``    used / total device memory (what allocators reserved, not tensors)
``gpu/temperature_c``       GPU core temperature, Celsius
``gpu/power_w``             board power draw, watts
``gpu/sm_clock_mhz``        current SM clock
``gpu/throttle_thermal``    1 when the clocks are held down for temperature (SW or HW thermal
                            slowdown among the clocks-event reasons), else 0
``gpu/ecc_uncorrected``     volatile uncorrected ECC error count (since the driver loaded);
                            absent when ECC is off
``gpu/xid``                 the Xid code of a critical error event seen since the last sample;
                            present only when one happened (and when the driver lets us
                            register for events)
==========================  ===================================================================

Without NVML (no driver, as on CI and most laptops) the source reports one problem, so the
monitor says *degraded* instead of crashing; the training events still flow.
"""

from __future__ import annotations

import importlib
import socket
import time
from collections.abc import Callable
from typing import Any

from trainguard.events import Record, encode_record
from trainguard.monitor.ingest.sources import Line
from trainguard.monitor.ingest.tail import TailStats

__all__ = ["GPU_KIND", "GPU_METRICS", "NVML_STREAM", "NvmlSource"]

#: The stream name of every GPU line, and the ``kind`` of every GPU record.
NVML_STREAM = "nvml"
GPU_KIND = "gpu"
#: Every metric this source can produce (rules may read only these).
GPU_METRICS = ("gpu/utilization", "gpu/memory_used_frac", "gpu/temperature_c", "gpu/power_w",
               "gpu/sm_clock_mhz", "gpu/throttle_thermal", "gpu/ecc_uncorrected", "gpu/xid")

_NO_NVML = ("nvml: GPU sampling asked for but NVML is not available: {error}. Install the NVIDIA "
            "driver (libnvidia-ml.so.1) and nvidia-ml-py on this host, or run without --gpu.")


class NvmlSource:
    """Samples every local GPU through NVML each ``interval`` seconds; see the module docstring.

    ``step`` returns the latest training step (the monitor's); ``clock`` is monotonic seconds.
    ``nvml`` is an object with pynvml's API, default ``import pynvml``: tests pass a fake one
    because no NVML can exist on a machine without an NVIDIA driver.
    """

    name = NVML_STREAM

    def __init__(self, interval: float = 5.0, *, step: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic, nvml: Any = None,
                 host: str | None = None, rank_base: int = 0) -> None:
        self.interval = interval
        self.host = host if host is not None else socket.gethostname()
        self.rank_base = rank_base
        self._step = step
        self._clock = clock
        self._next = float("-inf")  # the first poll samples at once
        self._stats = TailStats()
        self._number = 0
        self._error: str | None = None
        self._device_errors: dict[int, str] = {}
        self._handles: list[Any] = []
        self._ecc: list[bool] = []
        self._events: Any = None
        self._nvml: Any = None
        #: Seconds spent in the last sample (NVML calls and encoding), for the benchmark.
        self.last_sample_seconds = 0.0
        try:
            if nvml is None:
                nvml = importlib.import_module("pynvml")  # nvidia-ml-py; only when asked for
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, ...
            self._error = _NO_NVML.format(error=str(exc) or type(exc).__name__)
            return
        self._nvml = nvml
        try:
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i)
                             for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            self._error = f"NVML is loaded but cannot list the GPUs: {exc}"
            return
        self._ecc = [self._ecc_enabled(h) for h in self._handles]
        self._events = self._register_xid_events()

    # -- setup (once) ------------------------------------------------------------------------

    def _ecc_enabled(self, handle: Any) -> bool:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetEccMode(handle)
        except nvml.NVMLError:  # NotSupported: consumer GPUs have no ECC
            return False
        return bool(current)

    def _register_xid_events(self) -> Any:
        """An NVML event set for critical Xid errors, or None where the driver refuses one
        (virtual machines, MIG, missing privileges): then ``gpu/xid`` is simply absent."""
        nvml = self._nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            return None
        registered = 0
        for handle in self._handles:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except nvml.NVMLError:
                continue
        if not registered:
            nvml.nvmlEventSetFree(events)
            return None
        return events

    @property
    def xid_events(self) -> bool:
        """True when critical Xid events are being received."""
        return self._events is not None

    @property
    def gpu_count(self) -> int:
        """How many GPUs are sampled (0 without NVML)."""
        return len(self._handles)

    # -- the Source contract ---------------------------------------------------------------

    def poll(self) -> list[Line]:
        """One line per GPU when a sample is due, else nothing."""
        if self._nvml is None or not self._handles:
            return []
        now = self._clock()
        if now < self._next:
            return []
        self._next = now + self.interval
        return self.sample()

    def sample(self) -> list[Line]:
        """Sample every GPU now (one line each), whatever the interval."""
        started = time.perf_counter()
        step = self._step() or 0
        at = time.time()
        xids = self._drain_xid_events()
        lines: list[Line] = []
        for index, handle in enumerate(self._handles):
            try:
                metrics = self._read(index, handle)
            except self._nvml.NVMLError as exc:  # a GPU that fell off the bus, reset, ...
                self._device_errors[index] = f"GPU {index}: NVML query failed: {exc}"
                continue
            self._device_errors.pop(index, None)
            if index in xids:
                metrics["gpu/xid"] = float(xids[index])
            self._number += 1
            data = encode_record(Record(step, metrics, at, self.rank_base + index, GPU_KIND,
                                        False, self.host, index))[:-1]
            lines.append(Line(NVML_STREAM, self._number, data))
        self._stats.lines += len(lines)
        self.last_sample_seconds = time.perf_counter() - started
        return lines

    def _read(self, index: int, handle: Any) -> dict[str, float]:
        nvml = self._nvml
        not_supported = nvml.NVMLError_NotSupported
        metrics: dict[str, float] = {}
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        metrics["gpu/utilization"] = float(util.gpu)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        if memory.total:
            metrics["gpu/memory_used_frac"] = memory.used / memory.total
        thermal = (nvml.nvmlClocksEventReasonSwThermalSlowdown
                   | nvml.nvmlClocksEventReasonHwThermalSlowdown)
        # Queries a GPU may not support: the metric is left out, never guessed.
        optional: list[tuple[str, Callable[[], float]]] = [
            ("gpu/temperature_c", lambda: float(
                nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            ("gpu/power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
            ("gpu/sm_clock_mhz", lambda: float(
                nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
            ("gpu/throttle_thermal", lambda: 1.0 if (
                nvml.nvmlDeviceGetCurrentClocksEventReasons(handle) & thermal) else 0.0),
        ]
        if self._ecc[index]:
            optional.append(("gpu/ecc_uncorrected", lambda: float(
                nvml.nvmlDeviceGetTotalEccErrors(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                 nvml.NVML_VOLATILE_ECC))))
        for name, read in optional:
            try:
                metrics[name] = read()
            except not_supported:
                pass
        return metrics

    def _drain_xid_events(self) -> dict[int, int]:
        """GPU index -> the last critical Xid seen since the previous sample (non-blocking)."""
        if self._events is None:
            return {}
        nvml = self._nvml
        found: dict[int, int] = {}
        for _ in range(64):  # bounded: an Xid storm must not stall the monitor loop
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:  # Timeout: nothing pending
                break
            try:
                found[nvml.nvmlDeviceGetIndex(data.device)] = int(data.eventData)
            except nvml.NVMLError:
                continue
        return found

    def problems(self) -> list[str]:
        """No NVML, or GPUs whose last query failed."""
        if self._error is not None:
            return [self._error]
        return list(self._device_errors.values())

    @property
    def exhausted(self) -> bool:
        """GPUs can always be sampled again."""
        return False

    def stats(self) -> dict[str, TailStats]:
        """Lines produced so far."""
        return {NVML_STREAM: self._stats}

    def close(self) -> None:
        """Free the event set and shut NVML down (once)."""
        nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        try:
            if self._events is not None:
                nvml.nvmlEventSetFree(self._events)
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
        self._events = None
