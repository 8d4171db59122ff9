from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from service.backends import on_gpu
from service.config import Settings, configuration_markdown, iter_env_vars
from service.hardware import cpu_threads, worker_count
from tests.conftest import ROOT


def test_settings_read_flat_asr_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_MODEL", "large-v3")
    monkeypatch.setenv("ASR_DEVICE", "cuda")
    monkeypatch.setenv("ASR_QUEUE_SIZE", "3")
    monkeypatch.setenv("ASR_API_KEY", "s3cret")
    monkeypatch.setenv("ASR_QUALITY_SAMPLE_RATE", "0.5")
    monkeypatch.setenv("ASR_LOG_FORMAT", "json")
    s = Settings()
    assert s.model.model == "large-v3"
    assert s.model.device == "cuda"
    assert s.scheduler.queue_size == 3
    assert s.server.api_key is not None and s.server.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # secrets never reach logs through repr
    assert s.quality.sample_rate == 0.5
    assert s.server.log_format == "json"


def test_defaults_are_the_documented_ones() -> None:
    s = Settings()
    assert s.model.backend == "faster-whisper"
    assert s.model.model == "embedded:base"
    # The decode defaults equal faster-whisper's own (beam 5, best_of 5, no VAD).
    assert (s.decode.beam_size, s.decode.best_of, s.decode.vad_filter_default) == (5, 5, False)


@pytest.mark.parametrize(
    ("name", "value"), [("ASR_DEVICE", "tpu"), ("ASR_QUEUE_SIZE", "-1"), ("ASR_LOG_FORMAT", "xml")]
)
def test_invalid_values_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.removeprefix("ASR_").lower() in str(info.value)


def test_every_setting_has_a_description() -> None:
    assert all(description for _, _, description in iter_env_vars())


def test_readme_configuration_table_matches_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- config-table -->\n(.*?)<!-- /config-table -->", readme, re.S)
    assert match, "README.md must hold the configuration table between config-table markers"
    assert match.group(1) == configuration_markdown(), "regenerate it with: python -m service config"


@pytest.mark.parametrize(
    ("env", "workers", "threads"),
    [
        ({}, 8, 1),  # by default one single-threaded worker per core
        ({"ASR_PROCESSES": "2"}, 4, 1),  # cores shared among processes
        ({"ASR_WORKERS": "2"}, 2, 4),
        ({"ASR_WORKERS": "2", "ASR_PROCESSES": "2"}, 2, 2),  # 2 x 2 workers on 8 cores
        ({"ASR_WORKERS": "16"}, 16, 1),  # never below one thread
        ({"ASR_WORKERS": "2", "ASR_CPU_THREADS": "3"}, 2, 3),  # as configured
        ({"ASR_DEVICE": "cuda"}, 1, 8),  # a GPU batches instead of running workers side by side
    ],
)
def test_workers_and_threads_share_the_cpu_cores(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], workers: int, threads: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    gpu = on_gpu(settings)
    assert (worker_count(settings, gpu), cpu_threads(settings, gpu)) == (workers, threads)
