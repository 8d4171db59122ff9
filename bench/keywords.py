"""Do keywords help? WER on invented names, with and without them, as the engine decodes them.

    python -m bench.keywords [--models embedded:tiny.en,embedded:base] [--voices en-us:140,en-gb:165]

Twenty sentences, each with invented product and person names ("Please order the Zorblax
Quintera for Mrs Vandelholt"), spoken by espeak-ng in each voice, decoded by the service's own
faster-whisper engine (FasterWhisperBackend, the options a request gets) under five conditions:

  none             no help;
  prompt           the sentence's names as the prompt (initial_prompt: what OpenAI suggests for whisper-1);
  keywords         the sentence's names as keywords (faster-whisper's hotwords);
  keywords (list)  every name of the set as keywords, as a client with a product catalogue would send;
  logprobs         no help, with include=logprobs (the word-alignment pass): its cost in engine seconds.

Then every clip joined into one of several minutes, with all the names as a prompt or as keywords:
a prompt conditions the first window only (and its context until later text pushes it out), keywords
every window.

Scored after Whisper's English normalisation (the quality loop's): WER over all words, and the
rare-word error rate: the share of the names' reference words that the alignment of reference
and hypothesis does not match exactly (substituted or deleted). Writes bench/results/keywords.{json,md}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from faster_whisper import decode_audio

from bench.common import RESULTS, markdown_table, write_report
from service.backends.base import TranscribeOptions
from service.backends.faster_whisper import FasterWhisperBackend
from service.config import ModelSettings, Settings
from service.quality.scoring import normalizer_for

# (sentence, its invented names): names that no training text holds, spelt as a person would.
SET: list[tuple[str, tuple[str, ...]]] = [
    ("Please order the Zorblax Quintera for Mrs Vandelholt.", ("Zorblax", "Quintera", "Vandelholt")),
    ("Doctor Okafrey prescribed Trevimax twice a day.", ("Okafrey", "Trevimax")),
    ("Our new Plenvora headset ships to Jarnsby next Tuesday.", ("Plenvora", "Jarnsby")),
    ("Ask Kestrovan about the Miraquell invoice before lunch.", ("Kestrovan", "Miraquell")),
    ("The Drevilon tablet replaced the old Voxmere model.", ("Drevilon", "Voxmere")),
    (
        "Professor Halvarsen presented the Quorvik results at the Ostrelin conference.",
        ("Halvarsen", "Quorvik", "Ostrelin"),
    ),
    ("Send three crates of Glimmerfrost to Ms Patakova.", ("Glimmerfrost", "Patakova")),
    ("The Nuvexa app crashed when Tobiah Wrenfield opened it.", ("Nuvexa", "Tobiah", "Wrenfield")),
    ("Mister Xandrell will demonstrate the Fluxorin pump on Monday.", ("Xandrell", "Fluxorin")),
    ("Our Sorvantic router needs a firmware update from Kelbridge.", ("Sorvantic", "Kelbridge")),
    ("Captain Brunvoll steered the Halcyra toward the harbour.", ("Brunvoll", "Halcyra")),
    ("Please move the Vantorix review with Ilsabeth Crannock.", ("Vantorix", "Ilsabeth", "Crannock")),
    ("The Zephyrion blender comes in red and silver.", ("Zephyrion",)),
    ("Miss Quillane approved the Ostravo budget yesterday.", ("Quillane", "Ostravo")),
    ("Load the Brixel cartridges into the Tamberlyn printer.", ("Brixel", "Tamberlyn")),
    ("Engineer Dravosky tested the Helionex battery overnight.", ("Dravosky", "Helionex")),
    ("We sold forty bottles of Calvorra shampoo in Pendrick.", ("Calvorra", "Pendrick")),
    ("Judge Falkrith dismissed the Ventrolux case this morning.", ("Falkrith", "Ventrolux")),
    ("The Kryvana watch counts steps for Eamon Trelawne.", ("Kryvana", "Trelawne")),
    ("Call Uldrich at Pixamora before the shipment leaves.", ("Uldrich", "Pixamora")),
]
CATALOGUE = tuple(name for _, names in SET for name in names)
CONDITIONS = ("none", "prompt", "keywords", "keywords (list)", "logprobs")


@dataclass
class Clip:
    text: str
    names: tuple[str, ...]
    voice: str
    audio: np.ndarray[Any, np.dtype[np.float32]]


def speak(folder: Path, voices: list[tuple[str, int]]) -> list[Clip]:
    """Each sentence in each (voice, words per minute), decoded to 16 kHz as the service would."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for voice, speed in voices:
        for i, (text, names) in enumerate(SET):
            wav = folder / f"{voice}-{speed}-{i}.wav"
            if not wav.exists():
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
            clips.append(Clip(text, names, f"{voice}:{speed}", decode_audio(str(wav))))
    return clips


def options(condition: str, clip: Clip) -> TranscribeOptions:
    if condition == "prompt":
        return TranscribeOptions(language="en", initial_prompt=", ".join(clip.names))
    if condition == "keywords":
        return TranscribeOptions(language="en", keywords=clip.names)
    if condition == "keywords (list)":
        return TranscribeOptions(language="en", keywords=CATALOGUE)
    return TranscribeOptions(language="en", logprobs=condition == "logprobs")


def rare_errors(reference: str, hypothesis: str, names: tuple[str, ...]) -> tuple[int, int]:
    """(errors, reference words) over the names' words: a name word counts as an error unless the
    alignment of the normalised texts matches it exactly."""
    normalise = normalizer_for("en")
    rare = {w for name in names for w in normalise(name).split()}
    ref, hyp = normalise(reference), normalise(hypothesis) or "<empty>"
    words = ref.split()
    hits: set[int] = set()
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        if chunk.type == "equal":
            hits.update(range(chunk.ref_start_idx, chunk.ref_end_idx))
    positions = [i for i, w in enumerate(words) if w in rare]
    return sum(i not in hits for i in positions), len(positions)


@dataclass
class Tally:
    """One condition's counts over the clips it decoded."""

    errors: int = 0
    words: int = 0
    rare_errors: int = 0
    rare_words: int = 0
    seconds: float = 0.0
    clips: int = 0

    def add(self, clip: Clip, text: str, seconds: float) -> None:
        normalise = normalizer_for("en")
        measures = jiwer.process_words(normalise(clip.text), normalise(text) or "<empty>")
        self.errors += measures.substitutions + measures.deletions + measures.insertions
        self.words += len(normalise(clip.text).split())
        errors, words = rare_errors(clip.text, text, clip.names)
        self.rare_errors, self.rare_words = self.rare_errors + errors, self.rare_words + words
        self.seconds += seconds
        self.clips += 1

    def row(self, model: str, condition: str, clip: str, base: Tally) -> dict[str, Any]:
        return {
            "model": model.removeprefix("embedded:"),
            "clip": clip,
            "condition": condition,
            "rare_word_error": self.rare_errors / self.rare_words,
            "wer": self.errors / self.words,
            "engine_s_per_clip": self.seconds / self.clips,
            "engine_time_ratio": self.seconds / base.seconds,
        }


def run_model(model: str, clips: list[Clip], cache: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for the sentences (each condition over every clip) and for the long clip (prompt against
    keywords over minutes), and every hypothesis for the report's JSON."""
    backend = FasterWhisperBackend(Settings(model=ModelSettings(model=model, cache_dir=cache)))
    backend.transcribe(clips[0].audio, TranscribeOptions(language="en"))  # warm-up
    tallies = {condition: Tally() for condition in CONDITIONS}
    hypotheses = []

    def decode(clip: Clip, condition: str, opts: TranscribeOptions, tally: Tally, kind: str) -> None:
        started = time.perf_counter()
        text = backend.transcribe(clip.audio, opts).text
        tally.add(clip, text, time.perf_counter() - started)
        hypotheses.append({"model": model, "clip": kind, "condition": condition, "voice": clip.voice, "text": text})

    # Conditions take turns on each clip, so that the machine's other load falls on all alike.
    for clip in clips:
        for condition in CONDITIONS:
            decode(clip, condition, options(condition, clip), tallies[condition], "sentence")
    rows = [tallies[c].row(model, c, "sentences", tallies["none"]) for c in CONDITIONS]
    # Every sentence in one clip of several minutes: a prompt conditions the first 30 s window and
    # stays in the previous-text context only until 223 tokens of text push it out; hotwords come
    # before the context of every window.
    long = Clip(
        " ".join(c.text for c in clips),
        CATALOGUE * (len(clips) // len(SET)),
        "all",
        np.concatenate([c.audio for c in clips]),
    )
    long_tallies = {c: Tally() for c in ("none", "prompt (list)", "keywords (list)")}
    decode(long, "none", TranscribeOptions(language="en"), long_tallies["none"], "long")
    decode(
        long,
        "prompt (list)",
        TranscribeOptions(language="en", initial_prompt=", ".join(CATALOGUE)),
        long_tallies["prompt (list)"],
        "long",
    )
    decode(
        long,
        "keywords (list)",
        TranscribeOptions(language="en", keywords=CATALOGUE),
        long_tallies["keywords (list)"],
        "long",
    )
    minutes = f"{len(long.audio) / 16_000 / 60:.1f} min"
    rows += [t.row(model, c, f"one clip of {minutes}", long_tallies["none"]) for c, t in long_tallies.items()]
    for row in rows:
        print(row, file=sys.stderr, flush=True)
    backend.close()
    return rows, hypotheses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="embedded:tiny.en,embedded:base")
    parser.add_argument("--voices", default="en-us:140,en-gb:165")
    args = parser.parse_args()
    voices = [(v.split(":")[0], int(v.split(":")[1])) for v in args.voices.split(",")]
    clips = speak(RESULTS / "tmp" / "keywords", voices)
    rows: list[dict[str, Any]] = []
    hypotheses: list[dict[str, Any]] = []
    for model in args.models.split(","):
        model_rows, model_hypotheses = run_model(model, clips, RESULTS / "tmp" / "cache")
        rows += model_rows
        hypotheses += model_hypotheses
    md = (
        "# Keywords on invented names, and what logprobs cost\n"
        f"{len(SET)} sentences with {len(CATALOGUE)} invented names, spoken by espeak-ng ({args.voices}): "
        f"{len(clips)} clips, each decoded by the service's faster-whisper engine (beam 5, English) under "
        "each condition in turn, in one run; then all of them as one long clip. `rare_word_error`: the share "
        "of the names' words not matched exactly (after Whisper's English normalisation); `wer`: over all "
        "words; `engine_time_ratio`: engine seconds over the `none` condition's on the same clips. "
        "`(list)`: all the set's names on every clip, as a client with a catalogue would send them.\n\n"
        + markdown_table(
            rows,
            ["model", "clip", "condition", "rare_word_error", "wer", "engine_s_per_clip", "engine_time_ratio"],
        )
    )
    data = {"rows": rows, "catalogue": list(CATALOGUE), "hypotheses": hypotheses}
    print(write_report("keywords", data, md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
