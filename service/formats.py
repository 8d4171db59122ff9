"""A transcription with what was measured (`Result`), and its text formats: text, srt, vtt, tsv.

The JSON shapes (ours, OpenAI's, openai-whisper's) are pydantic models in service.api.schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.backends.base import Segment, Transcript

# The formats a transcription is answered in, on every route that lets the client choose.
ResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt"]
# OpenAI's transcription endpoint adds its speaker-annotated JSON.
OpenAIResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "diarized_json"]
# Formats whose answer needs subtitle-sized segments (batched decoding then splits its chunks).
FINE_FORMATS = frozenset({"srt", "vtt", "verbose_json", "diarized_json"})
JSON_FORMATS = frozenset({"json", "verbose_json", "diarized_json"})
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "diarized_json": "application/json",
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
    """SubRip cues; a diarized segment's text begins with its speaker (`A: ...`)."""
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{_said(s.speaker, s.text.strip())}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    """WebVTT cues; a diarized segment's in a voice span (`<v A>...</v>`), which players show as
    the speaker's name and style by it."""
    blocks = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{_voiced(s)}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _said(speaker: str | None, text: str) -> str:
    return f"{speaker}: {text}" if speaker else text


def _voiced(segment: Segment) -> str:
    text = segment.text.strip()
    if not segment.speaker:
        return text
    # A cue's text and a voice's name may not hold "<", ">" or "&" (WebVTT's cue text syntax).
    return f"<v {_vtt_escape(segment.speaker)}>{_vtt_escape(text)}</v>"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_tsv(segments: list[Segment]) -> str:
    """Tab-separated start and end in integer milliseconds, and the text (whisper's tsv writer)."""
    rows = ["start\tend\ttext"]
    rows += [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.strip().replace(chr(9), ' ')}" for s in segments]
    return "\n".join(rows) + "\n"


def render_text(result: Result, fmt: str) -> str:
    """The plain-text formats, shared by both APIs."""
    if fmt == "srt":
        return to_srt(result.transcript.segments)
    if fmt == "vtt":
        return to_vtt(result.transcript.segments)
    return result.transcript.text + "\n"
