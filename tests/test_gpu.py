"""The NVML collector: the real module where no GPU exists, a fake pynvml for the mapping."""

from __future__ import annotations

import logging
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.gpu import GpuCollector, is_out_of_memory


def _samples(collector: GpuCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_real_nvml_exports_what_the_host_has(caplog: pytest.LogCaptureFixture) -> None:
    """The real nvidia-ml-py: no driver here (availability 0 and nothing else, the reason logged
    once); on a GPU host, a full set of readings for every GPU."""
    caplog.set_level(logging.INFO, logger="service.gpu")
    collector = GpuCollector(lambda: {os.getpid()})
    first, second = _samples(collector), _samples(collector)
    if not collector.available:
        assert first == second == {("asr_gpu_available", ()): 0.0}
        reasons = [r.getMessage() for r in caplog.records if "GPU metrics off" in r.getMessage()]
        assert len(reasons) == 1 and "NVML" in reasons[0]
        return
    assert first[("asr_gpu_available", ())] == 1
    for index in range(collector.count):
        gpu = (("gpu", str(index)),)
        assert first[("asr_gpu_memory_total_bytes", gpu)] > first[("asr_gpu_memory_used_bytes", gpu)] > 0
        assert 0 <= first[("asr_gpu_utilization_ratio", gpu)] <= 1
        assert 10 < first[("asr_gpu_temperature_celsius", gpu)] < 100


class FakeNVMLError(Exception):
    pass


class FakeNotSupported(FakeNVMLError):
    pass


@dataclass
class _Memory:
    used: int
    total: int
    free: int


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None  # NVML's own field name, as the real process info has it


def fake_pynvml(own_pid: int) -> types.ModuleType:
    """Two GPUs; GPU 1 cannot report power (as on some boards)."""
    gpus: list[dict[str, Any]] = [
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-aaaa",
            "mem": _Memory(30 * 2**30, 80 * 2**30, 50 * 2**30),
            "util": _Util(87, 40),
            "temp": 61,
            "power": 312_500,
            "power_limit": 700_000,
            "procs": [_Process(own_pid, 12 * 2**30), _Process(999_999, 8 * 2**30), _Process(own_pid + 1, None)],
        },
        {
            "name": "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-bbbb",
            "mem": _Memory(2**30, 80 * 2**30, 79 * 2**30),
            "util": _Util(0, 0),
            "temp": 35,
            "power": None,
            "power_limit": None,
            "procs": [],
        },
    ]
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_TEMPERATURE_GPU = 0
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    m.nvmlDeviceGetMemoryInfo = lambda h: h["mem"]
    m.nvmlDeviceGetUtilizationRates = lambda h: h["util"]
    m.nvmlDeviceGetTemperature = lambda h, sensor: h["temp"]
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: h["procs"]
    m.nvmlDeviceGetName = lambda h: h["name"].encode()  # older bindings return bytes
    m.nvmlDeviceGetUUID = lambda h: h["uuid"]

    def power(h: dict[str, Any]) -> int:
        if h["power"] is None:
            raise FakeNotSupported("Not Supported")
        return int(h["power"])

    def power_limit(h: dict[str, Any]) -> int:
        if h["power_limit"] is None:
            raise FakeNotSupported("Not Supported")
        return int(h["power_limit"])

    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetEnforcedPowerLimit = power_limit
    return m


def test_nvml_readings_map_to_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.getpid()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(me))
    collector = GpuCollector(lambda: {me, me + 1})
    assert collector.available
    s = _samples(collector)
    g0, g1 = (("gpu", "0"),), (("gpu", "1"),)
    assert s[("asr_gpu_available", ())] == 1
    assert s[("asr_gpu_memory_used_bytes", g0)] == 30 * 2**30
    assert s[("asr_gpu_memory_total_bytes", g0)] == 80 * 2**30
    assert s[("asr_gpu_utilization_ratio", g0)] == pytest.approx(0.87)
    assert s[("asr_gpu_temperature_celsius", g0)] == 61
    assert s[("asr_gpu_power_watts", g0)] == pytest.approx(312.5)  # NVML reports milliwatts
    assert s[("asr_gpu_power_limit_watts", g0)] == pytest.approx(700.0)
    # Only this service's processes count; a driver that cannot tell (None) counts 0.
    assert s[("asr_gpu_process_memory_bytes", g0)] == 12 * 2**30
    assert s[("asr_gpu_process_memory_bytes", g1)] == 0
    assert ("asr_gpu_power_watts", g1) not in s  # unsupported: left out, the scrape goes on
    assert s[("asr_gpu_temperature_celsius", g1)] == 35
    assert s[("asr_gpu_info", (("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"), ("uuid", "GPU-aaaa")))] == 1


def test_nvml_init_failure_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml(os.getpid())

    def no_driver() -> None:
        raise FakeNVMLError("Driver Not Loaded")

    module.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", module)
    collector = GpuCollector(lambda: set())
    assert collector.reason == "NVML unavailable: Driver Not Loaded"
    assert _samples(collector) == {("asr_gpu_available", ()): 0.0}


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (RuntimeError("CUDA failed with error out of memory"), True),  # CTranslate2
        (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("unsupported device"), False),
    ],
)
def test_out_of_memory_is_recognised(exc: Exception, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom
