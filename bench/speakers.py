"""Who spoke, measured: diarization error rate, speaker count and known-speaker naming, and its cost.

    python -m bench.speakers [--per-cell 8]

Conversations are built at run time (bench/conversations.py): 2, 3 and 4 speakers in turns of
2-8 s, clean, with 10% overlapping speech, or with pink noise at 15 dB SNR (sox); every fourth
has the real jfk recording as one voice. Each is diarized by the service's own diarizer, loaded as
the service loads it (ASR_DIARIZATION_* defaults, one torch thread per worker as on this host), and
scored with pyannote.metrics (DER with a collar of 0.25 s either side of each reference boundary,
overlapped speech scored). Per cell:
- DER, and its parts (missed speech, false alarm, confusion);
- speaker count right: the share of conversations with exactly as many speakers as voices;
- naming: the same audio again with references (other words, 5 s) of two of its voices and of one
  voice that is not in it; a name is right when its voice holds most of the time labelled with it
  and most of that voice's time carries it; the stranger's name must not appear;
- cost: diarization seconds per audio second (the RTF it adds to a transcription).
Writes bench/results/speakers.{json,md}. Needs the `diarization` extra and pyannote.metrics.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import markdown_table, write_report
from bench.conversations import VOICES, Conversation, VoiceBank, build, reference_clip
from service.audio import DecodedAudio
from service.config import Settings
from service.speakers.base import Diarization, DiarizeOptions, KnownVoice
from service.speakers.registry import load_diarizer

CONDITIONS = {"clean": {}, "overlap 10%": {"overlap": 0.1}, "noise 15 dB": {"snr_db": 15.0}}
COLLAR = 0.5  # pyannote's collar is the whole width: 0.25 s either side


def score(conversation: Conversation, diarization: Diarization) -> dict[str, float]:
    """DER and its parts (seconds) for one conversation."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for start, end, voice in conversation.turns:
        reference[Segment(start, end), len(reference)] = voice
    for turn in diarization.turns:
        hypothesis[Segment(turn.start, turn.end)] = turn.speaker
    parts = DiarizationErrorRate(collar=COLLAR, skip_overlap=False)(reference, hypothesis, detailed=True)
    return {k: float(parts[k]) for k in ("total", "missed detection", "false alarm", "confusion")}


def named_right(conversation: Conversation, diarization: Diarization, name: str, voice: str | None) -> bool:
    """Whether `name` landed on `voice` (None: a stranger, whose name must not appear)."""
    labelled = [(t.start, t.end) for t in diarization.turns if t.speaker == name]
    if voice is None:
        return not labelled
    truth = [(s, e) for s, e, v in conversation.turns if v == voice]
    shared = sum(max(0.0, min(e, te) - max(s, ts)) for s, e in labelled for ts, te in truth)
    named = sum(e - s for s, e in labelled)
    spoken = sum(e - s for s, e in truth)
    return named > 0 and shared / named > 0.5 and shared / spoken > 0.5


def run(per_cell: int, folder: Path) -> dict[str, Any]:
    settings = Settings()
    diarizer = load_diarizer(settings)
    bank = VoiceBank(folder)
    rows: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    for speakers in (2, 3, 4):
        for condition, variation in CONDITIONS.items():
            totals = {"total": 0.0, "missed detection": 0.0, "false alarm": 0.0, "confusion": 0.0}
            right = names = names_right = strangers = strangers_right = 0
            audio = spent = 0.0
            for i in range(per_cell):
                seed = 1000 * speakers + i
                c = build(bank, speakers, seed, with_jfk=i % 4 == 3, **variation)  # type: ignore[arg-type]
                started = time.perf_counter()
                found = diarizer.diarize(DecodedAudio.from_array(c.audio), DiarizeOptions())
                spent += time.perf_counter() - started
                audio += c.duration
                parts = score(c, found)
                for k in totals:
                    totals[k] += parts[k]
                right += len(found.speakers) == speakers
                named, stranger = c.voices[:2], next(v for v in VOICES if v not in c.voices)
                known = [(f"known{k}", v) for k, v in enumerate(named)] + [("stranger", stranger)]
                voices = tuple(KnownVoice(n, diarizer.voice_print(reference_clip(bank, v, seed))) for n, v in known)
                with_names = diarizer.diarize(DecodedAudio.from_array(c.audio), DiarizeOptions(known=voices))
                for n, v in known[:2]:
                    names += 1
                    names_right += named_right(c, with_names, n, v)
                strangers += 1
                strangers_right += named_right(c, with_names, "stranger", None)
                conversations.append(
                    {
                        "name": c.name,
                        "condition": condition,
                        "voices": c.voices,
                        "seconds": round(c.duration, 2),
                        "der": round(_der(parts), 4),
                        "speakers_found": len(found.speakers),
                    }
                )
            rows.append(
                {
                    "speakers": speakers,
                    "condition": condition,
                    "conversations": per_cell,
                    "audio_s": round(audio, 1),
                    "DER": round(_der(totals), 4),
                    "missed": round(totals["missed detection"] / totals["total"], 4),
                    "false_alarm": round(totals["false alarm"] / totals["total"], 4),
                    "confusion": round(totals["confusion"] / totals["total"], 4),
                    "count_right": round(right / per_cell, 3),
                    "named_right": round(names_right / names, 3),
                    "stranger_unnamed": round(strangers_right / strangers, 3),
                    "rtf_added": round(spent / audio, 4),
                }
            )
            print(rows[-1], flush=True)
    return {"per_cell": per_cell, "collar_seconds": COLLAR / 2, "rows": rows, "conversations": conversations}


def _der(parts: dict[str, float]) -> float:
    errors = parts["missed detection"] + parts["false alarm"] + parts["confusion"]
    return errors / parts["total"] if parts["total"] else 0.0


def report(data: dict[str, Any]) -> str:
    rows = data["rows"]
    clean = [r for r in rows if r["condition"] != "overlap 10%"]
    summary = {
        "DER without overlap": _weighted(clean, "DER"),
        "DER with 10% overlap": _weighted([r for r in rows if r["condition"] == "overlap 10%"], "DER"),
        "count right": sum(r["count_right"] for r in rows) / len(rows),
        "named right": sum(r["named_right"] for r in rows) / len(rows),
        "RTF added": _weighted(rows, "rtf_added"),
    }
    columns = [
        "speakers",
        "condition",
        "conversations",
        "audio_s",
        "DER",
        "missed",
        "false_alarm",
        "confusion",
        "count_right",
        "named_right",
        "stranger_unnamed",
        "rtf_added",
    ]
    lines = [
        "# Speaker diarization: DER, speaker count, known-speaker naming, cost",
        "",
        "Built by `python -m bench.speakers`; method in its docstring and docs/speakers.md. DER with a collar"
        " of 0.25 s either side; missed / false alarm / confusion are shares of the reference speech.",
        "",
        "Summary: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()) + ".",
        "",
        markdown_table(rows, columns),
    ]
    return "\n".join(lines)


def _weighted(rows: list[dict[str, Any]], key: str) -> float:
    audio = sum(r["audio_s"] for r in rows)
    return sum(r[key] * r["audio_s"] for r in rows) / audio if audio else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-cell", type=int, default=8, help="conversations per speakers x condition")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = run(args.per_cell, Path(folder))
    path = write_report("speakers", data, report(data))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
