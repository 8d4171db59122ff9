"""GPU metrics read from NVML (nvidia-ml-py) at scrape time; never a subprocess.

Without a GPU or driver the collector exports `asr_gpu_available 0` and nothing else, and
logs the reason once. Readings a GPU does not support (power on some boards) are left out
for that GPU rather than failing the scrape.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


class GpuCollector:
    """A prometheus_client collector over every GPU NVML sees.

    `own_pids` returns the pids whose GPU memory counts as this service's (the worker
    processes); NVML's running-process lists are matched against it.
    """

    def __init__(self, own_pids: Callable[[], set[int]]) -> None:
        self._own_pids = own_pids
        self._lock = threading.Lock()
        self._nvml: Any = None
        self.reason: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.count = int(pynvml.nvmlDeviceGetCount())
            self._nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
        except Exception as exc:  # NVMLError and its subclasses: no driver, no device
            self.reason = f"NVML unavailable: {exc}"
        if self._nvml is not None and self.count == 0:
            self.reason, self._nvml = "NVML found no GPU", None
        if self.reason:
            log.info("GPU metrics off: %s", self.reason)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("asr_gpu_available", "1 when NVML sees at least one GPU.", value=int(self.available))
        if not self.available:
            return
        with self._lock:  # scrapes may come concurrently; NVML handles are cheap but keep order
            yield from self._read_all()

    def _read_all(self) -> Iterator[Metric]:
        nv = self._nvml
        families = {
            "info": GaugeMetricFamily("asr_gpu_info", "GPU model and UUID (value 1).", labels=["gpu", "name", "uuid"]),
            "used": GaugeMetricFamily(
                "asr_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["gpu"]
            ),
            "total": GaugeMetricFamily("asr_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"]),
            "util": GaugeMetricFamily("asr_gpu_utilization_ratio", "Share of time a kernel ran (0-1).", labels=["gpu"]),
            "temp": GaugeMetricFamily("asr_gpu_temperature_celsius", "GPU core temperature.", labels=["gpu"]),
            "power": GaugeMetricFamily("asr_gpu_power_watts", "Power draw.", labels=["gpu"]),
            "power_limit": GaugeMetricFamily(
                "asr_gpu_power_limit_watts", "Power limit the driver enforces (throttling above).", labels=["gpu"]
            ),
            "proc": GaugeMetricFamily(
                "asr_gpu_process_memory_bytes", "GPU memory held by this service's processes.", labels=["gpu"]
            ),
        }
        own = self._own_pids()
        for index in range(self.count):
            gpu = str(index)
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except nv.NVMLError as exc:
                log.warning("NVML cannot open GPU %s: %s", gpu, exc)
                continue
            values = {
                "mem": _read(nv, nv.nvmlDeviceGetMemoryInfo, handle),
                "util": _read(nv, nv.nvmlDeviceGetUtilizationRates, handle),
                "temp": _read(nv, nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
                "power": _read(nv, nv.nvmlDeviceGetPowerUsage, handle),  # milliwatts
                "power_limit": _read(nv, nv.nvmlDeviceGetEnforcedPowerLimit, handle),  # milliwatts
                "procs": _read(nv, nv.nvmlDeviceGetComputeRunningProcesses, handle),
                "name": _read(nv, nv.nvmlDeviceGetName, handle),
                "uuid": _read(nv, nv.nvmlDeviceGetUUID, handle),
            }
            if values["util"] is not None:
                values["util"] = values["util"].gpu / 100.0
            for key in ("power", "power_limit"):
                if values[key] is not None:
                    values[key] = values[key] / 1000.0
            families["info"].add_metric([gpu, _text(values["name"] or ""), _text(values["uuid"] or "")], 1)
            if values["mem"] is not None:
                families["used"].add_metric([gpu], float(values["mem"].used))
                families["total"].add_metric([gpu], float(values["mem"].total))
            for key in ("util", "temp", "power", "power_limit"):
                if values[key] is not None:
                    families[key].add_metric([gpu], float(values[key]))
            if values["procs"] is not None:
                # usedGpuMemory is None where the driver cannot tell (e.g. under some VMs).
                mine = sum(p.usedGpuMemory or 0 for p in values["procs"] if p.pid in own)
                families["proc"].add_metric([gpu], float(mine))
        yield from families.values()


def _read(nv: Any, function: Callable[..., Any], *args: Any) -> Any:
    """One NVML reading, or None where this GPU or driver does not support it."""
    try:
        return function(*args)
    except nv.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an engine exception is a GPU out-of-memory (CTranslate2, PyTorch)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text
