"""The JSON shapes of the service's answers, as pydantic models, so /docs shows every one.

Transcriptions come in three dialects: ours (/transcribe, jobs, the CLI), OpenAI's
(/v1/audio/*, field for field what the `openai` package's types parse) and openai-whisper's
result dict (whisper-asr-webservice's `/asr?output=json`). Each model has a `build` that makes it
from a `Result`; optional fields a dialect leaves out when empty are left unset and dropped by
`body()` (`exclude_unset`), so the answers keep their exact shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.formats import Result
from service.languages import language_name

# ---- errors ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: queue_full, unsupported_media, invalid_parameter, ...")
    message: str = Field(description="What was wrong, for a person.")
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(None, description="The request field at fault, when one is.")


class ErrorResponse(BaseModel):
    """Every error answer (OpenAI's shape, which its client parses)."""

    error: ErrorDetail


class Answer(BaseModel):
    """Base of the answer models: `body()` is the JSON-ready dict, without the fields left unset."""

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# ---- ours -----------------------------------------------------------------------------------


class WordOut(Answer):
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = Field(None, description="Who said it, with diarize.")

    @classmethod
    def of(cls, w: Any) -> WordOut:
        extra = {"speaker": w.speaker} if w.speaker is not None else {}
        return cls(
            start=round(w.start, 3), end=round(w.end, 3), word=w.word, probability=round(w.probability, 4), **extra
        )


class SegmentOut(Answer):
    id: int
    start: float
    end: float
    text: str
    words: list[WordOut] | None = Field(None, description="With word_timestamps.")
    emotion: str | None = Field(None, description="SenseVoice: the segment's emotion.")
    events: list[str] | None = Field(None, description="SenseVoice: sound events heard in the segment.")
    language: str | None = Field(None, description="SenseVoice: the segment's own language.")
    speaker: str | None = Field(None, description="Who said it (A, B, ... or a known speaker's name), with diarize.")
    avg_logprob: float | None = Field(None, description="verbose_json only.")
    no_speech_prob: float | None = Field(None, description="verbose_json only.")
    compression_ratio: float | None = Field(None, description="verbose_json only.")
    temperature: float | None = Field(None, description="verbose_json only.")
    tokens: list[int] | None = Field(None, description="verbose_json only.")


class Transcription(Answer):
    """Our answer: the text, what the service measured, and what it noticed (`warnings`)."""

    text: str
    language: str
    language_probability: float
    duration: float = Field(description="Seconds of audio.")
    processing_seconds: float = Field(description="Engine seconds.")
    rtf: float | None = Field(description="Engine seconds per audio second; null for audio under 1 s.")
    segments: list[SegmentOut]
    backend: str
    model: str
    warnings: list[str] = Field(description="E.g. a suspected hallucination, a truncated file.")
    raw_text: str | None = Field(None, description="SenseVoice's tagged output, with rich_output.")
    speakers: list[str] | None = Field(None, description="With diarize: the speakers, in the order they first speak.")

    @classmethod
    def build(cls, result: Result, verbose: bool, raw_text: bool = False) -> Transcription:
        t = result.transcript
        extra: dict[str, Any] = {"raw_text": t.raw_text} if raw_text else {}
        if any(s.speaker is not None for s in t.segments):
            extra["speakers"] = speakers_of(t.segments)
        return cls(
            text=t.text,
            language=t.language,
            language_probability=round(t.language_probability, 4),
            duration=round(t.duration, 3),
            processing_seconds=round(result.processing_seconds, 3),
            rtf=round(result.rtf, 4) if result.rtf is not None else None,
            segments=[segment_out(s, verbose) for s in t.segments],
            backend=result.backend,
            model=result.model,
            warnings=result.warnings,
            **extra,
        )


class JobTranscription(Transcription):
    """A finished job's result: our transcription with the job's id."""

    id: str

    @classmethod
    def of_job(cls, job_id: str, result: Result, verbose: bool) -> JobTranscription:
        return cls(id=job_id, **Transcription.build(result, verbose).model_dump(exclude_unset=True))


def segment_out(seg: Any, verbose: bool) -> SegmentOut:
    """One of our segments (a backends.base.Segment) as it is answered."""
    fields: dict[str, Any] = {"id": seg.id, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text}
    if seg.words is not None:
        fields["words"] = [WordOut.of(w) for w in seg.words]
    if seg.emotion is not None or seg.events:
        fields.update(emotion=seg.emotion, events=seg.events, language=seg.language)
    if seg.speaker is not None:
        fields["speaker"] = seg.speaker
    if verbose:
        fields.update(
            avg_logprob=seg.avg_logprob,
            no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio,
            temperature=seg.temperature,
            tokens=seg.tokens,
        )
    return SegmentOut(**fields)


# ---- OpenAI's --------------------------------------------------------------------------------


class Usage(Answer):
    """OpenAI's usage for models billed by audio duration."""

    type: Literal["duration"] = "duration"
    seconds: float

    @classmethod
    def of(cls, result: Result) -> Usage:
        return cls(type="duration", seconds=round(result.transcript.duration, 3))


class OpenAILogprob(Answer):
    """One text token and its log probability, as OpenAI's `include[]=logprobs` has it."""

    token: str = Field(description="The token as Whisper wrote it; a word's first token has its leading space.")
    bytes: list[int] = Field(description="The token's UTF-8 bytes (they join into the text's).")
    logprob: float = Field(description="Natural log of the probability the decoder gave the token (<= 0).")

    @classmethod
    def of(cls, segments: list[Any]) -> list[OpenAILogprob]:
        """The tokens of `segments` (backends.base.Segment) in order; segments without them add none."""
        return [
            cls(token=lp.token, bytes=list(lp.data), logprob=lp.logprob) for s in segments for lp in s.logprobs or []
        ]


class OpenAITranscription(Answer):
    """OpenAI's `json` answer."""

    text: str
    usage: Usage
    logprobs: list[OpenAILogprob] | None = Field(
        None, description="With include[]=logprobs: each text token's log probability (docs/models.md)."
    )


class WhisperSegment(Answer):
    """A segment as openai-whisper's result dict (and OpenAI's verbose_json) has it."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[WordOut] | None = Field(None, description="openai-whisper's dict only, with word timestamps.")

    @classmethod
    def of(cls, s: Any, words: bool = False) -> WhisperSegment:
        extra: dict[str, Any] = {}
        if words and s.words is not None:
            extra["words"] = [
                WordOut(start=round(w.start, 3), end=round(w.end, 3), word=w.word, probability=round(w.probability, 4))
                for w in s.words
            ]
        return cls(
            id=s.id,
            seek=s.seek,
            start=round(s.start, 3),
            end=round(s.end, 3),
            text=s.text,
            tokens=s.tokens,
            temperature=s.temperature if s.temperature is not None else 0.0,
            avg_logprob=s.avg_logprob if s.avg_logprob is not None else 0.0,
            compression_ratio=s.compression_ratio if s.compression_ratio is not None else 0.0,
            no_speech_prob=s.no_speech_prob if s.no_speech_prob is not None else 0.0,
            **extra,
        )


class OpenAIWord(Answer):
    word: str
    start: float
    end: float
    probability: float = Field(description="Ours, beyond OpenAI's fields: the mean probability of the word's tokens.")


class OpenAIVerboseTranscription(Answer):
    """OpenAI's `verbose_json` answer. A translation's language is its output's, English."""

    task: Literal["transcribe", "translate"]
    language: str = Field(description="The language's English name, as OpenAI reports it.")
    duration: float
    text: str
    segments: list[WhisperSegment]
    usage: Usage
    words: list[OpenAIWord] | None = Field(None, description="With timestamp_granularities[]=word.")

    @classmethod
    def build(cls, result: Result, task: Literal["transcribe", "translate"], words: bool) -> OpenAIVerboseTranscription:
        t = result.transcript
        extra: dict[str, Any] = {}
        if words:
            extra["words"] = [
                OpenAIWord(
                    word=w.word.strip(),
                    start=round(w.start, 3),
                    end=round(w.end, 3),
                    probability=round(w.probability, 4),
                )
                for s in t.segments
                for w in s.words or []
            ]
        return cls(
            task=task,
            language="english" if task == "translate" else language_name(t.language),
            duration=round(t.duration, 3),
            text=t.text,
            segments=[WhisperSegment.of(s) for s in t.segments],
            usage=Usage.of(result),
            **extra,
        )


class OpenAIDiarizedSegment(Answer):
    """A segment of OpenAI's `diarized_json`, also the `transcript.text.segment` stream event."""

    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    id: str
    start: float
    end: float
    speaker: str = Field(description="A known speaker's name where a reference matched, else A, B, ...")
    text: str

    @classmethod
    def of(cls, s: Any) -> OpenAIDiarizedSegment:
        return cls(
            type="transcript.text.segment",
            id=f"seg_{s.id}",
            start=round(s.start, 3),
            end=round(s.end, 3),
            speaker=s.speaker or "A",
            text=s.text,
        )


class OpenAIDiarizedTranscription(Answer):
    """OpenAI's `diarized_json` answer (its client's TranscriptionDiarized)."""

    task: Literal["transcribe"] = "transcribe"
    duration: float
    text: str
    segments: list[OpenAIDiarizedSegment]
    usage: Usage

    @classmethod
    def build(cls, result: Result) -> OpenAIDiarizedTranscription:
        t = result.transcript
        return cls(
            task="transcribe",
            duration=round(t.duration, 3),
            text=t.text,
            segments=[OpenAIDiarizedSegment.of(s) for s in t.segments],
            usage=Usage.of(result),
        )


def speakers_of(segments: Any) -> list[str]:
    """The speakers of diarized segments, in the order they first speak."""
    return list(dict.fromkeys(s.speaker for s in segments if s.speaker is not None))


def openai_answer(
    result: Result, task: Literal["transcribe", "translate"], verbose: bool, words: bool, logprobs: bool = False
) -> OpenAITranscription | OpenAIVerboseTranscription:
    """OpenAI's /v1/audio/transcriptions (and translations) JSON shapes; `logprobs` only in `json`."""
    if verbose:
        return OpenAIVerboseTranscription.build(result, task, words)
    t = result.transcript
    extra = {"logprobs": OpenAILogprob.of(t.segments)} if logprobs else {}
    return OpenAITranscription(text=t.text, usage=Usage.of(result), **extra)


class ModelCard(Answer):
    """OpenAI's model object, and its state here (docs/models.md)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = Field(description="The engine: faster-whisper, openai-whisper or sensevoice.")
    state: Literal["unloaded", "loading", "ready", "unloading", "failed"]
    aliases: list[str] = Field(description="Other names requests may use for it.")
    preload: bool = Field(description="Loaded at startup; readiness waits for it.")
    ttl_seconds: float | None = Field(description="Unloaded after this long unused; null: never.")
    memory_bytes: int | None = Field(description="What loading it added to the process, while loaded.")
    load_seconds: float | None = Field(description="How long its last load (with warm-up) took.")
    in_flight: int = Field(description="Requests using it now.")


class ModelList(Answer):
    """OpenAI's model list: every configured model, loaded or not."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- openai-whisper's / whisper-asr-webservice's ----------------------------------------------


class WhisperResult(Answer):
    """openai-whisper's result dict: text, segments (with words when there are), language code."""

    text: str
    segments: list[WhisperSegment]
    language: str

    @classmethod
    def build(cls, result: Result) -> WhisperResult:
        t = result.transcript
        return cls(text=t.text, segments=[WhisperSegment.of(s, words=True) for s in t.segments], language=t.language)


class DetectedLanguage(Answer):
    detected_language: str = Field(description="The language's English name.")
    language_code: str
    confidence: float


# ---- health ----------------------------------------------------------------------------------


class Liveness(Answer):
    status: Literal["ok"] = "ok"


class Readiness(Answer):
    status: Literal["ready", "loading", "failed", "draining"]
    backend: str | None = None
    model: str | None = None
    device: str | None = None
    error: str | None = Field(None, description="Why the model failed to load (in full for the admin).")
