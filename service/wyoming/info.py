"""`describe` -> `info`: the service as one Wyoming `asr` program, its models the registry's entries.

Each ASR_MODELS entry (service.models) is one model, named by its id (a `transcribe` may name it
by id or alias; the aliases are in its description). Its languages are the loaded engine's own
(Capabilities.languages); an entry not loaded yet is described by what its engine can tell
without loading it: SenseVoice's five languages, English for a Whisper id that says `.en`, else
Whisper's languages. A model whose load failed is not `installed`, so that Home Assistant does not
offer it.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from service.errors import ServiceError

if TYPE_CHECKING:
    from service.models import ModelStatus
    from service.pipeline import Pipeline

PROGRAM = "asr-service"
PROJECT = Attribution(name="asr-service", url="https://github.com/asr-service/asr-service")
ENGINES = {
    "faster-whisper": Attribution(name="OpenAI Whisper (faster-whisper)", url="https://github.com/openai/whisper"),
    "openai-whisper": Attribution(name="OpenAI Whisper", url="https://github.com/openai/whisper"),
    "sensevoice": Attribution(name="FunAudioLLM SenseVoice", url="https://github.com/FunAudioLLM/SenseVoice"),
}
SENSEVOICE_LANGUAGES = ("en", "ja", "ko", "yue", "zh")


def _version() -> str:
    try:
        return importlib.metadata.version("asr-service")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def describe(pipeline: Pipeline, streaming: bool) -> Info:
    """The `info` answer: one program, every configured model with its languages."""
    models = [_model(pipeline, status) for status in pipeline.models()]
    program = AsrProgram(
        name=PROGRAM,
        description="Speech to text on the asr-service pipeline (limits, metrics and quality sampling)",
        attribution=PROJECT,
        installed=True,
        version=_version(),
        models=models,
        supports_transcript_streaming=streaming,
    )
    return Info(asr=[program])


def _model(pipeline: Pipeline, status: ModelStatus) -> AsrModel:
    aliases = f" (also {', '.join(status.aliases)})" if status.aliases else ""
    return AsrModel(
        name=status.id,
        description=f"{status.id}{aliases}: {status.backend}, {status.state}",
        attribution=ENGINES.get(status.backend, PROJECT),
        installed=status.state != "failed",
        languages=languages(pipeline, status),
        version=None,
    )


def languages(pipeline: Pipeline, status: ModelStatus) -> list[str]:
    """The languages of a model: its engine's when loaded, else what its backend and id tell."""
    try:
        return sorted(pipeline.model(status.id).capabilities.languages)
    except ServiceError:  # not loaded (yet)
        pass
    if status.backend == "sensevoice":
        return list(SENSEVOICE_LANGUAGES)
    if ".en" in status.id:
        return ["en"]
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return sorted(_LANGUAGE_CODES)
