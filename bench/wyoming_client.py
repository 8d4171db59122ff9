"""A Wyoming speech-to-text client as Home Assistant is one: the protocol library's own TCP client.

`transcribe` sends `transcribe` (language, model), then one utterance as audio-start, chunks of
`chunk_ms` (paced in real time unless told otherwise) and audio-stop, and reads every event until
the utterance's answer is complete (`transcript-stop` for a streaming server's answer, else
`transcript`, or an `error`), noting when each arrived. Shared by bench/wyoming.py and the tests.
"""

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event


@dataclass
class Pcm:
    """Raw interleaved PCM and its format."""

    data: bytes
    rate: int
    width: int = 2
    channels: int = 1

    @property
    def seconds(self) -> float:
        return len(self.data) / (self.rate * self.width * self.channels)

    @staticmethod
    def from_wav(path: Path) -> Pcm:
        with wave.open(str(path)) as w:
            return Pcm(w.readframes(w.getnframes()), w.getframerate(), w.getsampwidth(), w.getnchannels())

    def with_silence(self, seconds: float) -> Pcm:
        """This audio followed by `seconds` of digital silence."""
        frame = self.width * self.channels
        pad = b"\x80" * frame if self.width == 1 else b"\0" * frame
        return Pcm(self.data + pad * int(seconds * self.rate), self.rate, self.width, self.channels)


@dataclass
class Answer:
    """What the server sent for one utterance, and when (monotonic clock)."""

    events: list[tuple[float, Event]] = field(default_factory=list)
    stopped_at: float = float("inf")  # when audio-stop was sent

    def of(self, kind: str) -> list[Event]:
        return [e for _, e in self.events if e.type == kind]

    @property
    def text(self) -> str | None:
        finals = self.of("transcript")
        return Transcript.from_event(finals[-1]).text if finals else None

    @property
    def language(self) -> str | None:
        finals = self.of("transcript")
        return Transcript.from_event(finals[-1]).language if finals else None

    @property
    def error(self) -> Error | None:
        errors = self.of("error")
        return Error.from_event(errors[0]) if errors else None

    @property
    def latency(self) -> float | None:
        """Seconds from audio-stop to the `transcript` event."""
        return next((t - self.stopped_at for t, e in self.events if Transcript.is_type(e.type)), None)

    @property
    def chunks(self) -> list[tuple[float, str]]:
        """The transcript-chunk texts, each with its arrival from the audio-stop (negative: before it)."""
        return [
            (t - self.stopped_at, TranscriptChunk.from_event(e).text)
            for t, e in self.events
            if TranscriptChunk.is_type(e.type)
        ]


async def transcribe(
    host: str,
    port: int,
    audio: Pcm,
    *,
    chunk_ms: int = 20,
    realtime: bool = True,
    language: str | None = "en",
    model: str | None = None,
    answer_seconds: float = 120.0,
) -> Answer:
    """Send one utterance on a new connection and collect the answer (see the module's docstring)."""
    answer = Answer()
    async with AsyncTcpClient(host, port) as client:
        started = time.monotonic()

        async def read() -> None:
            while True:
                event = await client.read_event()
                if event is None:
                    return
                answer.events.append((time.monotonic(), event))
                if event.type == "error" or TranscriptStop.is_type(event.type):
                    return
                if Transcript.is_type(event.type) and not answer.of("transcript-start"):
                    return  # a plain answer: nothing follows it

        reader = asyncio.create_task(read())
        await client.write_event(Transcribe(name=model, language=language).event())
        fmt = {"rate": audio.rate, "width": audio.width, "channels": audio.channels}
        await client.write_event(AudioStart(**fmt).event())
        step = audio.rate * chunk_ms // 1000 * audio.width * audio.channels
        for i, offset in enumerate(range(0, len(audio.data), step)):
            if reader.done():
                break  # answered early: an error
            await client.write_event(AudioChunk(audio=audio.data[offset : offset + step], **fmt).event())
            if realtime:
                # Paced against the clock from the start, so that a slow send catches up.
                await asyncio.sleep(max(0.0, started + (i + 1) * chunk_ms / 1000 - time.monotonic()))
        answer.stopped_at = time.monotonic()
        await client.write_event(AudioStop().event())
        await asyncio.wait_for(reader, answer_seconds)
    return answer
