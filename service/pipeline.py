"""The work behind a transcription request, callable without a server.

Transcriber owns the engine's lifecycle (load in the background, warm up, report ready)
and runs one request: check options against the engine's capabilities, decode off the
event loop, wait for a worker, transcribe, measure, look for hallucinations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np

from service.audio import DecodedAudio, decode_audio
from service.backends import load_backend
from service.backends.base import Backend, Cancelled, TranscribeOptions, Transcript
from service.errors import (
    BackendError,
    BadRequestError,
    NotReadyError,
    RequestTimeoutError,
    ServiceError,
    UnsupportedFeatureError,
)
from service.formats import Result
from service.gpu import is_out_of_memory
from service.languages import language_label
from service.quality import hallucination
from service.windowing import transcribe_windowed

if TYPE_CHECKING:
    import threading

    from service.config import Settings
    from service.metrics import Metrics
    from service.scheduler import Scheduler

log = logging.getLogger(__name__)

BackendFactory = Callable[["Settings"], Backend]


@dataclass(frozen=True)
class RequestOptions:
    """What a client asked for, before it is checked against the engine."""

    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    vad_filter: bool | None = None
    prompt: str | None = None
    temperature: float | None = None
    rich_output: bool = False


@dataclass
class Outcome:
    """A finished request: the result to render and the audio (for the quality sampler)."""

    result: Result
    audio: DecodedAudio
    flags: list[str]


class Transcriber:
    def __init__(
        self, settings: Settings, metrics: Metrics, scheduler: Scheduler, backend_factory: BackendFactory | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.scheduler = scheduler
        self._factory = backend_factory or load_backend
        self.backend: Backend | None = None
        self.state = "loading"
        self.error: str | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def load(self) -> None:
        """Load the engine and run a short warm-up inference; blocking, run in a thread.

        Leaves state "ready", or "failed" with `error` set; never raises.
        """
        started = time.perf_counter()
        try:
            backend = self._factory(self.settings)
            warm = np.random.default_rng(0).normal(0.0, 0.01, 16_000).astype(np.float32)
            backend.transcribe(warm, TranscribeOptions(language=_warmup_language(backend)))
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
            return
        self.backend = backend
        self.metrics.model_info.labels(backend.name, backend.model, backend.device, backend.compute_type).set(1)
        self.metrics.model_load_seconds.set(time.perf_counter() - started)
        observe = getattr(backend, "set_batch_observer", None)
        if observe is not None:
            observe(self.metrics.batch_size.labels(backend.name, backend.model).observe)
        self.state = "ready"
        self.metrics.ready.set(1)
        log.info("model %s (%s) ready in %.1f s", backend.model, backend.name, time.perf_counter() - started)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.metrics.ready.set(0)

    def ready_backend(self) -> Backend:
        """Return the loaded engine; raises NotReadyError while loading or after a failure."""
        if self.backend is None:
            detail = f"failed to load: {self.error}" if self.state == "failed" else "is still loading"
            raise NotReadyError(f"the model {detail}")
        return self.backend

    # ---- one request -----------------------------------------------------------------

    def check_options(self, request: RequestOptions) -> TranscribeOptions:
        """Return engine options for `request`; raises BadRequestError / UnsupportedFeatureError."""
        backend = self.ready_backend()
        caps = backend.capabilities
        if request.language is not None and request.language not in caps.languages:
            known = ", ".join(sorted(caps.languages))
            raise BadRequestError(f"unknown or unsupported language {request.language!r}; this model knows: {known}")
        wanted = {
            "translation": (request.task == "translate", caps.translate),
            "word timestamps": (request.word_timestamps, caps.word_timestamps),
            "emotion and sound-event output (SenseVoice)": (request.rich_output, caps.emotion or caps.audio_events),
            "a prompt": (bool(request.prompt), caps.prompt),
            "a non-zero temperature": (bool(request.temperature), caps.temperature),
            "the VAD filter": (bool(request.vad_filter), caps.vad_filter),
        }
        for feature, (asked, offered) in wanted.items():
            if asked and not offered:
                raise UnsupportedFeatureError(f"{feature} is not supported by {backend.name} model {backend.model}")
        vad = self.settings.decode.vad_filter_default if request.vad_filter is None else request.vad_filter
        return TranscribeOptions(
            language=request.language,
            task="translate" if request.task == "translate" else "transcribe",
            word_timestamps=request.word_timestamps,
            vad_filter=vad and caps.vad_filter,
            initial_prompt=request.prompt or None,
            temperature=request.temperature,
        )

    async def decode(self, upload: IO[bytes]) -> DecodedAudio:
        """Decode an upload in a thread (it is CPU work); raises the audio errors (4xx)."""
        limits = self.settings.limits
        return await asyncio.to_thread(
            decode_audio,
            upload,
            max_seconds=limits.max_audio_seconds,
            spill_seconds=self.settings.decode.long_audio_window_seconds,
        )

    def timeout_for(self, audio: DecodedAudio) -> float:
        limits = self.settings.limits
        return limits.request_timeout_seconds + audio.duration * limits.timeout_per_audio_second

    async def run(self, audio: DecodedAudio, options: TranscribeOptions) -> Outcome:
        """Queue and transcribe decoded audio.

        Raises QueueFullError, RequestTimeoutError, BackendError (engine failure).
        """
        backend = self.ready_backend()
        window = self.settings.decode.long_audio_window_seconds

        def job(cancel: threading.Event) -> tuple[Transcript, float]:
            started = time.perf_counter()
            transcript = transcribe_windowed(backend, audio, options, window, cancel)
            return transcript, time.perf_counter() - started

        try:
            transcript, seconds = await self.scheduler.submit(job, self.timeout_for(audio))
        except Cancelled:
            raise RequestTimeoutError("the request was cancelled before it finished") from None
        except ServiceError:  # queue full, timeout: already what the client should hear
            raise
        except Exception as exc:
            raise self._backend_failure(exc) from exc
        flags = await asyncio.to_thread(hallucination.inspect, transcript, audio)
        result = Result(transcript, backend.name, backend.model, seconds, warnings=_warnings(flags))
        self._observe(backend, result, flags)
        return Outcome(result, audio, flags)

    def _backend_failure(self, exc: Exception) -> BackendError:
        if is_out_of_memory(exc):
            self.metrics.gpu_oom.inc()
            log.error("engine ran out of GPU memory: %s", exc)
            return BackendError("the engine ran out of GPU memory; retry later or with shorter audio")
        log.exception("engine failed")
        return BackendError(f"the engine failed: {type(exc).__name__}")

    def _observe(self, backend: Backend, result: Result, flags: list[str]) -> None:
        m, t = self.metrics, result.transcript
        labels = (backend.name, backend.model, language_label(t.language))
        m.audio_duration.labels(*labels).observe(t.duration)
        m.audio_processed.labels(*labels).inc(t.duration)
        m.inference_duration.labels(*labels).observe(result.processing_seconds)
        m.inference_seconds.labels(*labels).inc(result.processing_seconds)
        if t.duration > 0:
            m.rtf.labels(backend.name, backend.model).observe(result.rtf)
        for seg in t.segments:
            if seg.avg_logprob is not None:
                m.segment_logprob.labels(backend.name, backend.model).observe(seg.avg_logprob)
            if seg.no_speech_prob is not None:
                m.segment_no_speech.labels(backend.name, backend.model).observe(seg.no_speech_prob)
            if seg.compression_ratio is not None:
                m.segment_compression.labels(backend.name, backend.model).observe(seg.compression_ratio)
            if seg.emotion:
                m.emotions.labels(seg.emotion).inc()
            for event in seg.events:
                m.audio_events.labels(event).inc()
        for kind in flags:
            m.hallucinations.labels(kind).inc()


def _warmup_language(backend: Backend) -> str | None:
    languages = backend.capabilities.languages
    return "en" if "en" in languages else (min(languages) if languages else None)


_WARNING_TEXT = {
    "repetition": "suspected hallucination: the text repeats itself",
    "silence": "suspected hallucination: text over near-silent audio",
    "phantom_phrase": "suspected hallucination: a stock phrase over near-silent audio",
}


def _warnings(flags: list[str]) -> list[str]:
    return [_WARNING_TEXT[f] for f in flags]
