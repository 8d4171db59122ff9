"""Whisper through openai-whisper (PyTorch): the reference implementation.

`whisper.load_model` takes an official name (`large-v3`, loaded from ASR_CACHE_DIR/openai-whisper
or downloaded there where a network is reachable) or a checkpoint file. Decoding uses the same
options as the faster-whisper backend (beam 5, best of 5, temperature fallback, conditioning on
the previous text); fp16 on CUDA, fp32 on CPU. openai-whisper cannot be interrupted inside one
call: a request that times out stops at the next window (ASR_LONG_AUDIO_WINDOW_SECONDS).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.backends import model_label
from service.backends.base import Capabilities, Segment, TranscribeOptions, Transcript, Word
from service.embedded_model import is_embedded
from service.errors import ModelLoadError
from service.hardware import resolve_device

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from service.config import Settings

log = logging.getLogger(__name__)


class OpenAIWhisperBackend:
    name = "openai-whisper"

    def __init__(self, settings: Settings) -> None:
        # torch and whisper are the `openai-whisper` extra: imported when the engine is built, not
        # with this module, so that every module imports with the core install and load_backend
        # names the extra to install.
        import torch  # noqa: F401  # first, so that a missing extra is named by its heaviest part
        import whisper
        from whisper.tokenizer import LANGUAGES

        ms = settings.model
        self.device = resolve_device(ms.device, "torch")
        self._fp16 = self.device == "cuda"
        self.compute_type = "float16" if self._fp16 else "float32"
        self.model = model_label(settings)
        self._decode = settings.decode
        root = ms.cache_dir / "openai-whisper"
        name = ms.model
        if is_embedded(name):
            raise ModelLoadError(
                "the embedded models are CTranslate2 conversions for faster-whisper; set ASR_MODEL to an "
                "openai-whisper checkpoint (.pt) or a name such as large-v3"
            )
        if name in whisper.available_models():
            cached = root / os.path.basename(whisper._MODELS[name])
            if ms.local_files_only and not cached.is_file():
                raise ModelLoadError(f"ASR_LOCAL_FILES_ONLY is set and {cached} is not there")
        elif not Path(name).is_file():
            raise ModelLoadError(f"{name!r} is neither an openai-whisper model name nor a checkpoint file")
        try:
            self._model = whisper.load_model(name, device=self.device, download_root=str(root))
        except Exception as exc:  # download failures, bad checkpoints, CUDA errors
            raise ModelLoadError(f"cannot load openai-whisper model {name!r}: {type(exc).__name__}: {exc}") from exc
        multilingual = self._model.is_multilingual
        languages = frozenset(list(LANGUAGES)[: self._model.num_languages]) if multilingual else frozenset({"en"})
        self.capabilities = Capabilities(
            languages=languages, translate=multilingual, word_timestamps=True, vad_filter=False
        )

    def _detect(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        """Language and its probability from the first 30 s (what transcribe would detect)."""
        import whisper

        if not self._model.is_multilingual:
            return "en", 1.0
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels=self._model.dims.n_mels)
        _, probs = self._model.detect_language(mel.to(self._model.device))
        language = max(probs, key=probs.get)
        return language, float(probs[language])

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        import whisper

        # openai-whisper has no per-segment hook: segments are passed on once the call returns.
        language, probability = (options.language, 1.0) if options.language else self._detect(audio)
        kwargs: dict[str, Any] = {
            "language": language,
            "task": options.task,
            "word_timestamps": options.word_timestamps,
            "initial_prompt": options.initial_prompt,
            "condition_on_previous_text": self._decode.condition_on_previous_text,
            "beam_size": options.beam_size or self._decode.beam_size,
            "best_of": self._decode.best_of,
            "fp16": self._fp16,
            "verbose": None,
        }
        if options.temperature:
            kwargs["temperature"] = options.temperature
        result = whisper.transcribe(self._model, audio, **kwargs)
        segments = [
            Segment(
                id=i,
                start=float(s["start"]),
                end=float(s["end"]),
                text=s["text"].strip(),
                seek=int(s["seek"]),
                words=[Word(w["start"], w["end"], w["word"], w["probability"]) for w in s["words"]]
                if "words" in s
                else None,
                avg_logprob=s["avg_logprob"],
                no_speech_prob=s["no_speech_prob"],
                compression_ratio=s["compression_ratio"],
                temperature=s["temperature"],
                tokens=list(s["tokens"]),
            )
            for i, s in enumerate(result["segments"])
        ]
        if on_segment is not None:
            for segment in segments:
                on_segment(segment)
        return Transcript(
            text=str(result["text"]).strip(),
            language=str(result.get("language") or language),
            language_probability=probability,
            duration=len(audio) / whisper.audio.SAMPLE_RATE,
            segments=segments,
        )

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        return self._detect(audio)

    def close(self) -> None:
        import torch

        del self._model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
