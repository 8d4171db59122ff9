"""Token log probabilities on the Realtime events, for a session that includes them.

`include: ["item.input_audio_transcription.logprobs"]` on the session puts `logprobs` (OpenAI's
LogProbProperties: token, bytes, logprob) on every `...input_audio_transcription.delta` and
`.completed` event. A delta sends whole words of a partial hypothesis that service.streaming.partials
confirmed, so its logprobs are the tokens of those words in the hypothesis that sent them; the
final's rest, those of the final; `completed`, every token of the turn.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.backends.base import TokenLogprob, Transcript

_WORD = re.compile(r"\S+")


def all_logprobs(transcript: Transcript) -> list[dict[str, Any]]:
    """Every token of the transcript, as the events carry them."""
    return [_event(lp) for s in transcript.segments for lp in s.logprobs or []]


def word_logprobs(transcript: Transcript, first: int, stop: int) -> list[dict[str, Any]] | None:
    """The tokens of words `first` to `stop` of the transcript's text (split at whitespace, as the
    partial policy splits it); None when its tokens do not spell the same words."""
    words = _words([lp for s in transcript.segments for lp in s.logprobs or []])
    spelt = [b"".join(lp.data for lp in word).decode("utf-8", errors="replace").strip() for word in words]
    if spelt != transcript.text.split():
        return None
    return [_event(lp) for word in words[first:stop] for lp in word]


def _words(tokens: list[TokenLogprob]) -> list[list[TokenLogprob]]:
    """`tokens` grouped by the whitespace-separated words of their joined text; a token belongs to
    the first word it has characters in."""
    owner: list[int] = []
    for index, lp in enumerate(tokens):
        owner += [index] * len(lp.token)
    text = "".join(lp.token for lp in tokens)
    taken: set[int] = set()
    words = []
    for match in _WORD.finditer(text):
        indices = sorted(set(owner[match.start() : match.end()]) - taken)
        taken.update(indices)
        words.append([tokens[i] for i in indices])
    return words


def _event(lp: TokenLogprob) -> dict[str, Any]:
    return {"token": lp.token, "bytes": list(lp.data), "logprob": lp.logprob}
