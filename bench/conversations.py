"""Conversations built at run time, with the truth of who spoke when: the diarization benchmark's
input (bench/speakers.py) and the speaker tests' (tests/test_speakers*.py).

Each voice is an espeak-ng voice and variant that resemblyzer tells apart clearly (the pool and
its measured similarities are in docs/speakers.md), or the real recording in bench/data/jfk.flac
(see bench/data/README.md for where it comes from and why it may be used). A conversation is
turns of 2-8 s from randomly chosen speakers (never the same twice in a row), with 0.2-0.8 s of
quiet between them, or, with `overlap`, each turn starting before the previous one ends so that
about that share of the speech is two people at once; `snr_db` adds pink noise made by sox.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.inputs import STORY
from service.audio import decode_audio
from service.backends.base import SAMPLE_RATE

DATA = Path(__file__).resolve().parent / "data"
JFK = DATA / "jfk.flac"
# espeak-ng voices (language + variant) whose resemblyzer voice prints lie far apart (cosine
# similarity of whole utterances <= 0.8 between any two; the same voice scores ~0.9 with itself).
VOICES = ("en-us", "en+f2", "en+Alicia", "en+Lee", "en+anika", "en+iven")
JFK_VOICE = "jfk"
# Where the jfk clip's three phrases are (seconds), cut at its pauses.
JFK_PHRASES = ((0.2, 2.4), (3.2, 7.8), (8.1, 10.7))
EXTRA = [
    "I think we should move the launch to the second week of March.",
    "That depends on whether the suppliers can deliver the parts in time.",
    "Could you share the numbers from last quarter before we decide?",
    "The new design looks cleaner, but the buttons are still too small.",
    "We tested it with twenty customers and most of them liked it.",
    "Let me check the calendar and get back to you this afternoon.",
    "Honestly, I would rather spend the budget on better support.",
    "The train was late again, so I missed the first half of the talk.",
]
TEXTS = [*STORY, *EXTRA]


@dataclass
class Conversation:
    """Audio (16 kHz mono float32) and the truth: (start, end, voice) turns, in seconds."""

    name: str
    audio: npt.NDArray[np.float32]
    turns: list[tuple[float, float, str]]
    voices: list[str]
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def speech_seconds(self) -> float:
        return sum(e - s for s, e, _ in self.turns)


class VoiceBank:
    """Speech of each voice, made once per text and kept in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._jfk: npt.NDArray[np.float32] | None = None

    def say(self, voice: str, text: str) -> npt.NDArray[np.float32]:
        """`text` spoken by `voice` (espeak-ng), without its leading and trailing silence."""
        key = f"{voice}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.wav".replace("+", "_")
        path = self.folder / key
        if not path.exists():
            subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", str(path), text], check=True)
        return trim(load(path))

    def jfk_phrase(self, index: int) -> npt.NDArray[np.float32]:
        """One of the three phrases of the jfk recording."""
        if self._jfk is None:
            self._jfk = load(JFK)
        start, end = JFK_PHRASES[index % len(JFK_PHRASES)]
        return trim(self._jfk[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)])

    def turn(self, voice: str, rng: random.Random, seconds: float) -> npt.NDArray[np.float32]:
        """About `seconds` (2-8) of `voice`: sentences joined with their pauses, cut to length."""
        if voice == JFK_VOICE:
            return self.jfk_phrase(rng.randrange(len(JFK_PHRASES)))
        parts: list[npt.NDArray[np.float32]] = []
        total = 0
        while total < seconds * SAMPLE_RATE:
            speech = self.say(voice, rng.choice(TEXTS))
            parts += [speech, np.zeros(int(0.25 * SAMPLE_RATE), dtype=np.float32)]
            total += len(speech) + int(0.25 * SAMPLE_RATE)
        joined = trim(np.concatenate(parts)[: int(seconds * SAMPLE_RATE)])
        return fade(joined)


def load(path: Path) -> npt.NDArray[np.float32]:
    with open(path, "rb") as fh:
        audio = decode_audio(fh, max_seconds=3600)
    try:
        return audio.read().copy()
    finally:
        audio.close()


def trim(samples: npt.NDArray[np.float32], level: float = 0.01) -> npt.NDArray[np.float32]:
    """`samples` without the quiet before the first and after the last sound above `level`."""
    loud = np.flatnonzero(np.abs(samples) > level)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples[:0]


def fade(samples: npt.NDArray[np.float32], seconds: float = 0.02) -> npt.NDArray[np.float32]:
    n = min(len(samples), int(seconds * SAMPLE_RATE))
    out = samples.copy()
    out[len(out) - n :] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


def build(
    bank: VoiceBank,
    speakers: int,
    seed: int,
    turns: int | None = None,
    overlap: float = 0.0,
    snr_db: float | None = None,
    with_jfk: bool = False,
    voices: list[str] | None = None,
) -> Conversation:
    """One conversation of `speakers` voices (the jfk recording among them with `with_jfk`)."""
    rng = random.Random(seed)
    if voices is None:
        pool = list(VOICES)
        rng.shuffle(pool)
        voices = [JFK_VOICE, *pool[: speakers - 1]] if with_jfk else pool[:speakers]
        rng.shuffle(voices)
    count = turns or 4 * speakers
    order = _order(rng, len(voices), count)
    pieces: list[tuple[int, npt.NDArray[np.float32], str]] = []
    cursor = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    for n, index in enumerate(order):
        voice = voices[index]
        speech = bank.turn(voice, rng, rng.uniform(2.0, 8.0))
        if n > 0 and overlap > 0:
            previous = len(pieces[-1][1])
            shared = min(int(overlap * (len(speech) + previous)), previous // 2, len(speech) // 2)
            cursor -= shared
        pieces.append((cursor, speech, voice))
        cursor += len(speech)
        if not overlap:
            cursor += int(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    length = max(start + len(speech) for start, speech, _ in pieces) + int(0.5 * SAMPLE_RATE)
    audio = np.zeros(length, dtype=np.float32)
    truth = []
    for start, speech, voice in pieces:
        audio[start : start + len(speech)] += _level(speech)
        truth.append((start / SAMPLE_RATE, (start + len(speech)) / SAMPLE_RATE, voice))
    if snr_db is not None:
        audio = audio + pink_noise(len(audio), seed) * _noise_gain(audio, truth, snr_db)
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = (audio * min(1.0, 0.9 / peak)).astype(np.float32)
    name = f"{speakers}spk-{'ovl' if overlap else 'noise' if snr_db is not None else 'clean'}-{seed}"
    meta: dict[str, object] = {"overlap": overlap, "snr_db": snr_db, "jfk": JFK_VOICE in voices}
    return Conversation(name, audio, truth, voices, meta)


def reference_clip(bank: VoiceBank, voice: str, seed: int, seconds: float = 5.0) -> npt.NDArray[np.float32]:
    """A clip of `voice` saying other words than its turns (a known speaker's reference)."""
    if voice == JFK_VOICE:
        return bank.jfk_phrase(1)
    rng = random.Random(seed + 7919)
    text = " ".join(rng.sample(TEXTS, 2))
    return fade(trim(bank.say(voice, text)[: int(seconds * SAMPLE_RATE)]))


def pink_noise(samples: int, seed: int) -> npt.NDArray[np.float32]:
    """Pink noise from sox (`synth pinknoise`), unit RMS."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "noise.wav"
        seconds = samples / SAMPLE_RATE + 0.1
        subprocess.run(
            ["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", str(path), "synth", f"{seconds:.2f}", "pinknoise"],
            check=True,
            capture_output=True,
        )
        noise = load(path)[:samples]
    rng = np.random.default_rng(seed)  # sox -R repeats itself: shift it per conversation
    noise = np.roll(noise, int(rng.integers(0, max(1, len(noise)))))
    return (noise / (float(np.sqrt(np.mean(noise**2))) or 1.0)).astype(np.float32)


def write_wav(path: Path, audio: npt.NDArray[np.float32]) -> Path:
    """`audio` as a 16 kHz 16-bit WAV file (what a client would upload)."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _order(rng: random.Random, voices: int, count: int) -> list[int]:
    """Who speaks each turn: everyone at least once, never the same voice twice in a row (but one)."""
    order = list(range(voices))
    rng.shuffle(order)
    while len(order) < count:
        order.append(rng.choice([v for v in range(voices) if v != order[-1]] or [0]))  # a monologue repeats
    return order


def _level(speech: npt.NDArray[np.float32], dbfs: float = -22.0) -> npt.NDArray[np.float32]:
    rms = float(np.sqrt(np.mean(speech**2))) or 1.0
    return (speech * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _noise_gain(audio: npt.NDArray[np.float32], truth: list[tuple[float, float, str]], snr_db: float) -> float:
    speech = np.concatenate([audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)] for s, e, _ in truth])
    return float(np.sqrt(np.mean(speech**2))) / 10 ** (snr_db / 20)
