"""Language codes the engines use, with English names (OpenAI's verbose_json reports names)."""

from __future__ import annotations

LANGUAGE_NAMES: dict[str, str] = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}

_BY_NAME = {name: code for code, name in LANGUAGE_NAMES.items()}

# Scored by characters, not words: written without spaces between words.
CHARACTER_SCORED = frozenset({"zh", "yue", "ja", "ko"})
# Written without spaces between words: pieces of text are joined without one.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "yue", "th", "lo", "my", "km", "bo"})


def join_texts(texts: list[str], language: str) -> str:
    """Join pieces of transcript the way the language is written."""
    joiner = "" if language in NO_SPACE_LANGUAGES else " "
    return joiner.join(t for t in texts if t)


def normalize_language(value: str | None) -> str | None:
    """Map a request's language (code, English name, any case; `auto` or empty) to a code or None."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    return _BY_NAME.get(text, text)


def language_label(code: str) -> str:
    """A metric label value for a language: a known code, else `other` (keeps series bounded)."""
    return code if code in LANGUAGE_NAMES else "other"


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)
