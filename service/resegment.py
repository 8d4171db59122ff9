"""Split long segments into subtitle-sized ones by their word timings.

faster-whisper's batched pipeline decodes each VAD chunk (up to 30 s) without timestamp tokens,
so a segment is a whole chunk: fine as text, useless as a subtitle. With word timestamps, each
segment is cut where a subtitle would end: after a sentence, at a pause, or before it gets long.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.backends.base import Segment, Word

MAX_SECONDS = 7.0  # a subtitle line a viewer can read
PAUSE_SECONDS = 0.6
MIN_SENTENCE_SECONDS = 1.0
_SENTENCE_END = (".", "?", "!", "。", "？", "！")


def split_by_words(segments: list[Segment], keep_words: bool) -> list[Segment]:
    """Segments no longer than MAX_SECONDS (where word timings allow), renumbered from 0.

    A segment without word timings is kept whole. `keep_words` False drops the words from the
    result (the client did not ask for them; they were only needed to cut).
    """
    out: list[Segment] = []
    for seg in segments:
        if not seg.words:
            out.append(replace(seg, id=len(out), words=seg.words if keep_words else None))
            continue
        for n, piece in enumerate(_pieces(seg.words)):
            text = "".join(w.word for w in piece).strip()
            # The chunk's token log probabilities stay whole, on its first piece, so that the
            # segments' logprobs still join into the text.
            logprobs = seg.logprobs if n == 0 or seg.logprobs is None else []
            out.append(
                replace(
                    seg,
                    id=len(out),
                    start=piece[0].start,
                    end=piece[-1].end,
                    text=text,
                    words=list(piece) if keep_words else None,
                    tokens=[],  # the chunk's tokens belong to the whole chunk
                    logprobs=logprobs,
                )
            )
    return out


def _pieces(words: list[Word]) -> list[list[Word]]:
    pieces: list[list[Word]] = [[]]
    for word in words:
        current = pieces[-1]
        if current:
            length = word.end - current[0].start
            pause = word.start - current[-1].end
            sentence = current[-1].word.strip().endswith(_SENTENCE_END)
            long_enough = current[-1].end - current[0].start >= MIN_SENTENCE_SECONDS
            if length > MAX_SECONDS or pause > PAUSE_SECONDS or (sentence and long_enough):
                pieces.append([])
        pieces[-1].append(word)
    return [p for p in pieces if p]
