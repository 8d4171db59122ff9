"""Which words of a growing turn are safe to send, and where the next partial decode begins.

A partial decode hears the turn's audio since `cut`, with the confirmed text before the cut in
the prompt. The cut stays at the turn's start until that audio is longer than `keep_seconds`;
then it moves to the gap after the last confirmed word, so that a partial's cost stays bounded
however long the turn (whisper_streaming's buffer trimming), while short turns are heard whole
(cut at a word, Whisper mishears the next one more often: measured with tiny.en, cutting after
every confirmed word revised all three turns of tests/test_streaming.py). Of each hypothesis, the
words that begin after the last confirmed word's end (and do not repeat its tail) are new; their
leading words are confirmed (sent as a delta, never taken back) when either
- their own timing is stable: the word ended at least `stable_seconds` before the end of the
  audio the decode heard (Whisper has heard what follows it, so the end of the audio cannot cut it
  off) and the decoder was sure of it (probability at least `min_probability`); the first word of
  a turn can so be sent from a single hypothesis; or
- `agreement` consecutive hypotheses agree on them (local agreement, as whisper_streaming's
  LocalAgreement-2), never the newest hypothesis's last word.
The final decode of the turn is the truth: if it does not begin with what was sent, that is a
revision, counted in asr_stream_partial_revisions_total, and the completed event carries the
final transcript.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEY = re.compile(r"[^\w']+")
_OVERLAP = 3  # leading words compared with the confirmed text's tail
# Word timings of two decodes of the same audio differ by about this much: a word that begins
# this long before the last confirmed word's end is still taken for a new one.
_JITTER = 0.1


def _key(word: str) -> str:
    """A word compared without case and punctuation ("Friday," and "friday" agree)."""
    return _KEY.sub("", word.lower())


@dataclass(frozen=True)
class Heard:
    """A word of a partial hypothesis, its times in seconds from the turn's start."""

    word: str
    start: float
    end: float
    probability: float


class Partials:
    """One turn's partial hypotheses: the words sent so far, and where the next decode begins."""

    # min_probability: measured on bench/streams.py's six sentences with base at one stream, 0.5
    # sent "Clean" for "Please" and "free" for "three" from single hypotheses (3 turns of 6
    # revised); 0.7 revised 1, its first delta about 0.1-1 s later on some turns.
    def __init__(
        self,
        agreement: int = 2,
        stable_seconds: float = 0.3,
        min_probability: float = 0.7,
        keep_seconds: float = 6.0,
    ) -> None:
        self.agreement = agreement
        self.stable_seconds = stable_seconds
        self.min_probability = min_probability
        self.keep_seconds = keep_seconds
        self.sent: list[str] = []  # words already sent as deltas
        self.cut = 0.0  # seconds from the turn's start where the next partial decode begins
        # Which of the latest update's words it sent (indices into its `words`, stop excluded).
        self.sent_range = (0, 0)
        self._ends: list[float] = []  # each sent word's end, from the turn's start
        self._before_cut = 0  # how many sent words lie before the cut
        self._recent: list[list[str]] = []  # the unconfirmed words of the last hypotheses, oldest first

    @property
    def prompt(self) -> str:
        """The confirmed text before the cut: the next decode's prompt (the audio holds the rest)."""
        return " ".join(self.sent[: self._before_cut])

    def update(self, words: list[Heard], heard_end: float) -> str:
        """Take a hypothesis of the audio from `cut` to `heard_end` (seconds from the turn's start);
        return the delta text now safe to send ("" if none)."""
        confirmed_end = self._ends[-1] if self._ends else None
        new = [
            (i, w)
            for i, w in enumerate(words)
            if _key(w.word) and (confirmed_end is None or w.start > confirmed_end - _JITTER)
        ]
        new = new[self._repeated([w for _, w in new]) :]
        fresh = [w for _, w in new]
        agreed = self._agreed([_key(w.word) for w in fresh])
        confirmed = 0  # each leading word, agreed on or stable on its own, until one is neither
        while confirmed < len(fresh) and (confirmed < agreed or self._stable(fresh[confirmed], heard_end)):
            confirmed += 1
        self._recent = [*self._recent, [_key(w.word) for w in fresh[confirmed:]]][-(self.agreement - 1) :]
        self.sent_range = (new[0][0], new[confirmed - 1][0] + 1) if confirmed else (0, 0)
        if confirmed:
            # Older hypotheses spoke of the same words: what is left of them follows the confirmed ones.
            self._recent = [r[confirmed:] if len(r) > confirmed else [] for r in self._recent[:-1]] + self._recent[-1:]
            self._ends += [max(w.end, self._ends[-1] if self._ends else 0.0) for w in fresh[:confirmed]]
            if heard_end - self.cut > self.keep_seconds:
                last = fresh[confirmed - 1]
                following = fresh[confirmed].start if confirmed < len(fresh) else last.end
                self.cut = max(self.cut, (last.end + max(following, last.end)) / 2)
                self._before_cut = len(self.sent) + confirmed
        return self._send([w.word.strip() for w in fresh[:confirmed]])

    def finish(self, transcript: str) -> tuple[str, bool]:
        """The rest of the final transcript to send, and whether it revised what was sent."""
        words = transcript.split()
        if not self._extends(words):
            return "", True
        return self._send(words[len(self.sent) :]), False

    def _stable(self, word: Heard, heard_end: float) -> bool:
        return word.end <= heard_end - self.stable_seconds and word.probability >= self.min_probability

    def _repeated(self, fresh: list[Heard]) -> int:
        """How many leading words of `fresh` repeat the confirmed text's last words (their timing
        moved later in this decode)."""
        keys = [_key(w.word) for w in fresh]
        tail = [_key(w) for w in self.sent[-_OVERLAP:]]
        for n in range(min(len(tail), len(keys)), 0, -1):
            if keys[:n] == tail[-n:]:
                return n
        return 0

    def _agreed(self, keys: list[str]) -> int:
        """Leading words every one of the last `agreement` hypotheses shares, but the newest's last."""
        if self.agreement < 2 or len(self._recent) < self.agreement - 1:
            return 0
        agreed = 0
        for column in zip(*self._recent[-(self.agreement - 1) :], keys, strict=False):
            if len(set(column)) != 1:
                break
            agreed += 1
        return min(agreed, len(keys) - 1)

    def _extends(self, words: list[str]) -> bool:
        return len(words) >= len(self.sent) and all(_key(a) == _key(b) for a, b in zip(self.sent, words, strict=False))

    def _send(self, words: list[str]) -> str:
        if not words:
            return ""
        text = " ".join(words)
        delta = text if not self.sent else " " + text
        self.sent.extend(words)
        return delta
