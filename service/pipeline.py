"""The one way audio becomes a transcript, whoever asks: HTTP routes, the CLI, jobs and streams.

`Pipeline.transcribe(work)` runs every stage in order:
  admission  the engine is ready, the service is not draining, an interactive request gets an
             admission ticket (429 when none is free) that it holds to the end;
  checks     options against the engine's capabilities (422);
  decode     on the bounded decode pool (400/413/415/422/507);
  schedule   on a worker, by priority, with a time limit (504) and the caller's cancel token
             (499 when the client hung up, 503 when the service drains);
  speakers   when asked: who spoke (service.speakers), on the same worker within the same time
             limit, its turns merged into the segments and words;
  observe    hallucination guard (segments it is sure were invented are dropped as they arrive,
             in the worker; the rest is flagged after), metrics, warnings.
Callers build a `Work` and differ only in what they fill in; sampling for the quality loop
happens after the answer has gone out (`keep_sample`).

Callers get verbs, never the parts behind them (engine, scheduler, decode pool, lifecycle):
  start / stop        the workers and the model load, shared by the app's lifespan and the CLI
  served / model      what is served (None / NotReadyError while it loads)
  admit               refuse now, before an upload is read, what admission would refuse later
  check_options       a client's options against the engine (422), e.g. on a stream's update
  probe / decode      an upload checked for later (jobs) / decoded once (jobs' windows)
  transcribe          the one entry
  keep_sample         offer an answered outcome to the quality sampler
  observe             count an outcome of unobserved work that became an answer (speculative finals)
  draining / on_drain the service's shutdown, for entry points that hold connections
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from service import audio_health
from service.audio import DecodedAudio
from service.backends.base import (
    Backend,
    Cancelled,
    Capabilities,
    ClipBatching,
    Segment,
    TranscribeOptions,
    Transcript,
)
from service.cancellation import CancelToken
from service.decoding import EncodedAudio
from service.errors import BackendError, BadRequestError, ModelLoadError, ServiceError, UnsupportedFeatureError, shown
from service.formats import MIN_RTF_AUDIO_SECONDS, Result
from service.gpu import is_out_of_memory
from service.languages import language_label
from service.metrics import INPUT_CODECS, INPUT_RATES
from service.outcome import Outcome
from service.quality import hallucination
from service.resegment import split_by_words
from service.scheduler import Batchable, Preempted, Priority
from service.windowing import Clip, one_window, transcribe_clips, transcribe_windowed

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from service.audio_health import AudioHealth
    from service.config import Settings
    from service.decoding import AudioSource, DecodePool
    from service.engine import BackendFactory
    from service.lifecycle import Lifecycle
    from service.metrics import Metrics
    from service.models import Lease, ModelRegistry, ModelStatus
    from service.quality.sampler import Sampler
    from service.quality.store import SampleStore
    from service.scheduler import Scheduler
    from service.speakers.base import Diarization, KnownSpeaker, VadParams
    from service.speakers.engine import SpeakerEngine

log = logging.getLogger(__name__)
DETECTION_SECONDS = 30.0  # Whisper decides the language from one 30 s window
# A known speaker's reference clip, as OpenAI accepts them.
REFERENCE_SECONDS = (2.0, 10.0)


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
    # The answer needs subtitle-sized segments (srt, vtt, verbose JSON, jobs): batched decoding
    # then also asks for word timings and splits its 30 s chunks by them.
    fine_segments: bool = False
    # Beam width (None: ASR_BEAM_SIZE); live partial hypotheses may use a narrower one (ASR_STREAM_PARTIAL_BEAM_SIZE).
    beam_size: int | None = None
    # The model, by ASR_MODELS id or alias (None: the default); an unknown name is 404.
    model: str | None = None
    # The prompt is context (a stream's recent text), which the engine may shorten to batch it.
    prompt_is_context: bool = False
    # A live partial hypothesis: one cheap pass (TranscribeOptions.draft); the final is decoded in full.
    draft: bool = False
    # Each text token's log probability in the segments (OpenAI's include=logprobs).
    logprobs: bool = False
    # Words and names to steer decoding towards (OpenAI's keywords); at most ASR_MAX_KEYWORDS.
    keywords: tuple[str, ...] = ()
    # Who spoke (service.speakers), found after decoding: bounds on the count, voices to name from
    # reference clips, and how speech is found for it (OpenAI's chunking_strategy; None: defaults).
    diarize: bool = False
    min_speakers: int | None = None
    max_speakers: int | None = None
    known_speakers: tuple[KnownSpeaker, ...] = ()
    speaker_vad: VadParams | None = None


@dataclass
class Work:
    """One transcription to run: what to transcribe, how, for whom."""

    options: RequestOptions
    source: AudioSource
    priority: Priority = Priority.INTERACTIVE
    token: CancelToken = field(default_factory=CancelToken)
    # Called from the worker thread with each segment as the engine finishes it (streaming).
    on_segment: Callable[[Segment], None] | None = None
    # False for work whose audio is counted elsewhere (a live stream's partial hypotheses).
    observe: bool = True
    # "detect_language": only the first 30 s are decoded and the engine names their language.
    mode: Literal["transcribe", "detect_language"] = "transcribe"
    # Seconds to wait for an admission place instead of a 429 (clients that never retry).
    admission_wait: float = 0.0


@dataclass
class _ClipJob:
    """A short clip's decode that may share an engine call with others (the scheduler's batches)."""

    lease: Lease
    audio: DecodedAudio
    options: TranscribeOptions
    on_segment: Callable[[Segment], None] | None


# What a decode hands back: the transcript, the engine's seconds, the kinds of dropped segments,
# and who spoke (when asked; never for a batched clip).
Decoded = tuple[Transcript, float, list[str], "Diarization | None"]


@dataclass(frozen=True)
class ServedModel:
    """What a caller may know of the model being served: names, device and capabilities."""

    backend: str
    model: str
    device: str
    compute_type: str
    capabilities: Capabilities


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        models: ModelRegistry,
        scheduler: Scheduler,
        decoder: DecodePool,
        lifecycle: Lifecycle,
        sampler: Sampler,
        speakers: SpeakerEngine,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._models = models
        self._scheduler = scheduler
        self._decoder = decoder
        self._lifecycle = lifecycle
        self._sampler = sampler
        self._speakers = speakers
        self._maintenance: asyncio.Task[None] | None = None

    # ---- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and load the preloaded models in the background: readiness (`state`)
        says when they are done, and a caller that needs them can `await loaded()`."""
        await self._scheduler.start()
        self._models.start()
        self._maintenance = asyncio.create_task(self._models.unload_idle_forever(), name="model-ttl")

    async def loaded(self) -> str:
        """Wait for the preloads that `start` began; returns `state` (ready or failed)."""
        await self._models.preloaded()
        return self.state

    async def stop(self) -> None:
        """Stop the workers (work still queued is cancelled), then release the models; loads under
        way finish first, so their memory is released too."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self._scheduler.stop()
        self._decoder.close()
        await self._models.stop()
        await asyncio.to_thread(self._speakers.close)

    # ---- what is served -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """Readiness: ready once every preloaded model is, failed when one failed, else loading."""
        preloads = [e for e in self._models.engines.values() if e.entry.preload]
        if any(e.state == "failed" for e in preloads):
            return "failed"
        return "ready" if all(e.state == "ready" for e in preloads) else "loading"

    def load_error(self, detailed: bool) -> str | None:
        """Why a preloaded model failed to load: in full (paths, hub errors) for the admin, else
        only its id and the kind of failure; None when none failed."""
        for engine in self._models.engines.values():
            if engine.entry.preload and engine.state == "failed":
                return engine.error if detailed else engine.public_error
        return None

    def served(self) -> ServedModel | None:
        """The default model, or None while it loads (or after it failed to)."""
        backend = self._models.default.backend
        return None if backend is None else _served(backend)

    def model(self, name: str | None = None) -> ServedModel:
        """The model `name` (id or alias; None: the default) while it is loaded; raises
        ModelNotFoundError (404), NotReadyError (503) while it is not loaded."""
        return _served(self._models.resolve(name).ready_backend())

    def resolve_model(self, name: str | None) -> str:
        """The id of the model a client names (None: the default); raises ModelNotFoundError (404)."""
        return self._models.resolve(name).id

    def models(self) -> list[ModelStatus]:
        """Every configured model with its state (GET /v1/models)."""
        return self._models.statuses()

    async def load_model(self, name: str) -> ModelStatus:
        """Load a model now (the admin); returns its status (ready, or failed with the reason logged)."""
        engine = await self._models.load(name)
        return next(s for s in self._models.statuses() if s.id == engine.id)

    async def unload_model(self, name: str) -> bool:
        """Unload a model (the admin); False when it was not loaded. Raises ModelBusyError (409)."""
        return await self._models.unload(name)

    # ---- admission and checks ---------------------------------------------------------

    def admit(self, room: bool = True, model: str | None = None) -> None:
        """Raise now, before an upload is read or a stream opened, what admission would raise
        after: 404 (no such model), 503 (a preloaded model loading or failed, draining), or 429
        unless `room` is False (the caller waits for a place instead, or takes none: jobs,
        streams). A model that loads on demand is loaded (or retried) by the request that needs it."""
        engine = self._models.resolve(model)
        if engine.entry.preload and engine.state in ("loading", "failed"):
            engine.ready_backend()  # raises the answer: still loading (at startup), or failed
        self._lifecycle.check_accepting()
        if room:
            self._scheduler.check_room()

    @property
    def draining(self) -> bool:
        """Whether the service has begun to drain for shutdown."""
        return self._lifecycle.draining

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback` when draining begins (jobs stop taking windows, streams close)."""
        self._lifecycle.on_drain(callback)

    def check_options(self, request: RequestOptions) -> TranscribeOptions:
        """Return engine options for `request`; raises ModelNotFoundError (404), BadRequestError /
        UnsupportedFeatureError (422). A model not loaded yet is checked only by name here: its
        capabilities are checked again once a request has loaded it."""
        backend = self._models.resolve(request.model).backend
        return self._options_for(backend, request)

    def _options_for(self, backend: Backend | None, request: RequestOptions) -> TranscribeOptions:
        self._check_keywords(request.keywords)
        if request.diarize:
            self._check_speakers(request)
        if backend is None:
            return self._engine_options(request, vad_filter_offered=True)
        caps = backend.capabilities
        if request.language is not None and request.language not in caps.languages:
            known = ", ".join(sorted(caps.languages))
            raise BadRequestError(
                f"unknown or unsupported language {shown(request.language)}; this model knows: {known}"
            )
        # feature: (asked, offered, the request field, where every route names it alike)
        wanted: dict[str, tuple[bool, bool, str | None]] = {
            "translation": (request.task == "translate", caps.translate, None),
            "word timestamps": (request.word_timestamps, caps.word_timestamps, None),
            "emotion and sound-event output (SenseVoice)": (
                request.rich_output,
                caps.emotion or caps.audio_events,
                None,
            ),
            "a prompt": (bool(request.prompt), caps.prompt, None),
            "a non-zero temperature": (bool(request.temperature), caps.temperature, None),
            "the VAD filter": (bool(request.vad_filter), caps.vad_filter, None),
            "token log probabilities (include logprobs)": (request.logprobs, caps.logprobs, "include"),
            "keywords": (bool(request.keywords), caps.keywords, "keywords"),
        }
        for feature, (asked, offered, param) in wanted.items():
            if asked and not offered:
                raise UnsupportedFeatureError(
                    f"{feature} is not supported by {backend.name} model {backend.model}", param=param
                )
        return self._engine_options(request, vad_filter_offered=caps.vad_filter)

    def _check_keywords(self, keywords: tuple[str, ...]) -> None:
        """Raises BadRequestError (422, param `keywords`) past ASR_MAX_KEYWORDS or
        ASR_MAX_KEYWORD_CHARS, or for an empty keyword."""
        limits = self.settings.limits
        if len(keywords) > limits.max_keywords:
            raise BadRequestError(
                f"{len(keywords)} keywords given; at most {limits.max_keywords} are taken", param="keywords"
            )
        for keyword in keywords:
            if not keyword.strip():
                raise BadRequestError("a keyword is empty", param="keywords")
            if len(keyword) > limits.max_keyword_chars:
                raise BadRequestError(
                    f"the keyword {shown(keyword)} is longer than {limits.max_keyword_chars} characters",
                    param="keywords",
                )

    def _check_speakers(self, request: RequestOptions) -> None:
        self._speakers.check()
        cap = self.settings.diarization.max_speakers
        for name, value in (("min_speakers", request.min_speakers), ("max_speakers", request.max_speakers)):
            if value is not None and value > cap:
                raise BadRequestError(f"{name} may be at most {cap} (ASR_DIARIZATION_MAX_SPEAKERS)", param=name)

    def _engine_options(self, request: RequestOptions, vad_filter_offered: bool) -> TranscribeOptions:
        vad = self.settings.decode.vad_filter_default if request.vad_filter is None else request.vad_filter
        return TranscribeOptions(
            language=request.language,
            task="translate" if request.task == "translate" else "transcribe",
            word_timestamps=request.word_timestamps,
            vad_filter=vad and vad_filter_offered,
            initial_prompt=request.prompt or None,
            temperature=request.temperature,
            beam_size=request.beam_size,
            prompt_is_context=request.prompt_is_context,
            draft=request.draft,
            logprobs=request.logprobs,
            keywords=tuple(request.keywords),  # a job's stored options hold a list
        )

    def batching(self, backend: Backend, duration: float) -> bool:
        """Whether to decode `duration` seconds batched (ASR_BATCHING, ASR_BATCH_MIN_SECONDS)."""
        mode = self.settings.decode.batching
        if mode == "off" or not backend.capabilities.batching:
            return False
        return mode == "on" or backend.device.startswith("cuda") or duration >= self.settings.decode.batch_min_seconds

    def _for_audio(
        self, backend: Backend, options: TranscribeOptions, work: Work, duration: float
    ) -> TranscribeOptions:
        """The options once the audio's length is known: batched or not, and the word timings
        that subtitle-sized segments need from batched decoding. Streamed answers are not
        batched: a batch hands its segments over only when all of its chunks are done (unless they
        wait for their speakers anyway). Speakers are given to words, so diarized work asks for them."""
        diarize = work.options.diarize
        batched = self.batching(backend, duration) and (work.on_segment is None or diarize)
        fine = work.options.fine_segments and backend.capabilities.word_timestamps
        words = options.word_timestamps or (batched and fine) or (diarize and backend.capabilities.word_timestamps)
        return replace(options, batched=batched, word_timestamps=words)

    def timeout_for(self, duration: float) -> float:
        limits = self.settings.limits
        return limits.request_timeout_seconds + duration * limits.timeout_per_audio_second

    # ---- audio --------------------------------------------------------------------------

    async def probe(self, source: EncodedAudio) -> None:
        """Check an upload that will be transcribed later (a job): that it is audio, plausible,
        decodable at its start and not declared too long. Raises the audio errors (400/413/415/422)."""
        await self._decoder.probe(source)

    async def decode(self, source: AudioSource, token: CancelToken) -> DecodedAudio:
        """Decode `source` once, for a caller that transcribes it in parts (a job's windows); the
        caller closes it. Raises the audio errors, or the answer for a cancelled `token`."""
        return await self._decoder.decode(source, token)

    # ---- the one entry ------------------------------------------------------------------

    async def transcribe(self, work: Work) -> Outcome:
        """Run `work` through every stage; the caller closes the outcome's audio (keep_sample does).

        Raises a ServiceError subclass for everything a client should hear (4xx/5xx), and
        Preempted for IDLE work that gave its worker away.
        """
        engine = self._models.resolve(work.options.model)
        self._lifecycle.check_accepting()
        self._options_for(engine.backend, work.options)  # 422 before a place is taken, when it can tell
        ticket = None
        if work.priority == Priority.INTERACTIVE:
            waiting = work.admission_wait > 0
            ticket = await self._scheduler.admit_waiting(work.admission_wait) if waiting else self._scheduler.admit()
        try:
            with self._lifecycle.track(work.token):
                admitted = time.perf_counter()
                lease = await self._models.acquire(engine)
                try:
                    return await self._run(lease, work, admitted)
                finally:
                    lease.release()
        finally:
            if ticket is not None:
                ticket.release()

    async def _run(self, lease: Lease, work: Work, admitted: float) -> Outcome:
        backend = lease.backend
        options = self._options_for(backend, work.options)
        if work.mode == "detect_language":
            return await self._detect(lease, work)
        audio = await self._decoder.decode(work.source, work.token)
        try:
            references = await self._references(work) if work.options.known_speakers else []
            options = self._for_audio(backend, options, work, audio.duration)
            transcript, seconds, dropped, diarization = await self._schedule(lease, audio, options, work, references)
            flags, health = await asyncio.to_thread(_inspect, transcript, audio)
        except BaseException:
            audio.close()
            raise
        warnings = [*_dropped_warnings(dropped), *_warnings(flags), *audio.warnings]
        result = Result(transcript, backend.name, backend.model, seconds, warnings=warnings)
        # Answer time per audio second is a client's latency: interactive work only.
        interactive = work.priority == Priority.INTERACTIVE
        elapsed = time.perf_counter() - admitted if interactive else None

        def observe() -> None:
            self._observe(backend, result, flags, dropped, elapsed)
            self._observe_input(backend, audio, health)

        outcome = Outcome(result, audio, flags, diarization)
        if work.observe:
            observe()
        else:
            outcome.unobserved = observe  # `observe(outcome)` counts it, should it become an answer
        return outcome

    async def _schedule(
        self,
        lease: Lease,
        audio: DecodedAudio,
        options: TranscribeOptions,
        work: Work,
        references: list[tuple[str, npt.NDArray[np.float32]]],
    ) -> Decoded:
        """The transcript, the engine's seconds, the kinds of the segments the guard dropped, and
        who spoke (when asked)."""
        window = self.settings.decode.long_audio_window_seconds
        diarize = work.options.diarize
        resplit = options.batched and work.options.fine_segments
        # Diarized segments are handed over once their speakers are known.
        on_segment = None if diarize else work.on_segment

        def job(cancel: threading.Event) -> Decoded:
            with lease.running() as backend:  # the model stays loaded until this thread is done
                started = time.perf_counter()
                guard = hallucination.Guard(audio)
                transcript = transcribe_windowed(backend, audio, options, window, cancel, on_segment, guard.screen)
            if resplit:
                keep = work.options.word_timestamps or diarize
                transcript = replace(transcript, segments=split_by_words(transcript.segments, keep_words=keep))
            seconds = time.perf_counter() - started
            if not diarize:
                return transcript, seconds, guard.dropped, None
            transcript, diarization = self._who_spoke(audio, transcript, work.options, references, cancel)
            if work.on_segment is not None:
                for segment in transcript.segments:
                    work.on_segment(segment)
            return transcript, seconds, guard.dropped, diarization

        try:
            return await self._scheduler.run(
                job,
                token=work.token,
                priority=work.priority,
                time_limit=self.timeout_for(audio.duration),
                cost=audio.duration,
                # Diarized decodes run alone: their speakers are found after decoding, in the same job.
                batch=None if diarize else self._batchable(lease, audio, options, work),
            )
        except (ServiceError, Preempted):  # queue full, timeout, client gone: already the answer
            raise
        except Cancelled:
            raise BackendError("the engine stopped before it finished") from None
        except ModelLoadError as exc:
            log.error("speaker diarizer failed to load: %s", exc)
            raise BackendError("the speaker diarizer failed to load; the service log says why") from exc
        except Exception as exc:
            raise self._backend_failure(exc) from exc

    def _batchable(
        self, lease: Lease, audio: DecodedAudio, options: TranscribeOptions, work: Work
    ) -> Batchable[_ClipJob, Decoded] | None:
        """How this decode may share an engine call (service.scheduler): a clip of one window, on an
        engine that batches clips, with options it can batch; None when it runs alone."""
        backend = lease.backend
        if (
            self.settings.scheduler.batch_max_size <= 1
            or not isinstance(backend, ClipBatching)
            or not one_window(audio, self.settings.decode.long_audio_window_seconds)
        ):
            return None
        key = backend.batch_key(options, audio.duration)
        if key is None:
            return None
        observe = self._metrics.batch_size.labels(backend.name, backend.model).observe
        item = _ClipJob(lease, audio, options, work.on_segment)
        return Batchable((lease.engine.id, key), item, self._run_clips, observe)

    def _run_clips(self, jobs: list[_ClipJob], cancels: list[threading.Event]) -> list[Decoded | Exception]:
        """Decode clips of one model in shared engine calls (in a worker thread); each clip's engine
        seconds are its share of the call. Should the batched call fail, each clip is decoded on its
        own, so that one clip's trouble is only its own."""
        window = self.settings.decode.long_audio_window_seconds
        with contextlib.ExitStack() as running:
            backends = [running.enter_context(job.lease.running()) for job in jobs]  # none unloads meanwhile
            backend = backends[0]
            assert isinstance(backend, ClipBatching)
            started = time.perf_counter()
            guards = [hallucination.Guard(job.audio) for job in jobs]
            clips = [
                Clip(job.audio, job.options, job.on_segment, g.screen) for job, g in zip(jobs, guards, strict=True)
            ]
            try:
                parts = transcribe_clips(backend, clips, cancels)
            except Exception:
                log.warning("a batched engine call failed; decoding its %d clips one by one", len(jobs), exc_info=True)
                parts = []
                for clip, cancel in zip(clips, cancels, strict=True):
                    try:
                        parts.append(
                            transcribe_windowed(
                                backends[0], clip.audio, clip.options, window, cancel, clip.on_segment, clip.screen
                            )
                        )
                    except Exception as exc:
                        parts.append(exc)
            seconds = (time.perf_counter() - started) / len(jobs)
        return [
            part if isinstance(part, Exception) else (part, seconds, guard.dropped, None)
            for part, guard in zip(parts, guards, strict=True)
        ]

    # ---- speakers -----------------------------------------------------------------------

    async def _references(self, work: Work) -> list[tuple[str, npt.NDArray[np.float32]]]:
        """The known speakers' reference clips, decoded; raises BadRequestError (422, naming the
        field) for one that is not audio, or shorter or longer than REFERENCE_SECONDS allow."""
        shortest, longest = REFERENCE_SECONDS
        out = []
        for i, known in enumerate(work.options.known_speakers):
            where = f"known_speaker_references[{i}] ({shown(known.name)})"
            try:
                clip = await self._decoder.decode(EncodedAudio(io.BytesIO(known.audio)), work.token)
            except ServiceError as exc:
                if exc.status in (499, 503, 504):  # the request ended: not the reference's fault
                    raise
                raise BadRequestError(f"{where}: {exc.message}", param="known_speaker_references") from None
            try:
                if not shortest <= clip.duration <= longest:
                    raise BadRequestError(
                        f"{where} lasts {clip.duration:.1f} s; a reference must last {shortest:g} to {longest:g} s",
                        param="known_speaker_references",
                    )
                out.append((known.name, clip.read().copy()))
            finally:
                clip.close()
        return out

    def _who_spoke(
        self,
        audio: DecodedAudio,
        transcript: Transcript,
        request: RequestOptions,
        references: list[tuple[str, npt.NDArray[np.float32]]],
        cancel: threading.Event,
    ) -> tuple[Transcript, Diarization]:
        """Diarize `audio` (in the worker thread) and give its segments and words their speakers."""
        bounds = (request.min_speakers, request.max_speakers)
        segments, diarization = self._speakers.who_spoke(
            audio, transcript.segments, references, bounds, request.speaker_vad, cancel
        )
        if not request.word_timestamps:  # asked for only to place the speakers
            segments = [replace(s, words=None) for s in segments]
        return replace(transcript, segments=segments), diarization

    async def _detect(self, lease: Lease, work: Work) -> Outcome:
        """Language detection on the first 30 s: decode them, ask the engine, count nothing as served."""
        audio = await self._decoder.decode(work.source, work.token, keep_seconds=DETECTION_SECONDS)

        def job(cancel: threading.Event) -> tuple[tuple[str, float], float]:
            with lease.running() as backend:
                started = time.perf_counter()
                return backend.detect_language(audio.read()), time.perf_counter() - started

        try:
            (language, probability), seconds = await self._scheduler.run(
                job, token=work.token, priority=work.priority, time_limit=self.timeout_for(audio.duration)
            )
        except ServiceError:
            audio.close()
            raise
        except Exception as exc:
            audio.close()
            raise self._backend_failure(exc) from exc
        transcript = Transcript("", language, probability, audio.duration, [])
        backend = lease.backend
        return Outcome(Result(transcript, backend.name, backend.model, seconds), audio, [])

    async def transcribe_idle(
        self, audio: npt.NDArray[np.float32], model: str, language: str | None
    ) -> tuple[str, float]:
        """Transcribe samples of the service's own (shadow scoring) with `model` at IDLE priority:
        only when nothing else waits, counted nowhere. `language` is used when the model knows it
        (once it is loaded), else detected. Returns (text, engine seconds); raises Preempted when a
        request takes the worker, and the ServiceError of a failure."""
        served = self._models.resolve(model).backend
        known = served is not None and language in served.capabilities.languages
        options = RequestOptions(language=language if known else None, model=model)
        work = Work(options, DecodedAudio.from_array(audio), priority=Priority.IDLE, observe=False)
        outcome = await self.transcribe(work)
        outcome.audio.close()
        return outcome.result.transcript.text, outcome.result.processing_seconds

    def observe(self, outcome: Outcome) -> None:
        """Count an outcome of work run with `observe=False` that became an answer after all (a
        Wyoming utterance's final decoded before its audio-stop, kept since no speech followed):
        its metrics as if it had been observed when it finished; once, however often called."""
        if outcome.unobserved is not None:
            record, outcome.unobserved = outcome.unobserved, None
            record()

    async def keep_sample(self, outcome: Outcome, request_id: str | None = None) -> str | None:
        """Offer the outcome to the quality sampler (after the answer has gone out); frees its audio."""
        return await self._sampler.offer(outcome, request_id)

    # ---- observe ------------------------------------------------------------------------

    def _backend_failure(self, exc: Exception) -> BackendError:
        if is_out_of_memory(exc):
            self._metrics.gpu_oom.inc()
            log.error("engine ran out of GPU memory: %s", exc)
            return BackendError("the engine ran out of GPU memory; retry later or with shorter audio")
        log.exception("engine failed")
        return BackendError(f"the engine failed: {type(exc).__name__}")

    def _observe_input(self, backend: Backend, audio: DecodedAudio, health: AudioHealth | None) -> None:
        m = self._metrics
        codec = audio.info.codec if audio.info.codec in INPUT_CODECS else "other"
        rate = str(audio.info.source_rate) if audio.info.source_rate in INPUT_RATES else "other"
        m.input_audio.labels(codec, rate).inc()
        if health is not None:
            m.input_level.labels(backend.model).observe(health.level_dbfs)
            m.input_clipping.labels(backend.model).observe(health.clipping_ratio)
            m.input_silence.labels(backend.model).observe(health.silence_ratio)
            m.input_snr.labels(backend.model).observe(health.snr_db)

    def _observe(
        self, backend: Backend, result: Result, flags: list[str], dropped: list[str], elapsed: float | None
    ) -> None:
        m, t = self._metrics, result.transcript
        labels = (backend.name, backend.model, language_label(t.language))
        m.audio_duration.labels(*labels).observe(t.duration)
        m.audio_processed.labels(*labels).inc(t.duration)
        m.inference_duration.labels(*labels).observe(result.processing_seconds)
        m.inference_seconds.labels(*labels).inc(result.processing_seconds)
        if result.rtf is not None:
            m.rtf.labels(backend.name, backend.model).observe(result.rtf)
        if elapsed is not None and t.duration >= MIN_RTF_AUDIO_SECONDS:
            m.request_rtf.labels(backend.name, backend.model).observe(elapsed / t.duration)
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
        for kind in dropped:
            m.dropped_segments.labels(kind).inc()


_WARNING_TEXT = {
    "repetition": "suspected hallucination: the text repeats itself",
    "silence": "suspected hallucination: text over near-silent audio",
    "phantom_phrase": "suspected hallucination: a stock phrase over near-silent audio",
}


_DROPPED_TEXT = {
    "past_end": "the engine placed past the end of the audio (invented over padding)",
    "silence": "of text over silent audio (hallucination)",
    "repetition": "repeating earlier text over near-silent audio (hallucination)",
}


def build_pipeline(
    settings: Settings,
    metrics: Metrics,
    backend_factory: BackendFactory | None = None,
    store: SampleStore | None = None,
    lifecycle: Lifecycle | None = None,
) -> Pipeline:
    """Wire a pipeline from settings: engine, scheduler, decode pool, sampler, and the service's
    `lifecycle` (its drain; a fresh one by default). Start it with `await pipeline.start()`."""
    from service.backends import on_gpu
    from service.decoding import DecodePool
    from service.hardware import decode_workers, worker_count
    from service.lifecycle import Lifecycle
    from service.models import ModelRegistry
    from service.quality.sampler import Sampler
    from service.scheduler import Scheduler
    from service.speakers.engine import SpeakerEngine

    return Pipeline(
        settings,
        metrics,
        ModelRegistry(settings, metrics, backend_factory),
        Scheduler(
            worker_count(settings, on_gpu(settings)),
            settings.scheduler.queue_size,
            metrics,
            order=settings.scheduler.interactive_order,
            batch_max_size=settings.scheduler.batch_max_size,
            batch_wait=settings.scheduler.batch_wait_ms / 1000,
        ),
        DecodePool(
            decode_workers(settings),
            settings.limits.max_audio_seconds,
            settings.decode.long_audio_window_seconds,
            metrics,
        ),
        lifecycle or Lifecycle(settings.server.shutdown_grace_seconds),
        Sampler(settings.quality, store, metrics),
        SpeakerEngine(settings, metrics),
    )


def _served(backend: Backend) -> ServedModel:
    return ServedModel(backend.name, backend.model, backend.device, backend.compute_type, backend.capabilities)


def _warnings(flags: list[str]) -> list[str]:
    return [_WARNING_TEXT[f] for f in flags]


def _dropped_warnings(dropped: list[str]) -> list[str]:
    """One warning per kind of dropped segment, with how many, in the order first dropped."""
    counts = {kind: dropped.count(kind) for kind in dict.fromkeys(dropped)}
    return [f"dropped {n} {'segment' if n == 1 else 'segments'} {_DROPPED_TEXT[kind]}" for kind, n in counts.items()]


def _inspect(transcript: Transcript, audio: DecodedAudio) -> tuple[list[str], AudioHealth | None]:
    """The reference-free checks after decoding, in one worker-thread hop: hallucination flags and
    the input's health (on the first seconds only, so its cost is bounded)."""
    health = audio_health.measure(audio.read(0, int(audio_health.HEALTH_SECONDS * audio.sample_rate)))
    return hallucination.inspect(transcript, audio), health
