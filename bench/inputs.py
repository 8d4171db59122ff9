"""Benchmark audio: espeak-ng speech of known sentences, and long files made by repeating it."""

from __future__ import annotations

import subprocess
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "The weather today is sunny with a light breeze from the west.",
    "Please send the report to the team before the meeting on Friday.",
]
# A longer, varied text for long inputs: repeating one short clip for an hour makes Whisper,
# which conditions on its previous text, loop and retry at higher temperatures.
STORY = [
    "Our team opened the new office in the old harbour district last spring.",
    "Every morning the ferry brings commuters across the bay before eight o'clock.",
    "The library on the corner keeps maps of the coast from three centuries ago.",
    "A small bakery sells rye bread, cinnamon rolls and strong black coffee.",
    "In the afternoon the wind turns and the sailing boats race back to the pier.",
    "Engineers measured the bridge and found that the cables needed new paint.",
    "The museum will show paintings by local artists until the end of October.",
    "Children learn to swim in the public pool behind the railway station.",
    "Farmers bring apples, pears and honey to the market on Saturday mornings.",
    "The city council voted to plant two hundred trees along the main avenue.",
    "At night the lighthouse sends a white beam across the dark water.",
    "A jazz quartet plays in the square whenever the evenings are warm enough.",
    "Students from the university repaired the old clock above the town hall.",
    "The hospital added a wing with forty beds and a modern operating theatre.",
    "Cyclists follow the river path all the way to the mountains in the north.",
    "During the winter festival the streets are lit with thousands of lanterns.",
]


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def clip(folder: Path) -> Path:
    """A ~13 s MP3 of three sentences (espeak-ng, en-us, 140 wpm)."""
    out = folder / "clip.mp3"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, text in enumerate(SENTENCES):
        wav = folder / f"sentence{i}.wav"
        _run("espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text)
        parts.append(wav)
    listing = folder / "clip.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    _run("ffmpeg", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), str(out))
    return out


def story(folder: Path) -> Path:
    """About 1.5 minutes of varied speech (16 sentences), the unit long inputs repeat."""
    out = folder / "story.wav"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _run("espeak-ng", "-v", "en-us", "-s", "140", "-w", str(out), " ".join(STORY))
    return out


def long_audio(folder: Path, minutes: int) -> Path:
    """`minutes` of speech: the story repeated and cut by ffmpeg (64 kbit/s MP3)."""
    out = folder / f"speech-{minutes}min.mp3"
    if out.exists():
        return out
    source = story(folder)
    _run(
        "ffmpeg",
        "-loglevel",
        "error",
        "-y",
        "-stream_loop",
        "-1",
        "-i",
        str(source),
        "-t",
        str(minutes * 60),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "64k",
        str(out),
    )
    return out
