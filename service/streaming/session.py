"""One live transcription session, speaking OpenAI's Realtime protocol for transcription.

Client events: `session.update`, `input_audio_buffer.append` (base64 audio), `.commit`, `.clear`.
Server events: `session.created` / `session.updated`, `input_audio_buffer.speech_started` /
`speech_stopped` / `committed` / `cleared`, `conversation.item.input_audio_transcription.delta`
(partial text while the speaker talks, only words two consecutive hypotheses agree on, never taken
back), `.completed` (the turn's final text, with usage; SenseVoice adds its emotion and events) or
`.failed`, and `error` for anything the client got wrong (the session goes on). Ours: with
`audio.input.transcription.speakers: true`, each `.completed` turn has a `speaker` (A, B, ...): its
main voice, matched against the voices heard so far in the session.

Turns come from server VAD (Silero, service.streaming.vad) or, with `turn_detection: null`, from
the client's commits. Every decode goes through Pipeline.transcribe: partial hypotheses at STREAM
priority (at most one in flight per stream, never more than workers - 1 workers for all
streams), finished turns at INTERACTIVE priority, in order, each holding an admission place like a
file request; a completed turn may be sampled for the quality loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.audio import DecodedAudio
from service.backends.base import SAMPLE_RATE
from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.errors import ServiceError
from service.languages import normalize_language
from service.pipeline import RequestOptions, Work
from service.scheduler import Preempted, Priority
from service.speakers.linking import Roster, Voice
from service.streaming.audio_in import PCM_RATES, AudioInput, BadAudioError
from service.streaming.stabilizer import Stabilizer
from service.streaming.vad import StreamingVad

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import numpy.typing as npt

    from service.config import StreamSettings
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
RATE = SAMPLE_RATE
MIN_COMMIT_SECONDS = 0.1  # as OpenAI: a commit of less audio is an error
FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ClientEventError(Exception):
    """A client event the session cannot act on; answered with an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class Turn:
    item_id: str
    start: int  # first sample, from the session's start
    speech_started_at: float  # wall clock, for the time to the first partial
    stabilizer: Stabilizer
    partial_from: int = 0  # samples received when the last partial began
    partial: asyncio.Task[None] | None = None
    final: bool = False
    first_partial_sent: bool = False


class RealtimeSession:
    def __init__(
        self,
        pipeline: Pipeline,
        settings: StreamSettings,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = metrics
        self._send_event = send
        self.id = _id("sess")
        backend = pipeline.model()
        self._partials = backend.capabilities.partials
        self.config: dict[str, Any] = {
            "type": "transcription",
            "id": self.id,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24_000},
                    "transcription": {"model": backend.model, "language": None, "prompt": None},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                    },
                    "noise_reduction": None,
                }
            },
        }
        self._input = AudioInput("audio/pcm", 24_000)
        self._vad: StreamingVad | None = self._make_vad()
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # sample index of the buffer's first sample
        self._received = 0
        self._arrivals: deque[tuple[int, float]] = deque()  # (samples received by then, wall clock)
        self._turn: Turn | None = None
        self._last_item: str | None = None
        self._finals: asyncio.Queue[tuple[Turn, npt.NDArray[np.float32], float] | None] = asyncio.Queue()
        self._finals_task = asyncio.create_task(self._finalise_turns())
        self._tokens: set[CancelToken] = set()
        self._overflow_reported = False
        self._background: set[asyncio.Task[Any]] = set()
        self._voices: Roster | None = None  # the speakers heard so far, with transcription.speakers
        self.closed = False

    # ---- the protocol -------------------------------------------------------------------

    async def start(self) -> None:
        await self._send("session.created", session=self.config)

    async def handle(self, text: str) -> None:
        """Act on one client event (a JSON text frame)."""
        event_id = None
        try:
            try:
                event = json.loads(text)
            except ValueError:
                raise ClientEventError("invalid_json", "the event is not valid JSON") from None
            if not isinstance(event, dict):
                raise ClientEventError("invalid_event", "an event is a JSON object with a `type`")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            if kind == "session.update":
                await self._update(event.get("session"))
            elif kind == "input_audio_buffer.append":
                await self._append(event.get("audio"))
            elif kind == "input_audio_buffer.commit":
                await self._commit_manually()
            elif kind == "input_audio_buffer.clear":
                self._clear()
                await self._send("input_audio_buffer.cleared")
            else:
                shown = str(kind)[:40] if kind is not None else "none"
                raise ClientEventError("unknown_event", f"unknown or unsupported event type {shown!r}", "type")
        except ClientEventError as exc:
            await self.error(exc.code, exc.message, exc.param, event_id)

    async def error(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        kind = "server_error" if code in ("too_many_streams", "shutting_down") else "invalid_request_error"
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        await self._send("error", error=error)

    async def close(self) -> None:
        """Stop everything the session runs (the client left, or the service is going away)."""
        self.closed = True
        for token in list(self._tokens):
            token.cancel(CLIENT_DISCONNECTED)
        await self._finals.put(None)
        self._finals_task.cancel()
        await asyncio.gather(self._finals_task, return_exceptions=True)

    async def finish_pending(self, seconds: float) -> None:
        """Wait up to `seconds` for finished turns still being transcribed (draining)."""
        await self._finals.put(None)
        await asyncio.wait({self._finals_task}, timeout=seconds)

    async def _send(self, kind: str, **fields: Any) -> None:
        if not self.closed:
            await self._send_event({"event_id": _id("event"), "type": kind, **fields})

    # ---- session.update -----------------------------------------------------------------

    async def _update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise ClientEventError("invalid_session", "session.update carries a `session` object", "session")
        if session.get("type", "transcription") != "transcription":
            raise ClientEventError(
                "unsupported_session", "only transcription sessions are served (connect with ?intent=transcription)"
            )
        current = self.config["audio"]["input"]
        given = (session.get("audio") or {}).get("input") or {}
        if not isinstance(given, dict):
            raise ClientEventError("invalid_session", "session.audio.input must be an object", "session.audio.input")
        if "format" in given:
            current["format"] = self._format(given["format"])
        if "transcription" in given:
            current["transcription"] = self._transcription(given["transcription"], current["transcription"])
        if "turn_detection" in given:
            current["turn_detection"] = self._turn_detection(given["turn_detection"])
            self._vad = self._make_vad()
        if "noise_reduction" in given:
            current["noise_reduction"] = given["noise_reduction"]
        await self._send("session.updated", session=self.config)

    def _format(self, value: Any) -> dict[str, Any]:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in FORMATS:
            raise ClientEventError("unsupported_format", f"audio formats: {', '.join(FORMATS)}", "audio.input.format")
        rate = value.get("rate", 24_000) if kind == "audio/pcm" else 8_000
        if kind == "audio/pcm" and rate not in PCM_RATES:
            raise ClientEventError("unsupported_format", "audio/pcm at 24000 or 16000 Hz", "audio.input.format.rate")
        if self._buffer.size or self._received:
            self._clear()  # a new format starts a new buffer
        self._input = AudioInput(kind, rate)
        return {"type": kind, **({"rate": rate} if kind == "audio/pcm" else {})}

    def _transcription(self, value: Any, current: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ClientEventError("invalid_session", "transcription must be an object", "audio.input.transcription")
        merged = {**current, **{k: value[k] for k in ("model", "language", "prompt", "speakers") if k in value}}
        if not isinstance(merged.get("speakers", False), bool):
            raise ClientEventError("invalid_transcription", "speakers is true or false", "audio.input.transcription")
        try:
            self.pipeline.check_options(self._options(merged))
        except ServiceError as exc:
            raise ClientEventError("invalid_transcription", exc.message, "audio.input.transcription") from None
        return merged

    def _turn_detection(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type") != "server_vad":
            raise ClientEventError(
                "unsupported_turn_detection", "turn_detection is server_vad or null", "audio.input.turn_detection"
            )
        merged = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        for key, low, high in (
            ("threshold", 0.0, 1.0),
            ("prefix_padding_ms", 0, 2000),
            ("silence_duration_ms", 100, 5000),
        ):
            if value.get(key) is not None:
                number = value[key]
                if not isinstance(number, int | float) or not low <= number <= high:
                    raise ClientEventError("invalid_turn_detection", f"{key} is between {low} and {high}", key)
                merged[key] = number
        return merged

    def _make_vad(self) -> StreamingVad | None:
        detection = self.config["audio"]["input"]["turn_detection"]
        if detection is None:
            return None
        return StreamingVad(
            detection["threshold"],
            int(detection["prefix_padding_ms"]),
            int(detection["silence_duration_ms"]),
            self.settings.stream_max_turn_seconds,
        )

    def _options(self, transcription: dict[str, Any], partial: bool = False) -> RequestOptions:
        language = transcription.get("language")
        return RequestOptions(
            language=normalize_language(language) if isinstance(language, str) else None,
            prompt=transcription.get("prompt") if isinstance(transcription.get("prompt"), str) else None,
            beam_size=(self.settings.stream_partial_beam_size or None) if partial else None,
            # Ours: who spoke each completed turn (`transcription.speakers: true`); partials never.
            diarize=bool(transcription.get("speakers")) and not partial,
        )

    # ---- audio --------------------------------------------------------------------------

    async def _append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise ClientEventError("invalid_audio", "append carries base64 audio in `audio`", "audio")
        if len(audio) > self.settings.stream_max_frame_bytes * 4 // 3 + 4:
            raise ClientEventError(
                "frame_too_large", f"one append may carry at most {self.settings.stream_max_frame_bytes} bytes", "audio"
            )
        try:
            data = base64.b64decode(audio, validate=True)
            samples = self._input.convert(data)
        except (binascii.Error, ValueError) as exc:
            message = str(exc) if isinstance(exc, BadAudioError) else "the audio is not valid base64"
            raise ClientEventError("invalid_audio", message, "audio") from None
        if samples.size == 0:
            return
        self.metrics.stream_audio.inc(samples.size / RATE)
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += samples.size
        now = time.monotonic()
        self._arrivals.append((self._received, now))
        if self._vad is not None:
            for event in await asyncio.to_thread(self._vad.feed, samples):
                if event.kind == "start":
                    await self._speech_started(event.sample, now)
                else:
                    await self._speech_stopped(event.sample)
            if self._turn is None:
                self._trim(self._received - RATE)  # keep a second for the next turn's padding
        else:
            if self._turn is None:
                self._turn = self._new_turn(self._buffer_start, now)
            self._limit_buffer()
        self._maybe_partial()

    def _limit_buffer(self) -> None:
        excess = self._buffer.size - int(self.settings.stream_max_buffer_seconds * RATE)
        if excess > 0:
            self.metrics.stream_dropped_audio.labels("buffer_full").inc(excess / RATE)
            self._trim(self._buffer_start + excess)
            if self._turn is not None:
                self._turn.start = max(self._turn.start, self._buffer_start)
            if not self._overflow_reported:
                self._overflow_reported = True
                self._in_background(
                    self.error(
                        "input_audio_buffer_full",
                        f"more than {self.settings.stream_max_buffer_seconds:.0f} s uncommitted: the oldest audio "
                        "was dropped; commit turns (or use server_vad)",
                    )
                )

    def _trim(self, before: int) -> None:
        """Forget audio before sample `before`."""
        cut = min(max(0, before - self._buffer_start), self._buffer.size)
        if cut:
            self._buffer = self._buffer[cut:]
            self._buffer_start += cut
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= self._buffer_start:
            self._arrivals.popleft()

    def _new_turn(self, start: int, now: float) -> Turn:
        return Turn(_id("item"), start, now, Stabilizer(self.settings.stream_partial_agreement))

    def _slice(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        return self._buffer[max(0, start - self._buffer_start) : max(0, stop - self._buffer_start)].copy()

    def _arrived(self, sample: int) -> float:
        """When the audio up to `sample` had arrived (wall clock)."""
        for received, at in self._arrivals:
            if received >= sample:
                return at
        return time.monotonic()

    def _clear(self) -> None:
        if self._turn is not None and self._turn.partial is not None:
            self._turn.partial.cancel()
        self._turn = None
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = self._received
        self._arrivals.clear()
        self._overflow_reported = False
        self._vad = self._make_vad()

    # ---- turns --------------------------------------------------------------------------

    async def _speech_started(self, sample: int, now: float) -> None:
        self._turn = self._new_turn(max(sample, self._buffer_start), now)
        await self._send(
            "input_audio_buffer.speech_started", audio_start_ms=sample * 1000 // RATE, item_id=self._turn.item_id
        )

    async def _speech_stopped(self, sample: int) -> None:
        turn = self._turn
        if turn is None:
            return
        await self._send("input_audio_buffer.speech_stopped", audio_end_ms=sample * 1000 // RATE, item_id=turn.item_id)
        await self._commit(turn, sample, self._arrived(sample))

    async def _commit_manually(self) -> None:
        turn = self._turn
        if turn is None or (self._received - turn.start) / RATE < MIN_COMMIT_SECONDS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty", f"the buffer holds less than {MIN_COMMIT_SECONDS * 1000:.0f} ms"
            )
        await self._commit(turn, self._received, time.monotonic())

    async def _commit(self, turn: Turn, stop: int, speech_end: float) -> None:
        """The turn is over: answer `committed`, and queue its final transcription."""
        turn.final = True
        if turn.partial is not None:
            turn.partial.cancel()
        await self._send("input_audio_buffer.committed", item_id=turn.item_id, previous_item_id=self._last_item)
        self._last_item = turn.item_id
        await self._finals.put((turn, self._slice(turn.start, stop), speech_end))
        self._turn = None
        self._trim(stop)
        self._overflow_reported = False

    def _maybe_partial(self) -> None:
        turn = self._turn
        if (
            turn is None
            or not self._partials
            or (turn.partial is not None and not turn.partial.done())
            or (self._vad is not None and not self._vad.speaking)
            or self._received - max(turn.partial_from, turn.start) < self.settings.stream_partial_seconds * RATE
        ):
            return
        turn.partial_from = self._received
        turn.partial = asyncio.create_task(self._partial(turn, self._slice(turn.start, self._received)))

    async def _partial(self, turn: Turn, audio: npt.NDArray[np.float32]) -> None:
        transcription = self.config["audio"]["input"]["transcription"]
        token = CancelToken()
        self._tokens.add(token)
        work = Work(
            self._options(transcription, partial=True),
            DecodedAudio.from_array(audio),
            priority=Priority.STREAM,
            token=token,
            observe=False,
        )
        try:
            outcome = await self.pipeline.transcribe(work)
        except (ServiceError, Preempted, asyncio.CancelledError):
            token.cancel(CLIENT_DISCONNECTED)
            return
        finally:
            self._tokens.discard(token)
        outcome.audio.close()
        if turn.final or self.closed:
            return
        delta = turn.stabilizer.update(outcome.result.transcript.text)
        if delta:
            if not turn.first_partial_sent:
                turn.first_partial_sent = True
                self.metrics.stream_first_partial.observe(time.monotonic() - turn.speech_started_at)
            await self._send(
                "conversation.item.input_audio_transcription.delta", item_id=turn.item_id, content_index=0, delta=delta
            )

    async def _finalise_turns(self) -> None:
        """Transcribe finished turns one after another, so that their answers come in order."""
        while (item := await self._finals.get()) is not None:
            turn, audio, speech_end = item
            await self._finalise(turn, audio, speech_end)

    async def _finalise(self, turn: Turn, audio: npt.NDArray[np.float32], speech_end: float) -> None:
        transcription = self.config["audio"]["input"]["transcription"]
        token = CancelToken()
        self._tokens.add(token)
        work = Work(
            self._options(transcription),
            DecodedAudio.from_array(audio),
            token=token,
            admission_wait=self.settings.stream_final_wait_seconds,
        )
        try:
            outcome = await self.pipeline.transcribe(work)
        except ServiceError as exc:
            error = {"type": "server_error", "code": exc.code, "message": exc.message}
            await self._send(
                "conversation.item.input_audio_transcription.failed", item_id=turn.item_id, content_index=0, error=error
            )
            return
        finally:
            self._tokens.discard(token)
        transcript = outcome.result.transcript
        rest, revised = turn.stabilizer.finish(transcript.text)
        if revised:
            self.metrics.stream_revisions.inc()
        elif rest:
            await self._send(
                "conversation.item.input_audio_transcription.delta", item_id=turn.item_id, content_index=0, delta=rest
            )
        await self._send(
            "conversation.item.input_audio_transcription.completed",
            item_id=turn.item_id,
            content_index=0,
            transcript=transcript.text,
            usage={"type": "duration", "seconds": round(transcript.duration, 3)},
            **_extras(outcome),
            **self._speaker_of(outcome),
        )
        self.metrics.stream_finalisation.observe(time.monotonic() - speech_end)
        self._in_background(self.pipeline.keep_sample(outcome, turn.item_id))

    def _speaker_of(self, outcome: Outcome) -> dict[str, Any]:
        """`speaker`: the turn's main voice, matched against the voices this session heard so far."""
        diarization = outcome.diarization
        if diarization is None or not diarization.speakers:
            return {}
        if self._voices is None:
            self._voices = Roster(self.pipeline.settings.diarization.match_threshold)
        main = max(diarization.speakers, key=lambda s: s.seconds)
        return {"speaker": self._voices.add([Voice(main.label, main.embedding, main.seconds)])[main.label]}

    def _in_background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _extras(outcome: Outcome) -> dict[str, Any]:
    """Beyond OpenAI's fields: the language, and SenseVoice's emotion and sound events per turn."""
    transcript = outcome.result.transcript
    extras: dict[str, Any] = {"language": transcript.language}
    emotions = [s.emotion for s in transcript.segments if s.emotion]
    events = list(dict.fromkeys(e for s in transcript.segments for e in s.events))
    if emotions or events:
        extras["emotion"] = max(set(emotions), key=emotions.count) if emotions else None
        extras["events"] = events
    return extras
