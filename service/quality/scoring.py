"""Score a hypothesis against a reference with jiwer, after one normalisation of both sides.

Space-delimited languages are scored by words (WER). Chinese, Cantonese and Japanese are
written without spaces, so they are scored by characters (CER); Korean too, by Hangul
syllable blocks (each precomposed syllable is one character), since its spacing varies
between writers more than its syllables do.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import jiwer

from service.languages import CHARACTER_SCORED

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

Unit = Literal["word", "char"]
_APOSTROPHES = re.compile(r"['’`]")


@dataclass(frozen=True)
class Score:
    unit: Unit
    errors: int  # substitutions + deletions + insertions
    reference_units: int  # words or characters in the (normalised) reference
    substitutions: int
    deletions: int
    insertions: int

    @property
    def rate(self) -> float:
        return self.errors / self.reference_units if self.reference_units else float(self.errors > 0)


def basic_normalize(text: str) -> str:
    """Case-fold, NFKC, drop apostrophes, turn other punctuation and symbols into spaces."""
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).casefold())
    chars = [" " if unicodedata.category(c)[0] in "PSZC" else c for c in text]
    return " ".join("".join(chars).split())


@functools.cache
def _whisper_english() -> Callable[[str], str]:
    # The `whisper-normalizer` package: Whisper's own English normaliser without openai-whisper,
    # whose package imports torch on the way (importing it doubled the service's memory, 0.5 to
    # 1 GB). Loaded on first use, in the process that scores.
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer: Callable[[str], str] = EnglishTextNormalizer()
    return normalizer


def normalizer_for(language: str, mode: str = "auto") -> Callable[[str], str]:
    """Return the normaliser applied to both reference and hypothesis for `language`.

    `auto` and `whisper` use Whisper's English normaliser for English: it also unifies spellings
    and numbers ("twenty" / "20"). `basic`, and every other language, get basic_normalize.
    """
    if language == "en" and mode in ("auto", "whisper"):
        english = _whisper_english()
        return lambda text: basic_normalize(english(text))
    return basic_normalize


def unit_for(language: str) -> Unit:
    return "char" if language in CHARACTER_SCORED else "word"


def score(reference: str, hypothesis: str, language: str, mode: str = "auto") -> Score:
    """Normalise both texts the same way and count errors in the language's unit."""
    normalize = normalizer_for(language, mode)
    ref, hyp = normalize(reference), normalize(hypothesis)
    unit = unit_for(language)
    if unit == "char":
        ref, hyp = ref.replace(" ", ""), hyp.replace(" ", "")
        ref_len, hyp_len = len(ref), len(hyp)
    else:
        ref_len, hyp_len = len(ref.split()), len(hyp.split())
    if ref_len == 0 or hyp_len == 0:
        # jiwer refuses empty references; with either side empty every unit is an error.
        return Score(unit, max(ref_len, hyp_len), ref_len, 0, ref_len, hyp_len)
    out = jiwer.process_characters(ref, hyp) if unit == "char" else jiwer.process_words(ref, hyp)
    errors = out.substitutions + out.deletions + out.insertions
    return Score(
        unit, errors, out.hits + out.substitutions + out.deletions, out.substitutions, out.deletions, out.insertions
    )
