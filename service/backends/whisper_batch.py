"""Many short clips through one faster-whisper model in shared engine calls (the scheduler's batches).

faster-whisper decodes one clip at a time (`WhisperModel.generate_segments`), and its batched
pipeline batches the 30 s chunks of one file without timestamps or temperature fallback. Here each
clip (at most one 30 s window) goes through the same steps as `generate_segments`, and what one
CTranslate2 call can do for many at once is done so: the decoder's beam search runs for the whole
batch (`ctranslate2.models.Whisper.generate` takes a batch of encoder outputs and one prompt per
item), the language of clips that did not name one is read from the batch's encoder output
(`detect_language` takes a batch too). The rest follows faster-whisper, per clip, from its own
functions: prompts (`get_prompt`), segments cut at timestamp tokens, word timings, the no-speech
skip, and the next window when a clip's last segment was left unfinished. A clip whose first
decode fails faster-whisper's checks (compression ratio, log-probability) is decoded alone by
`generate_with_fallback`, which walks the temperatures exactly as the unbatched path does: rare,
and the output stays the unbatched one.

CTranslate2 needs the start-of-transcript token at the same position in every prompt of a call,
so clips whose prompts differ in length are decoded in as many calls (service.backends.faster_whisper
shortens a prompt that is only context, such as a stream's recent text, to a multiple of
CONTEXT_TOKENS, so that such prompts mostly agree).

On a CPU, each clip is encoded on its own and the outputs joined for the decoder: measured on 2
cores with Whisper base int8, encoding a batch of 4 or 8 together took 10-20% longer per clip than
one by one, while the batched beam search took about half the time per clip. On CUDA the batch
is encoded at once.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import Segment, TranscriptionOptions, Word, get_compression_ratio, get_suppressed_tokens
from faster_whisper.utils import get_end

from service.backends.base import Cancelled

if TYPE_CHECKING:
    import threading

    import numpy.typing as npt

CONTEXT_TOKENS = 16
# A draft's window: its audio and at least DRAFT_SILENCE_SECONDS of silence, in steps of
# DRAFT_STEP_SECONDS (so that drafts of similar length share a call), instead of 30 s. Measured on
# Whisper base int8, one thread: the encoder took 0.07 s for 10 s against 0.55 s for 30 s, and
# the text of 1-6 s of speech was near the full window's; with under 2 s of silence after the
# speech the decoder sometimes looped (the text repeated until the token limit).
DRAFT_SILENCE_SECONDS = 4.0
DRAFT_STEP_SECONDS = 10.0
DRAFT_TOKENS_PER_SECOND = 8  # a draft's token limit: a loop costs at most this many per second of window
# WhisperModel.transcribe's keyword defaults: a clip's options are built from them as transcribe
# builds its own, so that the two paths agree on every threshold.
_PARAMETERS = inspect.signature(WhisperModel.transcribe).parameters
_DEFAULTS = {name: p.default for name, p in _PARAMETERS.items() if p.default is not p.empty}
# Options this module takes as they come (per clip, or in the batch key); any other one set away
# from its default means the clip is decoded alone (service.backends.faster_whisper.batch_key).
PER_CLIP = frozenset({"language", "initial_prompt"})
SHARED = frozenset(
    {
        "task",
        "beam_size",
        "best_of",
        "patience",
        "length_penalty",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "temperature",
        "compression_ratio_threshold",
        "log_prob_threshold",
        "no_speech_threshold",
        "condition_on_previous_text",
        "prompt_reset_on_temperature",
        "suppress_blank",
        "suppress_tokens",
        "without_timestamps",
        "max_initial_timestamp",
        "word_timestamps",
        "prepend_punctuations",
        "append_punctuations",
        "hotwords",
        "max_new_tokens",
    }
)


def draft_frames(seconds: float) -> int:
    """The encoder window (mel frames) for a draft of `seconds` of audio (see DRAFT_SILENCE_SECONDS)."""
    steps = math.ceil((seconds + DRAFT_SILENCE_SECONDS) / DRAFT_STEP_SECONDS)
    return int(min(30.0, steps * DRAFT_STEP_SECONDS) * 100)


@dataclass
class ClipResult:
    """One clip's decode, as faster-whisper's transcribe would give it."""

    segments: list[Segment]
    language: str
    language_probability: float
    duration: float


@dataclass
class _Clip:
    features: npt.NDArray[np.float32]
    duration: float
    kwargs: dict[str, Any]
    cancel: threading.Event
    language: str | None = None
    language_probability: float = 1.0
    tokenizer: Tokenizer | None = None
    options: TranscriptionOptions | None = None
    seek: int = 0
    all_tokens: list[int] = field(default_factory=list)
    prompt_reset_since: int = 0
    last_speech_timestamp: float = 0.0
    segments: list[Segment] = field(default_factory=list)

    @property
    def content_frames(self) -> int:
        return int(self.features.shape[-1]) - 1

    @property
    def active(self) -> bool:
        return self.seek < self.content_frames and not self.cancel.is_set()


class BatchDecoder:
    """Decodes clips of at most 30 s together on one WhisperModel (see the module's docstring)."""

    def __init__(self, whisper: WhisperModel) -> None:
        self._whisper = whisper
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        self._on_cpu = whisper.model.device == "cpu"

    def decode(
        self,
        clips: list[npt.NDArray[np.float32]],
        kwargs: list[dict[str, Any]],
        cancels: list[threading.Event],
        draft_window: int | None = None,
    ) -> list[ClipResult | Exception]:
        """Decode each clip with its transcribe keywords (they share all but PER_CLIP); returns one
        result, or Cancelled for a clip whose cancel event was set, per clip in order. With
        `draft_window` (mel frames), clips are drafts: one pass each, in a window of that length."""
        w = self._whisper
        items = [
            _Clip(w.feature_extractor(clip), len(clip) / w.feature_extractor.sampling_rate, kw, cancel)
            for clip, kw, cancel in zip(clips, kwargs, cancels, strict=True)
        ]
        for item in items:
            language = item.kwargs.get("language")
            if not w.model.is_multilingual:
                self._begin(item, "en", 1.0)
            elif language is not None:
                self._begin(item, str(language), 1.0)
        while active := [item for item in items if item.active]:
            self._step(active, draft_window)
        return [_result(item) for item in items]

    # ---- one window of every active clip ---------------------------------------------------

    def _step(self, items: list[_Clip], draft_window: int | None) -> None:
        w = self._whisper
        window = draft_window or w.feature_extractor.nb_max_frames
        windows = []
        for item in items:
            size = min(window, item.content_frames - item.seek)
            windows.append((size, pad_or_trim(item.features[:, item.seek : item.seek + size], length=window)))
        encoded = _Encoded(w, [segment for _, segment in windows], self._on_cpu)
        unknown = [i for i, item in enumerate(items) if item.options is None]
        if unknown:
            languages = w.model.detect_language(encoded.subset(unknown))
            for i, found in zip(unknown, languages, strict=True):
                token, probability = found[0]
                self._begin(items[i], token[2:-2], float(probability))
        prompts = [self._prompt(item) for item in items]
        groups: dict[int, list[int]] = {}
        for i, (item, prompt) in enumerate(zip(items, prompts, strict=True)):
            assert item.tokenizer is not None
            groups.setdefault(prompt.index(item.tokenizer.sot), []).append(i)
        results: list[Any] = [None] * len(items)
        for members in groups.values():
            decoded = self._generate(encoded.subset(members), [prompts[i] for i in members], items[members[0]])
            for i, result in zip(members, decoded, strict=True):
                results[i] = result
        for i, item in enumerate(items):
            size, _ = windows[i]
            self._advance(item, size, prompts[i], results[i], encoded, i)
            if draft_window is not None:
                item.seek = item.content_frames  # a draft is one pass: what is left waits for the final

    def _generate(self, encoder_output: ctranslate2.StorageView, prompts: list[list[int]], first: _Clip) -> list[Any]:
        """One batched decode at the first temperature, as generate_with_fallback's first try."""
        w = self._whisper
        options = first.options
        assert options is not None
        temperature = options.temperatures[0]
        if temperature > 0:
            kwargs: dict[str, Any] = {
                "beam_size": 1,
                "num_hypotheses": options.best_of,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            kwargs = {"beam_size": options.beam_size, "patience": options.patience}
        max_length = w.max_length if options.max_new_tokens is None else len(prompts[0]) + options.max_new_tokens
        return list(
            w.model.generate(
                encoder_output,
                prompts,
                length_penalty=options.length_penalty,
                repetition_penalty=options.repetition_penalty,
                no_repeat_ngram_size=options.no_repeat_ngram_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=options.suppress_blank,
                suppress_tokens=options.suppress_tokens,
                max_initial_timestamp_index=round(options.max_initial_timestamp / w.time_precision),
                **kwargs,
            )
        )

    def _advance(self, item: _Clip, size: int, prompt: list[int], result: Any, encoded: _Encoded, index: int) -> None:
        """What generate_segments does with one window's decode: accept it or fall back, skip
        silence, cut segments, time words, move the clip's seek on."""
        w = self._whisper
        fe = w.feature_extractor
        options, tokenizer = item.options, item.tokenizer
        assert options is not None and tokenizer is not None
        time_offset = item.seek * fe.time_per_frame
        duration = size * fe.time_per_frame
        decoded = _accepted(result, options, tokenizer)
        if decoded is None:  # the first temperature failed the checks: the unbatched walk, alone
            decoded = w.generate_with_fallback(encoded.item(index), prompt, tokenizer, options)
        result, avg_logprob, temperature, compression_ratio = decoded
        no_speech = options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold
        if no_speech and (options.log_prob_threshold is None or avg_logprob <= options.log_prob_threshold):
            item.seek += size  # silence: on to the next window
            return
        previous_seek = item.seek
        segments, item.seek, single_ending = w._split_segments_by_timestamps(
            tokenizer=tokenizer,
            tokens=result.sequences_ids[0],
            time_offset=time_offset,
            segment_size=size,
            segment_duration=duration,
            seek=item.seek,
        )
        if options.word_timestamps:
            w.add_word_timestamps(
                [segments],
                tokenizer,
                encoded.item(index),
                size,
                options.prepend_punctuations,
                options.append_punctuations,
                last_speech_timestamp=item.last_speech_timestamp,
            )
            if not single_ending:
                last_word_end = get_end(segments)
                if last_word_end is not None and last_word_end > time_offset:
                    item.seek = round(last_word_end * w.frames_per_second)
            last_word_end = get_end(segments)
            if last_word_end is not None:
                item.last_speech_timestamp = last_word_end
        for segment in segments:
            text = tokenizer.decode(segment["tokens"])
            if segment["start"] == segment["end"] or not text.strip():
                continue
            item.all_tokens.extend(segment["tokens"])
            item.segments.append(
                Segment(
                    id=len(item.segments) + 1,
                    seek=previous_seek,
                    start=segment["start"],
                    end=segment["end"],
                    text=text,
                    tokens=segment["tokens"],
                    temperature=temperature,
                    avg_logprob=avg_logprob,
                    compression_ratio=compression_ratio,
                    no_speech_prob=result.no_speech_prob,
                    words=[Word(**word) for word in segment["words"]] if options.word_timestamps else None,
                )
            )
        if not options.condition_on_previous_text or temperature > options.prompt_reset_on_temperature:
            item.prompt_reset_since = len(item.all_tokens)

    # ---- per clip ---------------------------------------------------------------------------

    def _begin(self, item: _Clip, language: str, probability: float) -> None:
        """The clip's language is known: its tokenizer, options and prompt tokens, as transcribe sets them."""
        a = {**_DEFAULTS, **item.kwargs}
        tokenizer = self._tokenizer(language, a["task"])
        item.language, item.language_probability, item.tokenizer = language, probability, tokenizer
        temperature = a["temperature"]
        item.options = TranscriptionOptions(
            beam_size=a["beam_size"],
            best_of=a["best_of"],
            patience=a["patience"],
            length_penalty=a["length_penalty"],
            repetition_penalty=a["repetition_penalty"],
            no_repeat_ngram_size=a["no_repeat_ngram_size"],
            log_prob_threshold=a["log_prob_threshold"],
            no_speech_threshold=a["no_speech_threshold"],
            compression_ratio_threshold=a["compression_ratio_threshold"],
            condition_on_previous_text=a["condition_on_previous_text"],
            prompt_reset_on_temperature=a["prompt_reset_on_temperature"],
            temperatures=list(temperature) if isinstance(temperature, list | tuple) else [temperature],
            initial_prompt=a["initial_prompt"],
            prefix=None,
            suppress_blank=a["suppress_blank"],
            suppress_tokens=(
                get_suppressed_tokens(tokenizer, a["suppress_tokens"]) if a["suppress_tokens"] else a["suppress_tokens"]
            ),
            without_timestamps=a["without_timestamps"],
            max_initial_timestamp=a["max_initial_timestamp"],
            word_timestamps=a["word_timestamps"],
            prepend_punctuations=a["prepend_punctuations"],
            append_punctuations=a["append_punctuations"],
            multilingual=False,
            max_new_tokens=a["max_new_tokens"],
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=a["hotwords"],
        )
        prompt = a["initial_prompt"]
        if isinstance(prompt, str):
            item.all_tokens.extend(tokenizer.encode(" " + prompt.strip()))
        elif prompt is not None:
            item.all_tokens.extend(prompt)

    def _tokenizer(self, language: str, task: str) -> Tokenizer:
        key = (language, task)
        if key not in self._tokenizers:
            w = self._whisper
            self._tokenizers[key] = Tokenizer(w.hf_tokenizer, w.model.is_multilingual, task=task, language=language)
        return self._tokenizers[key]

    def _prompt(self, item: _Clip) -> list[int]:
        assert item.options is not None and item.tokenizer is not None
        return list(
            self._whisper.get_prompt(
                item.tokenizer,
                item.all_tokens[item.prompt_reset_since :],
                without_timestamps=item.options.without_timestamps,
                prefix=None,
                hotwords=item.options.hotwords,
            )
        )


class _Encoded:
    """One step's encoder outputs: for the whole batch, a subset of it, or one clip."""

    def __init__(self, whisper: WhisperModel, windows: list[npt.NDArray[np.float32]], on_cpu: bool) -> None:
        self._whisper = whisper
        self._windows = windows
        self._parts: list[npt.NDArray[np.float32]] | None = None
        self._all: ctranslate2.StorageView | None = None
        if on_cpu:  # one by one, joined on the host (faster per clip on a CPU, see the module)
            self._parts = [np.asarray(whisper.encode(window)) for window in windows]
        else:
            self._all = whisper.encode(np.stack(windows))

    def subset(self, indices: list[int]) -> ctranslate2.StorageView:
        if self._parts is not None:
            return ctranslate2.StorageView.from_array(np.concatenate([self._parts[i] for i in indices]))
        assert self._all is not None
        if len(indices) == len(self._windows):
            return self._all
        return self._whisper.encode(np.stack([self._windows[i] for i in indices]))

    def item(self, index: int) -> ctranslate2.StorageView:
        return self.subset([index])


def _accepted(
    result: Any, options: TranscriptionOptions, tokenizer: Tokenizer
) -> tuple[Any, float, float, float] | None:
    """generate_with_fallback's verdict on a first-temperature result: the decode it keeps, or
    None when it would try the next temperature."""
    temperature = options.temperatures[0]
    tokens = result.sequences_ids[0]
    avg_logprob = result.scores[0] * (len(tokens) ** options.length_penalty) / (len(tokens) + 1)
    compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
    needs_fallback = False
    if options.compression_ratio_threshold is not None and compression_ratio > options.compression_ratio_threshold:
        needs_fallback = True
    if options.log_prob_threshold is not None and avg_logprob < options.log_prob_threshold:
        needs_fallback = True
    if (
        options.no_speech_threshold is not None
        and result.no_speech_prob > options.no_speech_threshold
        and options.log_prob_threshold is not None
        and avg_logprob < options.log_prob_threshold
    ):
        needs_fallback = False  # silence
    if needs_fallback and len(options.temperatures) > 1:
        return None
    return result, avg_logprob, temperature, compression_ratio


def _result(item: _Clip) -> ClipResult | Exception:
    if item.cancel.is_set():
        return Cancelled()
    return ClipResult(item.segments, item.language or "en", item.language_probability, item.duration)
