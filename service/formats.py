"""Render a transcription as json, verbose_json, text, srt or vtt (ours and OpenAI's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from service.languages import language_name

if TYPE_CHECKING:
    from service.backends.base import Segment, Transcript

ResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "verbose_json", "text", "srt", "vtt")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


# Below this much audio a real-time factor says more about fixed costs than about speed (a
# one-sample file once reported an RTF of 7735): it is reported as null and not measured.
MIN_RTF_AUDIO_SECONDS = 1.0


@dataclass
class Result:
    """A transcript with what the service measured and noticed about it."""

    transcript: Transcript
    backend: str
    model: str
    processing_seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def rtf(self) -> float | None:
        """Engine seconds per audio second; None for audio shorter than MIN_RTF_AUDIO_SECONDS."""
        duration = self.transcript.duration
        return self.processing_seconds / duration if duration >= MIN_RTF_AUDIO_SECONDS else None


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(max(seconds, 0.0) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[Segment]) -> str:
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    blocks = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def segment_json(seg: Segment, verbose: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": seg.id, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text}
    if seg.words is not None:
        out["words"] = [
            {"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word, "probability": round(w.probability, 4)}
            for w in seg.words
        ]
    if seg.emotion is not None or seg.events:
        out["emotion"] = seg.emotion
        out["events"] = seg.events
        out["language"] = seg.language
    if verbose:
        out.update(
            avg_logprob=seg.avg_logprob,
            no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio,
            temperature=seg.temperature,
            tokens=seg.tokens,
        )
    return out


def service_json(result: Result, verbose: bool) -> dict[str, Any]:
    """Our /transcribe answer."""
    t = result.transcript
    return {
        "text": t.text,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration, 3),
        "processing_seconds": round(result.processing_seconds, 3),
        "rtf": round(result.rtf, 4) if result.rtf is not None else None,
        "segments": [segment_json(s, verbose) for s in t.segments],
        "backend": result.backend,
        "model": result.model,
        "warnings": result.warnings,
    }


def _whisper_segment(s: Segment) -> dict[str, Any]:
    """A segment as openai-whisper's result dict (and OpenAI's verbose_json) has it."""
    return {
        "id": s.id,
        "seek": s.seek,
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "text": s.text,
        "tokens": s.tokens,
        "temperature": s.temperature if s.temperature is not None else 0.0,
        "avg_logprob": s.avg_logprob if s.avg_logprob is not None else 0.0,
        "compression_ratio": s.compression_ratio if s.compression_ratio is not None else 0.0,
        "no_speech_prob": s.no_speech_prob if s.no_speech_prob is not None else 0.0,
    }


def usage(result: Result) -> dict[str, Any]:
    """OpenAI's usage object for models billed by audio duration."""
    return {"type": "duration", "seconds": round(result.transcript.duration, 3)}


def openai_json(result: Result, task: str, verbose: bool, words: bool) -> dict[str, Any]:
    """OpenAI's /v1/audio/transcriptions (and translations) JSON shapes.

    A translation's language is its output's, English, as OpenAI reports it."""
    t = result.transcript
    if not verbose:
        return {"text": t.text, "usage": usage(result)}
    out: dict[str, Any] = {
        "task": task,
        "language": "english" if task == "translate" else language_name(t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [_whisper_segment(s) for s in t.segments],
        "usage": usage(result),
    }
    if words:
        out["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in t.segments
            for w in s.words or []
        ]
    return out


def to_tsv(segments: list[Segment]) -> str:
    """Tab-separated start and end in integer milliseconds, and the text (whisper's tsv writer)."""
    rows = ["start\tend\ttext"]
    rows += [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.strip().replace(chr(9), ' ')}" for s in segments]
    return "\n".join(rows) + "\n"


def whisper_json(result: Result) -> dict[str, Any]:
    """openai-whisper's result dict: text, segments (with words when there are), language code."""
    t = result.transcript
    segments = []
    for s in t.segments:
        item = _whisper_segment(s)
        if s.words is not None:
            item["words"] = [
                {
                    "word": w.word,
                    "start": round(w.start, 3),
                    "end": round(w.end, 3),
                    "probability": round(w.probability, 4),
                }
                for w in s.words
            ]
        segments.append(item)
    return {"text": t.text, "segments": segments, "language": t.language}


def render_text(result: Result, fmt: str) -> str:
    """The plain-text formats, shared by both APIs."""
    if fmt == "srt":
        return to_srt(result.transcript.segments)
    if fmt == "vtt":
        return to_vtt(result.transcript.segments)
    return result.transcript.text + "\n"
