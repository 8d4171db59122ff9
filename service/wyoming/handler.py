"""One Wyoming connection: the events a client sends, the answers, and what ends it.

Client events: `describe` (answered with `info`), `transcribe` (the model by id or alias, and the
language, for the utterances that follow), `audio-start` / `audio-chunk` / `audio-stop` (an
utterance; chunks without an audio-start begin one, as other servers allow), `ping`. Answers:
`transcript` (text and language) for each utterance; for a streaming client, inside
`transcript-start` ... `transcript-stop` with `transcript-chunk`s while it speaks; `error` (text
and a code) for anything refused. After an error the utterance is dropped (its further chunks are
ignored until its audio-stop) and the connection goes on; unknown event types are ignored.

Streaming is for clients that can read it: those whose events declare wyoming 1.7 or later (the
protocol library writes its version on every event), and only while ASR_WYOMING_STREAMING is on.

What ends a connection: the client leaving (its work is cancelled at once, a final in flight too);
nothing received for ASR_WYOMING_IDLE_SECONDS while no answer is owed; an utterance whose audio
takes longer than ASR_WYOMING_MAX_UTTERANCE_SECONDS + ASR_WYOMING_IDLE_SECONDS to arrive (too
slow); a client that takes longer than ASR_WYOMING_SEND_TIMEOUT_SECONDS to take one event; bytes
that are not Wyoming events, or an event past ASR_WYOMING_MAX_EVENT_BYTES; the service draining
(answers owed get the shutdown grace period first). Each is counted in
asr_streams_closed_total{entrypoint="wyoming", reason} and, but for the client leaving, told in
an `error` event first where the socket still takes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from service.errors import ServiceError
from service.languages import normalize_language
from service.pipeline import RequestOptions
from service.scheduler import Preempted
from service.streaming.hub import StreamLimitError
from service.wyoming.audio import AudioFormat, FormatError, check_format
from service.wyoming.framing import FrameError, GuardedReader
from service.wyoming.info import describe
from service.wyoming.utterance import Utterance, UtteranceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from service.config import Settings
    from service.metrics import Metrics
    from service.pipeline import Pipeline
    from service.streaming.hub import StreamHub

log = logging.getLogger(__name__)
STREAMING_VERSION = (1, 7)  # transcript-start / -chunk / -stop
MAX_TEXT = 300  # characters of a client's value echoed in an error


class _Ended(Exception):
    """The connection must end now, for `reason` (metrics.WYOMING_CLOSE_REASONS), after telling
    the client `error` (a code and a text) when there is one."""

    def __init__(self, reason: str, error: tuple[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class Listener(Protocol):
    """What a connection needs of the server that accepted it (service.wyoming.server)."""

    settings: Settings
    pipeline: Pipeline
    metrics: Metrics
    hub: StreamHub
    draining: asyncio.Event

    def keep(self, work: Awaitable[Any]) -> None: ...

    def utterance_began(self) -> Callable[[], None]: ...

    def partials_room(self) -> bool: ...

    def track(self, connection: asyncio.Task[Any] | None) -> None: ...


class WyomingHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Listener) -> None:
        super().__init__(reader, writer)
        self.server = server
        self.settings = server.settings
        self.pipeline = server.pipeline
        self.metrics = server.metrics.stream("wyoming")
        self._framed = GuardedReader(reader, self.settings.wyoming.max_event_bytes)
        self._write_lock = asyncio.Lock()
        self._gone: str | None = None  # why sending failed: the connection is over
        self._gone_event = asyncio.Event()
        self._last = time.monotonic()  # the last event received or answer sent
        self._model: str | None = None
        self._language: str | None = None
        self._utterance: Utterance | None = None
        self._dropping = False  # an utterance was refused: its chunks are ignored until its audio-stop
        self._refused = False  # the last transcribe was refused: so is its utterance
        self._finals: list[asyncio.Task[None]] = []  # answers owed, in order

    # ---- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; nothing a client sends escapes from here."""
        reason = "client"
        self.server.track(asyncio.current_task())
        try:
            with self.server.hub.open(self, "wyoming"):
                reason = await self._serve()
        except StreamLimitError:
            self.server.metrics.rejected.labels("stream_limit").inc()
            limit = f"all {self.server.hub.max_streams} live streams are taken; retry later"
            await self._refuse("too_many_streams", limit)
            return
        except Exception:
            log.exception("a wyoming connection failed")
            reason = "invalid"
        finally:
            await self._stop_work()
            self.writer.close()
        self.metrics.closed.labels(reason).inc()

    async def _serve(self) -> str:
        if self.server.draining.is_set():
            await self._error("shutting_down", "the service is shutting down; retry on another instance")
            return "shutting_down"
        read: asyncio.Future[Event | None] = asyncio.ensure_future(async_read_event(self._framed))  # type: ignore[arg-type]
        drain = asyncio.ensure_future(self.server.draining.wait())
        gone = asyncio.ensure_future(self._gone_event.wait())
        try:
            while True:
                waiters: set[asyncio.Future[Any]] = {read, drain, gone, *self._finals}  # answered: idle again
                done, _ = await asyncio.wait(waiters, timeout=self._patience(), return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    return self._gone or "client"
                if drain in done:
                    return await self._drain()
                if read not in done:
                    if self._limit_passed() is not None:
                        return await self._time_out()
                    continue
                event = self._received(read)
                if event is None:
                    return "client"
                self._last = time.monotonic()
                await self._handle(event)
                read = asyncio.ensure_future(async_read_event(self._framed))  # type: ignore[arg-type]
        except _Ended as ended:
            if ended.error is not None:
                await self._error(*ended.error)
            return ended.reason
        finally:
            for waiter in (read, drain, gone):
                waiter.cancel()

    def _received(self, read: asyncio.Future[Event | None]) -> Event | None:
        """The event read, None when the client left; raises _Ended for what cannot be read."""
        try:
            event = read.result()
        except FrameError as exc:
            self._reject("invalid")
            raise _Ended("invalid", (exc.code, exc.message)) from None
        except (EOFError, ConnectionError, OSError):
            return None
        except Exception:  # the library choked on what it read (data of the wrong shape): not a defect of ours
            self._reject("invalid")
            raise _Ended("invalid", ("invalid_event", "an event's data could not be read")) from None
        if event is None and self._framed.mid_event:
            self._reject("invalid")
            raise _Ended("invalid", ("invalid_event", "an event's data is not a JSON object"))
        return event

    def _patience(self) -> float | None:
        """Seconds until the next limit could pass; None: none can while an answer is owed."""
        limits = []
        if not self._owed():
            limits.append(self.settings.wyoming.idle_seconds - (time.monotonic() - self._last))
        if self._utterance is not None:
            limits.append(self._utterance_deadline() - time.monotonic())
        return max(0.01, min(limits)) if limits else None

    def _utterance_deadline(self) -> float:
        assert self._utterance is not None
        wy = self.settings.wyoming
        return self._utterance.started + wy.max_utterance_seconds + wy.idle_seconds

    def _limit_passed(self) -> str | None:
        now = time.monotonic()
        if self._utterance is not None and now >= self._utterance_deadline():
            return "too_long"
        if self._owed():
            return None  # the client waits for an answer: it is not idle
        if now - self._last >= self.settings.wyoming.idle_seconds:
            return "idle_timeout"
        return None

    async def _time_out(self) -> str:
        reason = self._limit_passed()
        assert reason is not None
        wy = self.settings.wyoming
        if reason == "too_long":
            seconds = f"{wy.max_utterance_seconds + wy.idle_seconds:g}"
            await self._error("utterance_too_slow", f"an utterance's audio must arrive within {seconds} s")
        else:
            await self._error("idle_timeout", f"nothing received for {wy.idle_seconds:g} s")
        return reason

    async def _drain(self) -> str:
        """The service drains: answers owed get the grace period, then the client is told."""
        if self._utterance is not None:
            self._utterance.abort()
            self._utterance = None
        if self._finals:
            await asyncio.wait(self._finals, timeout=self.settings.server.shutdown_grace_seconds)
        await self._error("shutting_down", "the service is shutting down; retry on another instance")
        return "shutting_down"

    async def _stop_work(self) -> None:
        """Cancel whatever the connection still runs (its client left, or it ended) and wait for it."""
        if self._utterance is not None:
            self._utterance.abort()
            await self._utterance.wait_stopped()
            self._utterance = None
        for task in self._finals:
            task.cancel()
        if self._finals:
            await asyncio.wait(self._finals)

    def _owed(self) -> bool:
        self._finals = [t for t in self._finals if not t.done()]
        return bool(self._finals)

    # ---- events -------------------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        await self._handle(event)
        return True

    async def _handle(self, event: Event) -> None:
        try:
            if AudioChunk.is_type(event.type):
                await self._chunk(event)
            elif AudioStart.is_type(event.type):
                await self._start(event.data)
            elif AudioStop.is_type(event.type):
                await self._stop()
            elif Transcribe.is_type(event.type):
                await self._transcribe(event.data)
            elif Describe.is_type(event.type):
                await self.write_event(describe(self.pipeline, self.settings.wyoming.streaming).event())
            elif Ping.is_type(event.type):
                await self.write_event(Pong(text=_text(event.data.get("text"))).event())
            else:
                self._reject("unsupported")  # other programs' events (tts, wake, ...): not ours to answer
        except _Ended:
            raise
        except UtteranceError as exc:
            self._drop_utterance()
            self._reject(exc.reason)
            await self._error(exc.code, exc.message)
        except Exception:
            # A defect, not the client's fault; tests/test_wyoming.py sends garbage and odd events to find these.
            log.exception("wyoming: an event of type %s failed", event.type[:64])
            self._drop_utterance()
            await self._error("server_error", "the service failed on this event; the connection goes on")

    async def _transcribe(self, data: dict[str, Any]) -> None:
        request = Transcribe.from_event(Event("transcribe", data))
        if not all(v is None or isinstance(v, str) for v in (request.name, request.language)):
            raise UtteranceError("invalid_event", "transcribe's name and language must be strings", "invalid")
        language = normalize_language(request.language)
        try:
            model = self.pipeline.resolve_model(request.name)
            self.pipeline.check_options(RequestOptions(language=language, model=model))
        except ServiceError as exc:
            self._refused = True
            raise UtteranceError(exc.code, exc.message, "unsupported") from None
        self._model, self._language, self._refused = model, language, False

    async def _start(self, data: dict[str, Any]) -> None:
        if self._utterance is not None:  # a new audio-start before the last one's stop: that one is dropped
            self._drop_utterance()
            self._reject("invalid")
        self._dropping = self._refused  # the error of its transcribe was this utterance's answer
        if not self._dropping:
            self._utterance = self._begin(_format_of(data))

    def _begin(self, fmt: AudioFormat) -> Utterance:
        """A new utterance, or UtteranceError for one that admission or the limits refuse."""
        try:
            self.pipeline.admit(room=False, model=self._model)
        except ServiceError as exc:
            if exc.reason is not None:
                self.server.metrics.rejected.labels(exc.reason).inc()
            raise UtteranceError(exc.code, exc.message, "unsupported") from None
        if self._owed() and len(self._finals) >= self.settings.streams.stream_max_pending_turns:
            pending = f"{len(self._finals)} utterances wait for their transcript; send the next one after"
            raise UtteranceError("too_many_pending_utterances", pending, "turns_pending")
        options = RequestOptions(language=self._language, model=self._model)
        partial = None
        if self._streaming() and self._partials_offered():
            beam = self.settings.streams.stream_partial_beam_size or None
            partial = RequestOptions(language=self._language, model=self._model, beam_size=beam)
        ended = self.server.utterance_began()
        return Utterance(
            self.pipeline,
            self.settings,
            options,
            partial,
            fmt,
            self.metrics,
            self.write_event,
            may_partial=self.server.partials_room,
            on_end=ended,
        )

    async def _chunk(self, event: Event) -> None:
        if self._dropping or self._refused:
            return
        fmt = _format_of(event.data)
        if self._utterance is None:
            self._utterance = self._begin(fmt)
        elif fmt != self._utterance.format:
            raise UtteranceError("invalid_audio", "a chunk's format differs from its utterance's", "invalid")
        await self._utterance.add(event.payload or b"")

    async def _stop(self) -> None:
        if self._dropping or self._refused:
            self._dropping = self._refused = False  # the refused utterance is over; its error was its answer
            return
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            await self.write_event(Transcript(text="").event())  # no audio, no words
            return
        previous = self._finals[-1] if self._owed() else None
        self._finals.append(asyncio.ensure_future(self._finish(utterance, previous, time.monotonic())))

    async def _finish(self, utterance: Utterance, previous: asyncio.Task[None] | None, stopped: float) -> None:
        """Decode the utterance and answer it, after the answer before it (answers go out in order)."""
        try:
            outcome = await utterance.decode_final()
        except asyncio.CancelledError:
            utterance.abort()  # the client left: its work stops too
            raise
        except ServiceError as exc:
            utterance.end()
            if exc.reason is not None:
                self.server.metrics.rejected.labels(exc.reason).inc()
            await _after(previous)
            await self._error(exc.code, exc.message)
            return
        except Preempted:  # INTERACTIVE work is never preempted; kept for the type's sake
            utterance.end()
            await _after(previous)
            await self._error("server_error", "the transcription was interrupted")
            return
        try:
            await _after(previous)
            await utterance.answer(outcome)
        except BaseException:
            outcome.audio.close()
            raise
        finally:
            utterance.end()
        self._last = time.monotonic()
        self.metrics.finalisation.observe(time.monotonic() - stopped)
        self.server.keep(self.pipeline.keep_sample(outcome, f"wyoming_{uuid.uuid4().hex[:24]}"))

    def _drop_utterance(self) -> None:
        """Ignore the current utterance's audio until its audio-stop."""
        if self._utterance is not None:
            self._utterance.abort()
            self._utterance = None
        self._dropping = True

    def _streaming(self) -> bool:
        version = self._framed.version
        return self.settings.wyoming.streaming and version is not None and version >= STREAMING_VERSION

    def _partials_offered(self) -> bool:
        try:
            return self.pipeline.model(self._model).capabilities.partials
        except ServiceError:  # not loaded yet: its first utterance is transcribed whole
            return False

    # ---- sending ------------------------------------------------------------------------

    async def write_event(self, event: Event) -> None:
        """Send `event` in order with the others; a client that takes too long, or left, ends the
        connection (the reader is told), and nothing is raised here."""
        if self._gone is not None:
            return
        async with self._write_lock:
            try:
                await asyncio.wait_for(super().write_event(event), self.settings.wyoming.send_timeout_seconds)
            except TimeoutError:
                self._end_sending("slow_consumer")
                self.writer.transport.abort()
            except (ConnectionError, OSError, RuntimeError):
                self._end_sending("client")

    def _end_sending(self, reason: str) -> None:
        if self._gone is None:
            self._gone = reason
            self._gone_event.set()

    async def _error(self, code: str, text: str) -> None:
        await self.write_event(Error(text=text[:MAX_TEXT], code=code).event())

    async def _refuse(self, code: str, text: str) -> None:
        await self._error(code, text)
        with contextlib.suppress(Exception):
            self.writer.close()

    def _reject(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()


def _format_of(data: dict[str, Any]) -> AudioFormat:
    try:
        return check_format(data.get("rate"), data.get("width"), data.get("channels"))
    except FormatError as exc:
        raise UtteranceError("unsupported_audio_format", str(exc), "unsupported") from None


def _text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


async def _after(previous: asyncio.Task[None] | None) -> None:
    if previous is not None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(previous)
