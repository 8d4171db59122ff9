"""One Wyoming utterance: its audio from audio-start to audio-stop, its partials and its final.

The final is decoded early where that pays. Home Assistant ends an utterance when its own VAD
has heard 0.7 s of silence (its default), and sends that silence too; the server VAD (Silero,
service.streaming.vad) hears the speech end ASR_WYOMING_SPECULATE_SILENCE_MS after it, and the
final decode of the audio so far starts then, while the client's silence still arrives. If
audio-stop comes with no speech after that point, the early decode is the answer (counted by
Pipeline.observe as the final it is); if speech resumes, it is cancelled and the next pause starts
another. The audio after the cut is silence by the VAD's judgement, so the answer is the one a
decode after audio-stop would give, only sooner; without a pause before audio-stop the final is
decoded after it, as any server would.

Clients that asked for streaming (service.wyoming.handler) also get partial text while they
speak: the Realtime session's pattern and settings (service.streaming.session): a partial
decode of the utterance so far every ASR_STREAM_PARTIAL_SECONDS of new audio while the VAD hears
speech, at most one in flight, uncounted; the Stabilizer's local agreement decides which words are
sent (`transcript-chunk`), never taken back. The final is `transcript`, the truth: when it does
not begin with what was sent, that is a revision, counted. Unlike the Realtime session's, these
partials are shed under load: they run on spare capacity (IDLE priority) and only while this
server has no more utterances in progress than workers - 1, since what Home Assistant waits for
is the final (measured with bench/wyoming.py while building it: at 4 clients, partials at STREAM
priority held a worker for good, and the finals came 3.7 s after audio-stop instead of 0.7 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop

from service.audio import DecodedAudio
from service.backends.base import SAMPLE_RATE
from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.errors import ServiceError
from service.pipeline import Work
from service.scheduler import Preempted, Priority
from service.streaming.buffer import InputBuffer
from service.streaming.stabilizer import Stabilizer
from service.streaming.vad import StreamingVad
from service.wyoming.audio import AudioFormat, Converter, FormatError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import numpy as np
    import numpy.typing as npt
    from wyoming.event import Event

    from service.config import Settings
    from service.metrics import StreamMetrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline, RequestOptions

log = logging.getLogger(__name__)
RATE = SAMPLE_RATE
VAD_THRESHOLD = 0.5
VAD_PREFIX_MS = 300
T = TypeVar("T")


class UtteranceError(Exception):
    """Audio the utterance refuses: the error event's code and text, and the rejection reason."""

    def __init__(self, code: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


@dataclass
class _Early:
    """The final's decode begun before audio-stop, over the audio up to `until`."""

    until: int
    token: CancelToken
    task: asyncio.Task[Outcome]


class Utterance:
    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        options: RequestOptions,
        partial_options: RequestOptions | None,
        fmt: AudioFormat,
        metrics: StreamMetrics,
        send: Callable[[Event], Awaitable[None]],
        may_partial: Callable[[], bool] = lambda: True,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        """`partial_options`: the options of partial decodes for a streaming client, else None;
        `may_partial`: whether there is room for one now; `on_end`: called once when it is over."""
        self.pipeline, self.settings, self.metrics = pipeline, settings, metrics
        self.options, self.partial_options = options, partial_options
        self.format = fmt
        self._send = send
        self._may_partial, self._on_end = may_partial, on_end
        self._ended = False
        self._converter = Converter(fmt)
        self._buffer = InputBuffer()
        self.started = time.monotonic()
        self.bytes = 0
        wy = settings.wyoming
        self._max_samples = int(wy.max_utterance_seconds * RATE)
        self._vad: StreamingVad | None = None
        if wy.speculate_silence_ms > 0 or partial_options is not None:
            silence = wy.speculate_silence_ms or 500
            self._vad = StreamingVad(VAD_THRESHOLD, VAD_PREFIX_MS, silence, wy.max_utterance_seconds + 1)
        self._speculate = wy.speculate_silence_ms > 0
        self._speech_at: float | None = None  # when the VAD first heard speech
        self._early: _Early | None = None
        self._stabilizer = Stabilizer(settings.streams.stream_partial_agreement)
        self._partial: asyncio.Task[None] | None = None
        self._partial_from = 0
        self._streamed = False  # transcript-start sent
        self._first_sent = False
        self._tokens: set[CancelToken] = set()  # partial decodes in flight
        self._final_token = CancelToken()
        self._tasks: set[asyncio.Task[object]] = set()
        self.done = False  # audio-stop came (or the utterance was refused): no more audio, no partials
        self.aborted = False

    # ---- audio --------------------------------------------------------------------------

    async def add(self, data: bytes) -> None:
        """Take one chunk in the utterance's format; raises UtteranceError past a cap or for a
        chunk that does not fit the format."""
        wy = self.settings.wyoming
        self.bytes += len(data)
        if self.bytes > wy.max_utterance_bytes:
            raise UtteranceError(
                "utterance_too_large", f"an utterance may carry at most {wy.max_utterance_bytes} bytes", "too_large"
            )
        try:
            samples = self._converter.convert(data)
        except FormatError as exc:
            raise UtteranceError("invalid_audio", str(exc), "invalid") from None
        if self._buffer.received + samples.size > self._max_samples:
            seconds = f"{wy.max_utterance_seconds:g}"
            raise UtteranceError("utterance_too_long", f"an utterance may last at most {seconds} s", "too_large")
        if samples.size == 0:
            return
        self.metrics.audio.inc(samples.size / RATE)
        self._buffer.append(samples, time.monotonic())
        if self._vad is not None:
            vad = self._vad
            for event in await asyncio.to_thread(vad.feed, samples):
                if event.kind == "start":
                    self._speech_started()
                elif self._speculate:
                    self._begin_early(event.until)
        self._maybe_partial()

    def _speech_started(self) -> None:
        if self._speech_at is None:
            self._speech_at = time.monotonic()
        if self._early is not None:  # speech goes on: the early final is not the answer
            self._early.token.cancel(CLIENT_DISCONNECTED)
            self._early.task.cancel()
            self._early = None

    def _begin_early(self, until: int) -> None:
        if self._early is not None or self.done:
            return
        token = CancelToken()
        task = self._spawn(self._decode_early(self._buffer.slice(0, until), token))
        self._early = _Early(until, token, task)

    async def _decode_early(self, audio: npt.NDArray[np.float32], token: CancelToken) -> Outcome:
        outcome = await self._decode(audio, token, observe=False)
        if self.partial_options is not None and not self.done:
            # The early final is the best hypothesis so far: its agreed words may go out now.
            await self._chunk(self._stabilizer.update(outcome.result.transcript.text))
        return outcome

    # ---- partials -----------------------------------------------------------------------

    def _maybe_partial(self) -> None:
        received = self._buffer.received
        if (
            self.partial_options is None
            or self.done
            or (self._partial is not None and not self._partial.done())
            or (self._vad is not None and not self._vad.speaking)
            or received - self._partial_from < self.settings.streams.stream_partial_seconds * RATE
            or not self._may_partial()
        ):
            return
        self._partial_from = received
        self._partial = self._spawn(self._run_partial(self._buffer.slice(0, received)))

    async def _run_partial(self, audio: npt.NDArray[np.float32]) -> None:
        assert self.partial_options is not None
        token = CancelToken()
        self._tokens.add(token)
        # On spare capacity only (IDLE: when nothing else waits; see the module's docstring).
        work = Work(
            self.partial_options, DecodedAudio.from_array(audio), priority=Priority.IDLE, token=token, observe=False
        )
        try:
            outcome = await self.pipeline.transcribe(work)
        except (ServiceError, Preempted):
            return
        finally:
            self._tokens.discard(token)
        outcome.audio.close()
        if not self.done:
            await self._chunk(self._stabilizer.update(outcome.result.transcript.text))

    async def _chunk(self, delta: str, language: str | None = None) -> None:
        if not delta:
            return
        await self._start_stream(language)
        if not self._first_sent:
            self._first_sent = True
            self.metrics.first_partial.observe(time.monotonic() - (self._speech_at or self.started))
        await self._send(TranscriptChunk(text=delta).event())

    async def _start_stream(self, language: str | None) -> None:
        if not self._streamed:
            self._streamed = True
            await self._send(TranscriptStart(language=language or self.options.language).event())

    # ---- the final ----------------------------------------------------------------------

    async def decode_final(self) -> Outcome:
        """The final transcription (audio-stop came): the early one when no speech followed its
        cut, else a decode of the whole utterance. Raises the ServiceError of a refusal."""
        self.done = True
        tail = self._converter.flush()
        if tail.size:
            self._buffer.append(tail, time.monotonic())
        if self._partial is not None:
            self._partial.cancel()  # its worker is the final's now
        for token in list(self._tokens):
            token.cancel(CLIENT_DISCONNECTED)
        early = self._early
        if early is not None:
            try:
                outcome = await early.task
            except (ServiceError, Preempted, asyncio.CancelledError):
                if self.aborted:
                    raise
            else:
                self.pipeline.observe(outcome)
                return outcome
        return await self._decode(self._buffer.slice(0, self._buffer.received), self._final_token, observe=True)

    async def _decode(self, audio: npt.NDArray[np.float32], token: CancelToken, observe: bool) -> Outcome:
        work = Work(
            self.options,
            DecodedAudio.from_array(audio),
            token=token,
            observe=observe,
            admission_wait=self.settings.streams.stream_final_wait_seconds,
        )
        return await self.pipeline.transcribe(work)

    async def answer(self, outcome: Outcome) -> None:
        """Send the final: `transcript`, within transcript-start / -stop for a streaming client
        (with the words not yet sent as a last chunk)."""
        transcript = outcome.result.transcript
        if self.partial_options is not None:
            rest, revised = self._stabilizer.finish(transcript.text)
            if revised:
                self.metrics.revisions.inc()
            else:
                await self._chunk(rest, transcript.language)
            await self._start_stream(transcript.language)
        await self._send(Transcript(text=transcript.text, language=transcript.language).event())
        if self.partial_options is not None:
            await self._send(TranscriptStop().event())

    @property
    def seconds(self) -> float:
        return self._buffer.received / RATE

    # ---- the end ------------------------------------------------------------------------

    def end(self) -> None:
        """The utterance is over (answered, refused or abandoned); once, however often called."""
        if not self._ended:
            self._ended = True
            self._on_end()

    def abort(self) -> None:
        """Stop everything the utterance runs (the client left, or its audio was refused)."""
        self.end()
        self.done = self.aborted = True
        for token in [*self._tokens, self._final_token]:
            token.cancel(CLIENT_DISCONNECTED)
        if self._early is not None:
            self._early.token.cancel(CLIENT_DISCONNECTED)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, work: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, ServiceError | Preempted):
                log.error("a wyoming utterance task failed", exc_info=error)

    async def wait_stopped(self) -> None:
        """Wait for the utterance's tasks to end (after abort)."""
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._tasks))
