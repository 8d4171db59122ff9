"""One live transcription session: turns, and their partial and final decodes through the pipeline.

The protocol is OpenAI's Realtime protocol for transcription; its client events and the
session's configuration are typed in service.streaming.events, the input audio is held by
service.streaming.buffer. Client events: `session.update`, `input_audio_buffer.append` (base64
audio), `.commit`, `.clear`. Server events: `session.created` / `session.updated`,
`input_audio_buffer.speech_started` / `speech_stopped` / `committed` / `cleared`,
`conversation.item.input_audio_transcription.delta` (partial text while the speaker talks, never
taken back: service.streaming.partials says which words are safe), `.completed` (the turn's final
text, with usage; SenseVoice adds its emotion and events) or `.failed`, and `error` for anything
the client got wrong (the session goes on). With the session's `include` of
item.input_audio_transcription.logprobs, deltas and `completed` carry their tokens' `logprobs`
(service.streaming.logprobs); `transcription.keywords` steer every decode, partial and final.
Ours: with `audio.input.transcription.speakers: true`, each `.completed` turn has a `speaker` (A,
B, ...): its main voice, matched against the voices heard so far in the session.

Turns come from server VAD (Silero, service.streaming.vad; `semantic_vad` is served by it too,
with a silence length from its eagerness) or, with `turn_detection: null`, from the client's
commits (the default for models without server turn detection, CLIENT_TURN_MODELS). A client
that commits itself while server VAD is on may commit right after the VAD did: that commit is
answered with the turn the VAD just committed, not an error (such clients treat
`input_audio_buffer_commit_empty` as fatal). At most ASR_STREAM_MAX_PENDING_TURNS finished turns
wait for their final decode; past that a commit is refused and a VAD turn fails at once.

Every decode goes through Pipeline.transcribe: partial hypotheses at STREAM priority (at most one
in flight per stream, never more than workers - 1 workers for all streams), finished turns at
INTERACTIVE priority, in order, each holding an admission place like a file request; a completed
turn may be sampled for the quality loop. A partial decodes the turn's audio since its cut (the
turn's start, until the turn grows long: service.streaming.partials), as a draft (one cheap pass,
TranscribeOptions.draft), at ASR_STREAM_PARTIAL_BEAM_SIZE, on ASR_STREAM_PARTIAL_MODEL when one is
named, with the session's recent text and the turn's confirmed words before the cut as its
prompt. A finished turn is decoded whole at the session's beam, with the session's recent text
(its last ASR_STREAM_CONTEXT_CHARS characters) as the prompt, so that each turn is heard in
context; the context is forgotten when a turn's final looks like a hallucination, so that one
invented line does not prompt the next.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.audio import DecodedAudio
from service.backends.base import SAMPLE_RATE
from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.errors import ModelNotFoundError, ServiceError
from service.languages import normalize_language
from service.pipeline import RequestOptions, Work
from service.quality.hallucination import has_repetition
from service.scheduler import Preempted, Priority
from service.speakers.linking import Roster, Voice
from service.streaming.audio_in import AudioInput, BadAudioError
from service.streaming.buffer import InputBuffer
from service.streaming.events import (
    AppendEvent,
    ClearEvent,
    ClientEventError,
    CommitEvent,
    SessionConfig,
    SessionUpdate,
    SessionUpdateEvent,
    Transcription,
    format_rate,
    parse_event,
)
from service.streaming.logprobs import all_logprobs, word_logprobs
from service.streaming.partials import Heard, Partials
from service.streaming.vad import WINDOW, StreamingVad, VadEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import numpy as np
    import numpy.typing as npt

    from service.backends.base import Transcript
    from service.config import StreamSettings
    from service.metrics import Metrics
    from service.outcome import Outcome
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)
RATE = SAMPLE_RATE
MIN_COMMIT_SECONDS = 0.1  # as OpenAI: a commit of less audio is an error
MAX_ECHO = 300  # characters of a message or param sent back in an error event


def rejection_reason(code: str) -> str:
    """The asr_stream_events_rejected_total reason (metrics.STREAM_EVENT_REJECTIONS) of an error code."""
    if code == "rate_limit_exceeded":
        return "rate_limited"
    if code == "too_many_pending_turns":
        return "turns_pending"
    if code.startswith("unsupported_") or code == "unknown_event":
        return "unsupported"
    return "invalid"


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass
class Turn:
    item_id: str
    start: int  # first sample, from the session's start
    speech_started_at: float  # wall clock, for the time to the first partial
    partials: Partials
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
        self._prompts = backend.capabilities.prompt
        self._context = ""  # the session's recent final text: the next turn's prompt
        self.config = SessionConfig(id=self.id)
        self.config.input.transcription.model = pipeline.resolve_model(None)  # the default entry's id
        self._input = AudioInput("audio/pcm", 24_000)
        self._vad: StreamingVad | None = self._make_vad()
        self._buffer = InputBuffer()
        self._turn: Turn | None = None
        self._last_item: str | None = None
        self._committed: dict[str, Any] | None = None  # the last VAD commit, until the client commits
        self._detection_chosen = False  # the client named a turn_detection: no model default applies
        self._finals: asyncio.Queue[tuple[Turn, npt.NDArray[np.float32], float] | None] = asyncio.Queue()
        self._pending = 0  # finished turns queued or in their final decode
        self._finals_task = asyncio.create_task(self._finalise_turns())
        self._tokens: set[CancelToken] = set()
        self._overflow_reported = False
        self._background: set[asyncio.Task[Any]] = set()
        self._voices: Roster | None = None  # the speakers heard so far, with transcription.speakers
        self.closed = False

    # ---- the protocol -------------------------------------------------------------------

    def input_bytes_per_second(self) -> int:
        """Bytes of one second of audio in the session's input format (PCM16: 2 per sample)."""
        return self._input.bytes_per_second()

    async def start(self) -> None:
        await self._send("session.created", session=self.config.body())

    async def handle(self, text: str) -> None:
        """Act on one client event (a JSON text frame); whatever it holds, the session goes on."""
        try:
            event = parse_event(text)
            try:
                await self._dispatch(event)
            except ClientEventError as exc:
                exc.event_id = event.event_id
                raise
        except ClientEventError as exc:
            self.metrics.stream_events_rejected.labels(rejection_reason(exc.code)).inc()
            await self.error(exc.code, exc.message, exc.param, exc.event_id)
        except Exception:
            # A defect, not the client's fault; the fuzz test (tests/test_streaming_fuzz.py) looks for these.
            log.exception("stream %s: a client event failed", self.id)
            await self.error("server_error", "the service failed on this event; the session goes on")

    async def _dispatch(self, event: SessionUpdateEvent | AppendEvent | CommitEvent | ClearEvent) -> None:
        match event:
            case SessionUpdateEvent():
                await self._update(event.session)
            case AppendEvent():
                await self._append(event.audio)
            case CommitEvent():
                await self._commit_manually()
            case ClearEvent():
                self._clear()
                await self._send("input_audio_buffer.cleared")

    async def error(self, code: str, message: str, param: str | None = None, event_id: str | None = None) -> None:
        """Send an `error` event; what it echoes of the client's input is bounded."""
        server = code in ("too_many_streams", "shutting_down", "server_error")
        kind = "server_error" if server else "invalid_request_error"
        error = {
            "type": kind,
            "code": code,
            "message": message[:MAX_ECHO],
            "param": param[:MAX_ECHO] if param else param,
            "event_id": event_id,
        }
        await self._send("error", error=error)

    async def close(self) -> None:
        """Stop everything the session runs (the client left, or the service is going away)."""
        self.abort()
        await asyncio.wait({self._finals_task})

    def abort(self) -> None:
        """Stop everything the session runs, without waiting for it to stop."""
        self.closed = True
        for token in list(self._tokens):
            token.cancel(CLIENT_DISCONNECTED)
        if self._turn is not None and self._turn.partial is not None:
            self._turn.partial.cancel()
        self._finals_task.cancel()

    async def finish_pending(self, seconds: float) -> None:
        """Wait up to `seconds` for finished turns still being transcribed (draining)."""
        await self._finals.put(None)
        await asyncio.wait({self._finals_task}, timeout=seconds)

    async def _send(self, kind: str, **fields: Any) -> None:
        if not self.closed:
            await self._send_event({"event_id": _id("event"), "type": kind, **fields})

    # ---- session.update -----------------------------------------------------------------

    async def _update(self, update: SessionUpdate) -> None:
        config = self.config.updated(update, default_detection=not self._detection_chosen)
        given = update.audio.input if update.audio is not None else None
        fields = given.model_fields_set if given is not None else set()
        if "transcription" in fields or config.include != self.config.include:
            try:
                self.pipeline.check_options(self._options(config))
            except ModelNotFoundError as exc:
                raise ClientEventError(exc.code, exc.message, "session.audio.input.transcription.model") from None
            except ServiceError as exc:
                if exc.param == "include":  # an engine without token scores
                    raise ClientEventError(exc.code, exc.message, "session.include") from None
                where = "session.audio.input.transcription" + (".keywords" if exc.param == "keywords" else "")
                raise ClientEventError("invalid_transcription", exc.message, where) from None
        detection_changed = config.input.turn_detection != self.config.input.turn_detection
        self.config = config
        self._detection_chosen = self._detection_chosen or "turn_detection" in fields
        if "format" in fields:
            if self._buffer.size or self._buffer.received:
                self._clear()  # a new format starts a new buffer
            self._input = AudioInput(config.input.format.type, format_rate(config.input.format))
        if "turn_detection" in fields or detection_changed:
            self._vad = self._make_vad()
        await self._send("session.updated", session=self.config.body())

    def _make_vad(self) -> StreamingVad | None:
        detection = self.config.input.turn_detection
        if detection is None:
            return None
        return StreamingVad(
            detection.threshold,
            detection.prefix_padding_ms,
            detection.silence_duration_ms,
            self.settings.stream_max_turn_seconds,
        )

    def _options(self, config: SessionConfig, turn: Turn | None = None) -> RequestOptions:
        """A decode's options under `config`: a turn's partial (`turn` given) or final, with its prompt."""
        transcription = config.input.transcription
        language = normalize_language(transcription.language) if transcription.language is not None else None
        partial = turn is not None
        context = " ".join(t for t in (self._context, turn.partials.prompt if turn else "") if t)
        client = transcription.prompt
        prompt = client
        if context and self._prompts:
            prompt = f"{client} {context}" if client else context
        return RequestOptions(
            language=language,
            prompt=prompt or None,
            # Only our own context may be shortened (to share batched calls), never a client's prompt.
            prompt_is_context=not client,
            beam_size=(self.settings.stream_partial_beam_size or None) if partial else None,
            # The session's model by id or alias (service.models); turns keep to it. Partials may
            # come from the draft model.
            model=self._partial_model(transcription, language) if partial else transcription.model,
            draft=partial,
            word_timestamps=partial,
            keywords=tuple(transcription.keywords or ()),
            logprobs=bool(config.include),
            # Ours: who spoke each completed turn (`transcription.speakers: true`); partials never.
            diarize=bool(transcription.speakers) and not partial,
        )

    def _partial_model(self, transcription: Transcription, language: str | None) -> str | None:
        """ASR_STREAM_PARTIAL_MODEL, unless it does not know the session's language."""
        draft = self.settings.stream_partial_model
        if draft is None:
            return transcription.model
        try:
            languages = self.pipeline.model(draft).capabilities.languages
        except ServiceError:  # not loaded (yet): the partial loads it on demand
            return draft
        return draft if language is None or language in languages else transcription.model

    # ---- audio --------------------------------------------------------------------------

    async def _append(self, audio: str) -> None:
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
        now = time.monotonic()
        self._buffer.append(samples, now)
        if self._vad is not None:
            vad = self._vad
            for event in await asyncio.to_thread(vad.feed, samples):
                if event.kind == "start":
                    await self._speech_started(event.sample, now)
                else:
                    await self._speech_stopped(event)
            if self._turn is None:
                # Keep enough for the next turn's padding: its start is found up to a window late.
                self._buffer.trim(self._buffer.received - max(RATE, vad.prefix + 2 * WINDOW))
        else:
            if self._turn is None:
                self._turn = self._new_turn(self._buffer.start, now)
            self._limit_buffer()
        self._maybe_partial()

    def _limit_buffer(self) -> None:
        excess = self._buffer.size - int(self.settings.stream_max_buffer_seconds * RATE)
        if excess > 0:
            self.metrics.stream_dropped_audio.labels("buffer_full").inc(excess / RATE)
            self._buffer.trim(self._buffer.start + excess)
            if self._turn is not None:
                self._turn.start = max(self._turn.start, self._buffer.start)
            if not self._overflow_reported:
                self._overflow_reported = True
                self._in_background(
                    self.error(
                        "input_audio_buffer_full",
                        f"more than {self.settings.stream_max_buffer_seconds:.0f} s uncommitted: the oldest audio "
                        "was dropped; commit turns (or use server_vad)",
                    )
                )

    def _new_turn(self, start: int, now: float) -> Turn:
        s = self.settings
        return Turn(_id("item"), start, now, Partials(s.stream_partial_agreement, s.stream_partial_stable_seconds))

    def _clear(self) -> None:
        if self._turn is not None and self._turn.partial is not None:
            self._turn.partial.cancel()
        self._turn = None
        self._buffer.clear()
        self._overflow_reported = False
        self._vad = self._make_vad()

    # ---- turns --------------------------------------------------------------------------

    async def _speech_started(self, sample: int, now: float) -> None:
        self._turn = self._new_turn(max(sample, self._buffer.start), now)
        await self._send(
            "input_audio_buffer.speech_started", audio_start_ms=sample * 1000 // RATE, item_id=self._turn.item_id
        )

    async def _speech_stopped(self, event: VadEvent) -> None:
        turn = self._turn
        if turn is None:
            return
        await self._send(
            "input_audio_buffer.speech_stopped", audio_end_ms=event.sample * 1000 // RATE, item_id=turn.item_id
        )
        # The turn's audio goes on past the speech (event.until), so that a soft ending is not cut.
        await self._commit(turn, event.until, self._buffer.arrived(event.sample), by_vad=True)

    async def _commit_manually(self) -> None:
        turn = self._turn
        if turn is None or (self._buffer.received - turn.start) / RATE < MIN_COMMIT_SECONDS:
            if self._committed is not None:
                # The VAD committed this turn a moment ago: the client's own commit means the same one.
                await self._send("input_audio_buffer.committed", **self._committed)
                self._committed = None
                return
            raise ClientEventError(
                "input_audio_buffer_commit_empty", f"the buffer holds less than {MIN_COMMIT_SECONDS * 1000:.0f} ms"
            )
        if self._pending >= self.settings.stream_max_pending_turns:
            # The audio stays in the buffer: a later commit takes it, once a turn has completed.
            raise ClientEventError(
                "too_many_pending_turns",
                f"{self._pending} turns are waiting for their transcription; commit again once one has completed",
            )
        await self._commit(turn, self._buffer.received, time.monotonic())

    async def _commit(self, turn: Turn, stop: int, speech_end: float, by_vad: bool = False) -> None:
        """The turn is over: answer `committed`, and queue its final transcription."""
        turn.final = True
        if turn.partial is not None:
            turn.partial.cancel()
        committed = {"item_id": turn.item_id, "previous_item_id": self._last_item}
        await self._send("input_audio_buffer.committed", **committed)
        self._committed = committed if by_vad else None
        self._last_item = turn.item_id
        audio = self._buffer.slice(turn.start, stop)
        self._turn = None
        self._buffer.trim(stop)
        self._overflow_reported = False
        if self._pending >= self.settings.stream_max_pending_turns:
            # Only the VAD gets here (a client's commit is refused before): the turn fails at once.
            self.metrics.stream_dropped_audio.labels("turns_pending").inc(audio.size / RATE)
            error = {
                "type": "server_error",
                "code": "too_many_pending_turns",
                "message": f"{self._pending} turns are waiting for their transcription; this one was dropped",
            }
            await self._send(
                "conversation.item.input_audio_transcription.failed", item_id=turn.item_id, content_index=0, error=error
            )
            return
        self._pending += 1
        await self._finals.put((turn, audio, speech_end))

    def _maybe_partial(self) -> None:
        turn = self._turn
        received = self._buffer.received
        if (
            turn is None
            or not self._partials
            or (turn.partial is not None and not turn.partial.done())
            or (self._vad is not None and not self._vad.speaking)
            or received - max(turn.partial_from, turn.start) < self.settings.stream_partial_seconds * RATE
        ):
            return
        turn.partial_from = received
        # The audio since the cut (service.streaming.partials): a partial's cost stays bounded.
        start = turn.start + round(turn.partials.cut * RATE)
        audio = self._buffer.slice(start, received)
        turn.partial = asyncio.create_task(self._partial(turn, audio, (start - turn.start) / RATE))

    async def _partial(self, turn: Turn, audio: npt.NDArray[np.float32], offset: float) -> None:
        token = CancelToken()
        self._tokens.add(token)
        work = Work(
            self._options(self.config, turn),
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
        transcript = outcome.result.transcript
        delta = turn.partials.update(_heard(transcript, offset), offset + audio.size / RATE)
        if delta:
            if not turn.first_partial_sent:
                turn.first_partial_sent = True
                self.metrics.stream_first_partial.observe(time.monotonic() - turn.speech_started_at)
            await self._send(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=delta,
                **self._delta_logprobs(transcript, *turn.partials.sent_range),
            )

    async def _finalise_turns(self) -> None:
        """Transcribe finished turns one after another, so that their answers come in order."""
        while (item := await self._finals.get()) is not None:
            turn, audio, speech_end = item
            try:
                await self._finalise(turn, audio, speech_end)
            finally:
                self._pending -= 1

    async def _finalise(self, turn: Turn, audio: npt.NDArray[np.float32], speech_end: float) -> None:
        token = CancelToken()
        self._tokens.add(token)
        work = Work(
            self._options(self.config),
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
        self._remember(transcript.text, outcome.flags)
        sent = len(turn.partials.sent)
        rest, revised = turn.partials.finish(transcript.text)
        if revised:
            self.metrics.stream_revisions.inc()
        elif rest:
            await self._send(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=rest,
                **self._delta_logprobs(transcript, sent, len(turn.partials.sent)),
            )
        await self._send(
            "conversation.item.input_audio_transcription.completed",
            item_id=turn.item_id,
            content_index=0,
            transcript=transcript.text,
            usage={"type": "duration", "seconds": round(transcript.duration, 3)},
            **({"logprobs": all_logprobs(transcript)} if self.config.include else {}),
            **_extras(outcome),
            **self._speaker_of(outcome),
        )
        self.metrics.stream_finalisation.observe(time.monotonic() - speech_end)
        self._in_background(self.pipeline.keep_sample(outcome, turn.item_id))

    def _remember(self, text: str, flags: list[str]) -> None:
        """Keep the session's recent text for the next turn's prompt, or forget it when this turn
        looks like a hallucination (a repeated or invented line would prompt more of the same)."""
        chars = self.settings.stream_context_chars
        joined = f"{self._context} {text}".strip()
        if flags or has_repetition(joined) or not chars:
            self._context = ""
            return
        if len(joined) > chars:
            cut = joined.find(" ", len(joined) - chars)
            joined = joined[cut + 1 :] if cut >= 0 else joined[-chars:]
        self._context = joined

    def _delta_logprobs(self, transcript: Transcript, first: int, stop: int) -> dict[str, Any]:
        """A delta's `logprobs` (the tokens of its words, `first` to `stop`) when the session includes them."""
        return {"logprobs": word_logprobs(transcript, first, stop)} if self.config.include else {}

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


def _heard(transcript: Transcript, offset: float) -> list[Heard]:
    """A partial's words with their times from the turn's start (`offset`: where its audio began),
    one per whitespace-separated word of its text (as the final's text is compared, and logprobs
    counted): Whisper's word timings split "o'clock" into " o" and "'clock", which are joined here.
    A segment without word timings lends its words its own times."""
    words: list[Heard] = []
    for seg in transcript.segments:
        if seg.words is None:
            words += [Heard(w, seg.start + offset, seg.end + offset, 1.0) for w in seg.text.split()]
            continue
        for w in seg.words:
            if words and w.word[:1] not in ("", " ") and not w.word[:1].isspace():
                last = words[-1]
                words[-1] = Heard(last.word + w.word, last.start, w.end + offset, min(last.probability, w.probability))
            else:
                words.append(Heard(w.word.strip(), w.start + offset, w.end + offset, w.probability))
    return words


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
