"""Which words of a growing turn's hypotheses are safe to send: agreement of consecutive ones.

Each partial decode re-reads the turn so far, and its last words often change once more audio
arrives. A word is sent (as a delta) only once the last `agreement` hypotheses agree on it and on
all the words before it (the "local agreement" policy of streaming Whisper systems); what was sent
is never taken back; nor is the newest hypothesis's last word, which the end of the audio may cut
off. The final decode of the turn is the truth: if it does not begin with what was sent, that is a
revision, counted in asr_stream_partial_revisions_total.

Measured on 8 espeak-ng sentences x 3 frame offsets with tiny.en, beam 5: partials every 1 s with
agreement of 2 (the default) revised 4 turns in 24, all on the first second of a turn, which is
often misheard the same way twice ("But when we're today" for "The weather today"); agreement of 3
revised none but sends its first delta a second later; 3 with partials every 0.5 s revised 4 again
(what matters is how much audio a word has been stable over). A revision costs a client one
replaced line: the completed event always carries the final transcript.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"[^\w']+")


def _key(word: str) -> str:
    """A word compared without case and punctuation ("Friday," and "friday" agree)."""
    return _KEY.sub("", word.lower())


class Stabilizer:
    def __init__(self, agreement: int = 2) -> None:
        self.agreement = agreement
        self.sent: list[str] = []  # words already sent as deltas
        self._recent: list[list[str]] = []  # the last `agreement` hypotheses, as words

    def update(self, hypothesis: str) -> str:
        """Take the newest hypothesis of the turn; return the delta text now safe to send ("" if none)."""
        words = hypothesis.split()
        self._recent = [*self._recent, words][-self.agreement :]
        if len(self._recent) < self.agreement:
            return ""
        agreed = 0
        for column in zip(*self._recent, strict=False):
            if len({_key(word) for word in column}) != 1:
                break
            agreed += 1
        # The newest hypothesis's last word may be cut off with the audio: it waits for the next one.
        agreed = min(agreed, len(words) - 1)
        if agreed <= len(self.sent) or not self._extends(words):
            return ""
        return self._send(words[len(self.sent) : agreed])

    def finish(self, transcript: str) -> tuple[str, bool]:
        """The rest of the final transcript to send, and whether it revised what was sent."""
        words = transcript.split()
        if not self._extends(words):
            return "", True
        return self._send(words[len(self.sent) :]), False

    def _extends(self, words: list[str]) -> bool:
        return len(words) >= len(self.sent) and all(_key(a) == _key(b) for a, b in zip(self.sent, words, strict=False))

    def _send(self, words: list[str]) -> str:
        if not words:
            return ""
        text = " ".join(words)
        delta = text if not self.sent else " " + text
        self.sent.extend(words)
        return delta
