"""Trailing near-silence, cut from audio before an engine decodes it.

Whisper decodes in 30 s windows, and after a window that ended on a finished sentence it moves
on by exactly 30 s. Audio a little longer than that (30.2 s, 60.3 s) then leaves a last window
holding a fraction of a second of silence, padded to 30 s; over it, Whisper conditioned on the
text so far readily repeats an earlier sentence and stamps it 30.0-40.0 s, past the audio's end.
Whether it does hangs on a hair (a 1.5e-5 change in the samples flips it). Cutting the trailing
near-silence at the end of the last audible 20 ms frame leaves no window that starts after the
speech, so there is nothing to invent over.

Only audio longer than one engine window is cut: shorter audio is decoded in one window (and
any further one starts inside speech Whisper heard), so there is nothing to gain, and a live
turn keeps the trailing silence its end needs. Near-silence is relative, as in
service.audio_health: quieter than -50 dBFS and 40 dB under the loudest frame (so that quiet
speech recorded at -60 dBFS is not cut), and digital silence always; a noisy tail stays, and the
hallucination guard (service.quality.hallucination) judges what is decoded over it. Only the end
is cut, so timestamps are unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.audio_health import FRAME, GATE_DB, SILENCE_DBFS
from service.backends.base import SAMPLE_RATE

if TYPE_CHECKING:
    import numpy.typing as npt

ENGINE_WINDOW_SECONDS = 30.0  # Whisper's window (faster-whisper and openai-whisper alike)
_FLOOR_DBFS = -100.0  # digital silence, so that log10 stays finite; never audible, however quiet the rest


def audible_end(samples: npt.NDArray[np.float32]) -> int:
    """The sample index just past the last audible 20 ms frame of `samples` (0 when none is)."""
    frames = -(-len(samples) // FRAME)  # the last, partial frame counts too
    if frames == 0:
        return 0
    padded = np.zeros(frames * FRAME, np.float64)
    padded[: len(samples)] = samples
    x = padded.reshape(frames, FRAME)
    level = 10.0 * np.log10(np.maximum(np.einsum("ij,ij->i", x, x) / FRAME, 10.0 ** (_FLOOR_DBFS / 10.0)))
    threshold = max(_FLOOR_DBFS, min(SILENCE_DBFS, float(level.max()) - GATE_DB))
    audible = np.flatnonzero(level > threshold)
    return 0 if len(audible) == 0 else min(len(samples), int(audible[-1] + 1) * FRAME)


def trim(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`samples` without their trailing near-silence when they last longer than one engine window;
    unchanged when they are shorter, end audibly, or hold nothing audible at all."""
    if len(samples) <= ENGINE_WINDOW_SECONDS * SAMPLE_RATE:
        return samples
    end = audible_end(samples)
    return samples[:end] if end > 0 else samples
