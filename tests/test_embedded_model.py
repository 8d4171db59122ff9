from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import TYPE_CHECKING

import pytest

from service import embedded_model
from service.embedded_model import EMBEDDED_MODELS, SplitModel, embedded_model_path
from service.errors import ModelLoadError

if TYPE_CHECKING:
    from pathlib import Path


def test_base_model_is_joined_once_and_matches_its_checksum(tmp_path: Path) -> None:
    path = embedded_model_path("embedded:base", tmp_path)
    assert {p.name for p in path.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    digest = hashlib.sha256(path.joinpath("model.bin").read_bytes()).hexdigest()
    assert digest == "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
    mtime = path.joinpath("model.bin").stat().st_mtime_ns
    assert embedded_model_path("embedded:base", tmp_path) == path
    assert path.joinpath("model.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no work dirs left


def test_a_checksum_mismatch_leaves_nothing_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = EMBEDDED_MODELS["base"]
    assert isinstance(spec, SplitModel)
    monkeypatch.setitem(EMBEDDED_MODELS, "base", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        embedded_model_path("embedded:base", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_concurrent_starts_assemble_one_complete_copy(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def assemble() -> None:
        try:
            results.append(embedded_model_path("embedded:base", tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=assemble) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] == [results[0].name]


def test_unknown_embedded_names_and_missing_packages_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelLoadError, match="known: embedded:base"):
        embedded_model_path("embedded:huge", tmp_path)
    spec = EMBEDDED_MODELS["tiny.en"]
    monkeypatch.setitem(EMBEDDED_MODELS, "tiny.en", dataclasses.replace(spec, package="no_such_model_pkg"))
    with pytest.raises(ModelLoadError, match="pip install no-such-model-pkg"):
        embedded_model_path("embedded:tiny.en", tmp_path)


def test_tiny_model_is_used_in_place(tmp_path: Path) -> None:
    path = embedded_model_path("embedded:tiny.en", tmp_path)
    assert path.joinpath("model.bin").is_file()
    assert not (tmp_path / "models").exists()
    assert embedded_model.embedded_label("embedded:tiny.en") == "whisper-tiny.en"
