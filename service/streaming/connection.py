"""One Realtime WebSocket connection: taking frames in, sending events out, and what ends it.

Reading, the session's work and writing are separate tasks, so that none can hold the others up:
- The outbox sends the session's events in order. The session only queues them: a client that
  stops reading fills the outbox, never blocks the session or the limits below. A send that
  takes longer than ASR_STREAM_SEND_TIMEOUT_SECONDS, or more than MAX_OUTBOX_CHARS waiting,
  ends the connection as a slow consumer (counted in asr_streams_closed_total).
- The reader takes frames off the socket as they come and refuses, before parsing them, those
  past the stream's rates (FrameGate: events per second, seconds of audio per second) and those
  larger than any append may be; the session works through the rest in order, at most
  MAX_INBOX_CHARS behind. So a client that leaves is seen at once, and its backlog is dropped
  rather than worked through.
- The limits: nothing received for ASR_STREAM_IDLE_SECONDS, the session's age past
  ASR_STREAM_MAX_SECONDS, the service draining. Each ends the stream with an `error` event and a
  close that is given CLOSE_TIMEOUT_SECONDS: past that the client, which reads nothing, is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from starlette.websockets import WebSocketDisconnect

if TYPE_CHECKING:
    from collections.abc import Mapping

    from service.config import StreamSettings
    from service.metrics import Metrics
    from service.streaming.session import RealtimeSession

log = logging.getLogger(__name__)
MAX_OUTBOX_CHARS = 1 << 20  # events waiting for a client; a reading client holds a few kB
MAX_INBOX_CHARS = 4 << 20  # frames waiting for the session: about three of the largest appends
CLOSE_TIMEOUT_SECONDS = 2.0
REPORT_EVERY_SECONDS = 1.0  # one `rate_limit_exceeded` error event per second at most, not one per frame
NORMAL, POLICY_VIOLATION, SERVICE_RESTART = 1000, 1008, 1012
_GONE = (WebSocketDisconnect, RuntimeError, OSError)  # what sending to a client that left raises


class Socket(Protocol):
    """What a connection needs of a WebSocket (Starlette's satisfies it)."""

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class TokenBucket:
    """`rate` per second on average, up to `capacity` at once."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self._tokens, self._at = capacity, now

    def take(self, amount: float, now: float) -> bool:
        """Take `amount` if there is that much; return whether it was taken."""
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


class FrameGate:
    """Which frames the session gets: within the stream's event and audio rates, and its frame size."""

    def __init__(self, settings: StreamSettings, now: float) -> None:
        rate = settings.stream_max_events_per_second
        self._events = TokenBucket(rate, rate, now)
        self._audio = TokenBucket(settings.stream_max_audio_per_second, settings.stream_audio_burst_seconds, now)
        # An append's base64 and its JSON around it; anything larger is refused unread.
        self.max_chars = settings.stream_max_frame_bytes * 4 // 3 + 4096

    def refusal(self, chars: int, bytes_per_second: int, now: float) -> tuple[str, str] | None:
        """None to let a frame of `chars` through, else the error code and message of its refusal.

        A frame is charged as the audio its size could carry in the session's format (base64 is
        4 characters per 3 bytes): an append costs what it holds, any other event almost nothing.
        """
        if chars > self.max_chars:
            return "frame_too_large", f"a frame may hold at most {self.max_chars} characters"
        if not self._events.take(1, now):
            return "rate_limit_exceeded", f"more than {self._events.rate:g} events per second: events are dropped"
        if not self._audio.take(chars * 3 / 4 / bytes_per_second, now):
            speed = self._audio.rate
            return "rate_limit_exceeded", f"audio sent faster than {speed:g} s per second: frames are dropped"
        return None


class Outbox:
    """The session's events on their way to the client, sent in order by one writer task."""

    def __init__(self, socket: Socket, send_timeout: float) -> None:
        self.socket = socket
        self.send_timeout = send_timeout
        self.stuck = asyncio.Event()  # the client stopped reading: the connection must end
        self._queue: deque[str] = deque()
        self._chars = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write())

    async def send(self, event: dict[str, Any]) -> None:
        """Queue `event` (never waits for the client)."""
        if self._closed or self.stuck.is_set():
            return
        text = json.dumps(event, ensure_ascii=False)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate got this far: send it escaped, not at all
                text = json.dumps(event)
        if self._chars + len(text) > MAX_OUTBOX_CHARS:
            self.stuck.set()
            return
        self._queue.append(text)
        self._chars += len(text)
        self._idle.clear()
        self._ready.set()

    async def _write(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            text = self._queue[0]
            try:
                await asyncio.wait_for(self.socket.send_text(text), self.send_timeout)
            except TimeoutError:
                self.stuck.set()
                return
            except _GONE:
                self._closed = True  # the client left; the reader sees it too
                self._idle.set()
                return
            except Exception:  # a defect: skip the event rather than stop sending for good
                log.exception("an event could not be sent: %s", text[:200])
            self._queue.popleft()
            self._chars -= len(text)

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close with `code`; give up after CLOSE_TIMEOUT_SECONDS."""
        self._closed = True
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        if not self.stuck.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT_SECONDS)
        await self.stop()
        with contextlib.suppress(TimeoutError, *_GONE):
            await asyncio.wait_for(self.socket.close(code, reason), max(0.1, deadline - time.monotonic()))

    async def stop(self) -> None:
        """Stop the writer; what is still queued is not sent."""
        self.abort()
        if self._writer is not None:
            await asyncio.wait({self._writer})

    def abort(self) -> None:
        """Stop the writer without waiting for it."""
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()


class _Inbox:
    """Frames the reader took in, waiting for the session: bounded by their size."""

    def __init__(self) -> None:
        self._items: deque[tuple[str | None, int]] = deque()  # (text, or None for a binary frame; size)
        self._chars = 0
        self._changed = asyncio.Condition()

    async def put(self, item: str | None, chars: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._items or self._chars + chars <= MAX_INBOX_CHARS)
            self._items.append((item, chars))
            self._chars += chars
            self._changed.notify_all()

    async def get(self) -> str | None:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item, chars = self._items.popleft()
            self._chars -= chars
            self._changed.notify_all()
            return item


class Connection:
    """Serves one session over one socket until the client leaves or a limit ends it."""

    def __init__(
        self,
        socket: Socket,
        session: RealtimeSession,
        outbox: Outbox,
        settings: StreamSettings,
        metrics: Metrics,
        draining: asyncio.Event,
        grace_seconds: float,
        opening: list[str] | None = None,
    ) -> None:
        """`opening`: client events handled before any the client sends (a client secret's session)."""
        self.socket, self.session, self.outbox = socket, session, outbox
        self.settings, self.metrics = settings, metrics
        self.draining, self.grace_seconds = draining, grace_seconds
        self._opening = opening or []
        self._ended = asyncio.Event()
        self._ending: tuple[str, str, str, int] | None = None  # (reason, error code, message, close code)
        now = time.monotonic()
        self._gate = FrameGate(settings, now)
        self._inbox = _Inbox()
        self._started = self._last_frame = now
        self._reported = -REPORT_EVERY_SECONDS

    async def run(self) -> None:
        """Serve until the end; returns with the session closed and the socket closed or left."""
        self.outbox.start()
        reader = asyncio.create_task(self._read())
        worker = asyncio.create_task(self._work())
        try:
            await self.session.start()
            for text in self._opening:
                await self.session.handle(text)
            reason = await self._watch(reader, worker)
            for task in (reader, worker):
                task.cancel()
            await asyncio.wait({reader, worker})
            self.metrics.streams_closed.labels(reason).inc()
            await self._end(reason)
        except BaseException:
            # Cancelled (the server tears the connection down): stop everything without waiting,
            # since every wait now may be cancelled again. (Waits use asyncio.wait, not gather: a
            # gather cancelled with its children raises a child's CancelledError, which anyio's
            # cancel scopes, as in Starlette's test client, do not recognise as their own.)
            for task in (reader, worker):
                task.cancel()
            self.session.abort()
            self.outbox.abort()
            raise

    def end_soon(self, reason: str, code: str, message: str, close_code: int) -> None:
        """End the stream for a reason of the route's (a key's budget spent): an `error` event with
        `code`, then a close with `close_code`; `reason` is counted in asr_streams_closed_total."""
        if self._ending is None:
            self._ending = (reason, code, message, close_code)
            self._ended.set()

    async def _watch(self, reader: asyncio.Task[None], worker: asyncio.Task[None]) -> str:
        """Wait for what ends the stream; return why (metrics.STREAM_CLOSE_REASONS)."""
        stuck = asyncio.ensure_future(self.outbox.stuck.wait())
        drain = asyncio.ensure_future(self.draining.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            while True:
                now = time.monotonic()
                age_left = self.settings.stream_max_seconds - (now - self._started)
                idle_left = self.settings.stream_idle_seconds - (now - self._last_frame)
                if age_left <= 0:
                    return "too_long"
                if idle_left <= 0:
                    return "idle_timeout"
                done, _ = await asyncio.wait(
                    {reader, worker, stuck, drain, ended},
                    timeout=min(age_left, idle_left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stuck in done:
                    return "slow_consumer"
                if ended in done and self._ending is not None:
                    return self._ending[0]
                if drain in done:
                    return "shutting_down"
                if worker in done:
                    worker.result()  # the session never raises for a client's event: this is a defect
                if reader in done:
                    return "client"
        finally:
            stuck.cancel()
            drain.cancel()
            ended.cancel()

    async def _end(self, reason: str) -> None:
        limits, session = self.settings, self.session
        if reason == "client":
            await session.close()
            await self.outbox.stop()
            return
        if reason == "slow_consumer":
            await session.close()
            log.info("stream %s closed: its client stopped reading", session.id)
            await self.outbox.close(POLICY_VIOLATION, "slow consumer")
            return
        if reason == "shutting_down":
            # Turns already finished get the grace period; then the client is told why it ends.
            await session.finish_pending(self.grace_seconds)
            await session.error("shutting_down", "the service is shutting down; reconnect to another instance")
            code, why = SERVICE_RESTART, "service restart"
        elif self._ending is not None and reason == self._ending[0]:
            _, error, message, code = self._ending
            await session.error(error, message)
            why = message[:120]
        elif reason == "too_long":
            await session.error("session_too_long", f"a stream may last {limits.stream_max_seconds:.0f} s at most")
            code, why = POLICY_VIOLATION, "session too long"
        else:
            await session.error("idle_timeout", f"nothing received for {limits.stream_idle_seconds:.0f} s")
            code, why = NORMAL, "idle timeout"
        await session.close()
        await self.outbox.close(code, why)

    async def _read(self) -> None:
        """Take frames in as they come (returns when the client leaves)."""
        while True:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            now = self._last_frame = time.monotonic()
            text: str | None = message.get("text")
            chars = len(text) if text is not None else len(message.get("bytes") or b"")
            refusal = self._gate.refusal(chars, self.session.input_bytes_per_second(), now)
            if refusal is None:
                await self._inbox.put(text, chars)
                continue
            code, why = refusal
            self.metrics.stream_events_rejected.labels("invalid" if code == "frame_too_large" else "rate_limited").inc()
            if code == "frame_too_large" or now - self._reported >= REPORT_EVERY_SECONDS:
                self._reported = now
                await self.session.error(code, why)

    async def _work(self) -> None:
        while True:
            text = await self._inbox.get()
            if text is None:
                self.metrics.stream_events_rejected.labels("invalid").inc()
                await self.session.error(
                    "binary_frames_unsupported", "send JSON text events (audio as base64 in an append)"
                )
            else:
                await self.session.handle(text)
