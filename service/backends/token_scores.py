"""Per-token log probabilities from faster-whisper, without decoding twice.

CTranslate2's beam search returns one score per hypothesis; its per-step logits come back only
for greedy search (`return_logits_vocab` is empty with a beam), so the search's own token scores
are out of reach. The word-alignment pass that word timestamps need is not: `Whisper.align`
runs the decoder over the decoded text tokens (teacher-forced, after the start-of-transcript
tokens, without the previous-text prompt) and returns each token's probability, which
faster-whisper averages into `Word.probability` and otherwise drops. `AlignmentRecorder` sits
between faster-whisper and the CTranslate2 model and keeps those probabilities for the thread
that asked; `TokenScores.take` then finds each yielded segment's tokens among them.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from service.backends.base import TokenLogprob

if TYPE_CHECKING:
    from collections.abc import Iterator

# The probability the alignment pass may round to 0; its log is floored here, not -inf.
_FLOOR = 1e-12


class TokenScores:
    """The token probabilities of the latest alignment pass of one transcription."""

    def __init__(self) -> None:
        self._tokens: list[int] = []
        self._probabilities: list[float] = []
        self._cursor = 0

    def aligned(self, text_tokens: list[list[int]], probabilities: list[list[float]]) -> None:
        # One pass covers one 30 s window (or a batch of chunks); its segments are yielded before
        # the next pass, so only the latest is kept.
        self._tokens = [t for tokens in text_tokens for t in tokens]
        self._probabilities = [p for probs in probabilities for p in probs]
        self._cursor = 0

    def take(self, tokens: list[int]) -> list[float] | None:
        """The probabilities of `tokens` (a segment's text tokens, in order), or None when the
        latest pass did not hold them."""
        n = len(tokens)
        for start in range(self._cursor, len(self._tokens) - n + 1):
            if self._tokens[start : start + n] == tokens:
                self._cursor = start + n
                return self._probabilities[start : start + n]
        return None


class AlignmentRecorder:
    """A CTranslate2 Whisper model whose `align` results are also recorded for the calling thread
    while it is `recording()`; everything else is the model's own."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def align(self, features: Any, start_sequence: Any, text_tokens: Any, num_frames: Any, **kwargs: Any) -> Any:
        results = self._model.align(features, start_sequence, text_tokens, num_frames, **kwargs)
        scores: TokenScores | None = getattr(self._local, "scores", None)
        if scores is not None:
            scores.aligned([list(t) for t in text_tokens], [list(r.text_token_probs) for r in results])
        return results

    @contextmanager
    def recording(self) -> Iterator[TokenScores]:
        """Record this thread's alignment passes until the block ends."""
        self._local.scores = scores = TokenScores()
        try:
            yield scores
        finally:
            self._local.scores = None


def token_logprobs(tokenizer: Any, tokens: list[int], probabilities: list[float]) -> list[TokenLogprob]:
    """Each token (a `tokenizers.Tokenizer` id) with its text, UTF-8 bytes and ln(probability)."""
    out = []
    for token, probability in zip(tokens, probabilities, strict=True):
        data = token_bytes(tokenizer, token)
        logprob = math.log(max(float(probability), _FLOOR))
        out.append(TokenLogprob(data.decode("utf-8", errors="replace"), data, round(logprob, 6)))
    return out


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """The bytes a byte-level BPE token stands for (Whisper's tokenizer spells them as GPT-2 does)."""
    decoder = _byte_decoder()
    return bytes(decoder[ch] for ch in tokenizer.id_to_token(token))


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable characters its vocabulary uses back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
