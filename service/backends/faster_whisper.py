"""Whisper through faster-whisper (CTranslate2): the default engine."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES

from service.backends import model_label
from service.backends.base import (
    MAX_CLIP_SECONDS,
    SAMPLE_RATE,
    Cancelled,
    Capabilities,
    Segment,
    TranscribeOptions,
    Transcript,
    Word,
)
from service.backends.token_scores import AlignmentRecorder, TokenScores, token_logprobs
from service.backends.whisper_batch import (
    CONTEXT_TOKENS,
    DRAFT_TOKENS_PER_SECOND,
    PER_CLIP,
    SHARED,
    BatchDecoder,
    draft_frames,
)
from service.embedded_model import embedded_model_path, is_embedded
from service.errors import BadRequestError, ModelLoadError
from service.hardware import cpu_threads, resolve_compute_type, resolve_device, worker_count

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    import numpy as np
    import numpy.typing as npt

    from service.config import Settings

log = logging.getLogger(__name__)


class ObservedBatchedPipeline(BatchedInferencePipeline):
    """faster-whisper's batched pipeline, reporting how many segments each engine call held."""

    observer: Callable[[int], None] | None = None

    def forward(self, features: Any, tokenizer: Any, chunks_metadata: Any, options: Any) -> Any:
        if self.observer is not None:
            self.observer(len(features))
        return super().forward(features, tokenizer, chunks_metadata, options)


class FasterWhisperBackend:
    """faster-whisper's WhisperModel, one instance shared by `ASR_WORKERS` threads.

    CTranslate2 runs concurrent `generate` calls in parallel when built with
    `inter_threads` (num_workers) equal to the number of calling threads.
    """

    name = "faster-whisper"

    def __init__(self, settings: Settings) -> None:
        ms = settings.model
        self.device = resolve_device(ms.device, "ctranslate2")
        self.compute_type = resolve_compute_type(ms.compute_type, self.device)
        self.model = model_label(settings)
        self._decode = settings.decode
        gpu = self.device == "cuda"
        workers = worker_count(settings, gpu)
        path = self._model_path(settings)
        log.info("loading %s from %s on %s (%s)", self.model, path, self.device, self.compute_type)
        try:
            self._whisper = WhisperModel(
                path,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads(settings, gpu),
                num_workers=workers,
                download_root=str(ms.cache_dir / "hub"),
                local_files_only=ms.local_files_only,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"cannot load faster-whisper model {ms.model!r}: {exc}") from exc
        # Keeps the alignment pass's token probabilities for requests that ask for logprobs.
        self._recorder = AlignmentRecorder(self._whisper.model)
        self._whisper.model = self._recorder
        self._tokenizer = self._whisper.hf_tokenizer
        self._eot = self._tokenizer.token_to_id("<|endoftext|>")
        # A thin wrapper over the same model: used per request when the pipeline asks for it.
        self._batched = ObservedBatchedPipeline(self._whisper)
        # ... and for clips of several requests that the scheduler gathers (transcribe_batch).
        self._clips = BatchDecoder(self._whisper)
        multilingual = self._whisper.model.is_multilingual
        self.capabilities = Capabilities(
            languages=frozenset(_LANGUAGE_CODES) if multilingual else frozenset({"en"}),
            translate=multilingual,
            word_timestamps=True,
            batching=True,
            logprobs=True,
            keywords=True,
        )

    @staticmethod
    def _model_path(settings: Settings) -> str:
        name = settings.model.model
        if is_embedded(name):
            return str(embedded_model_path(name, settings.model.cache_dir))
        return name  # a directory, a size such as large-v3, or a hub id: WhisperModel resolves it

    def set_batch_observer(self, observe: Callable[[int], None]) -> None:
        """Call `observe(segments)` for every batched engine call (asr_batch_size)."""
        self._batched.observer = observe

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        if not self._whisper.model.is_multilingual:
            return "en", 1.0
        language, probability, _ = self._whisper.detect_language(audio[: 30 * SAMPLE_RATE])
        return str(language), float(probability)

    def _kwargs(self, options: TranscribeOptions) -> dict[str, Any]:
        """faster-whisper's transcribe keywords for `options` (both paths, batched or not)."""
        kwargs: dict[str, Any] = {
            "language": options.language,
            "task": options.task,
            "beam_size": options.beam_size or self._decode.beam_size,
            "best_of": self._decode.best_of,
            # Token probabilities come from the word-alignment pass (service.backends.token_scores).
            "word_timestamps": options.word_timestamps or options.logprobs,
            "initial_prompt": self._prompt(options),
            "condition_on_previous_text": self._decode.condition_on_previous_text,
            "hotwords": self._hotwords(options.keywords),
        }
        if options.temperature:
            # OpenAI's semantics: 0 means "start greedy and fall back to higher temperatures
            # on failure" (the engine default); another value is used as the only one.
            kwargs["temperature"] = options.temperature
        elif options.draft:
            kwargs["temperature"] = 0.0  # a draft is one pass: no fallback to higher temperatures
        return kwargs

    def _draft_kwargs(self, options: TranscribeOptions, seconds: float) -> dict[str, Any]:
        """A draft's keywords: its token limit follows its window, so that a loop stops early."""
        window = draft_frames(seconds) / 100
        return {**self._kwargs(options), "max_new_tokens": round(window * DRAFT_TOKENS_PER_SECOND)}

    def _prompt(self, options: TranscribeOptions) -> str | list[int] | None:
        """The prompt; context is cut to whole CONTEXT_TOKENS (its newest part, as faster-whisper
        keeps the newest 223 tokens) so that streams' prompts agree in length and share calls."""
        prompt = options.initial_prompt
        if not prompt or not options.prompt_is_context:
            return prompt
        tokens = self._whisper.hf_tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
        tokens = tokens[-(self._whisper.max_length // 2 - 1) :]
        keep = len(tokens) - len(tokens) % CONTEXT_TOKENS if len(tokens) >= CONTEXT_TOKENS else len(tokens)
        return list(tokens[len(tokens) - keep :])

    def batch_key(self, options: TranscribeOptions, seconds: float) -> Hashable | None:
        """Options that may share a batched call: all but the language and the prompt equal, and
        for drafts the same window; never the batched pipeline (long files), the VAD filter (it
        cuts the clip first) or logprobs (the batch decoder does not record token scores)."""
        if options.batched or options.vad_filter or options.logprobs:
            return None
        kwargs = self._draft_kwargs(options, seconds) if options.draft else self._kwargs(options)
        if not set(kwargs) <= SHARED | PER_CLIP:
            return None
        window = draft_frames(seconds) if options.draft else None
        return window, tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k not in PER_CLIP))

    def transcribe_batch(
        self,
        clips: list[npt.NDArray[np.float32]],
        options: list[TranscribeOptions],
        cancels: list[threading.Event],
    ) -> list[Transcript | Exception]:
        """Transcribe clips of at most 30 s in shared engine calls (service.backends.whisper_batch)."""
        if any(len(clip) > MAX_CLIP_SECONDS * SAMPLE_RATE for clip in clips):
            raise ValueError(f"a batched clip is at most {MAX_CLIP_SECONDS:.0f} s")
        # A draft's window follows its length; batched drafts share one (their batch keys say so).
        seconds = max(len(c) for c in clips) / SAMPLE_RATE
        if options[0].draft:
            window: int | None = draft_frames(seconds)
            kwargs = [self._draft_kwargs(o, seconds) for o in options]
        else:
            window, kwargs = None, [self._kwargs(o) for o in options]
        decoded = self._clips.decode(clips, kwargs, cancels, window)
        out: list[Transcript | Exception] = []
        for result, o in zip(decoded, options, strict=True):
            if isinstance(result, Exception):
                out.append(result)
                continue
            segments = [self._segment(seg, i, o, None) for i, seg in enumerate(result.segments)]
            text = "".join(seg.text for seg in result.segments).strip()
            out.append(Transcript(text, result.language, result.language_probability, result.duration, segments))
        return out

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        if options.draft and not options.logprobs and len(audio) <= MAX_CLIP_SECONDS * SAMPLE_RATE:
            # Drafts are decoded by the batch decoder alone: it can shorten the window.
            result = self.transcribe_batch([audio], [options], [cancel or threading.Event()])[0]
            if isinstance(result, Exception):
                raise result
            for seg in result.segments:
                if on_segment is not None:
                    on_segment(seg)
            return result
        kwargs = self._kwargs(options)
        with self._recorder.recording() as scores:
            if options.batched:
                # The batched pipeline needs VAD to cut the audio into chunks it can batch. It decodes
                # without timestamp tokens (with them, WER rose from 0.064 to 0.173 on our corpus),
                # so each segment is a whole chunk; service.resegment splits them by word timings.
                segments, info = self._batched.transcribe(
                    audio, vad_filter=True, batch_size=self._decode.batch_size, **kwargs
                )
            else:
                segments, info = self._whisper.transcribe(audio, vad_filter=options.vad_filter, **kwargs)
            out: list[Segment] = []
            raw_texts: list[str] = []  # Whisper puts the spaces where the language wants them
            # segments is a generator: the work happens as it is iterated, so cancelling between
            # segments stops the engine within one 30 s window.
            for seg in segments:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                raw_texts.append(seg.text)
                out.append(self._segment(seg, len(out), options, scores))
                if on_segment is not None:
                    on_segment(out[-1])
        return Transcript(
            text="".join(raw_texts).strip(),
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
            segments=out,
        )

    def _segment(self, seg: Any, index: int, options: TranscribeOptions, scores: TokenScores | None) -> Segment:
        """One of faster-whisper's segments as ours; its logprobs from `scores` when asked for."""
        words = None
        if options.word_timestamps and seg.words is not None:
            words = [Word(w.start, w.end, w.word, w.probability) for w in seg.words]
        logprobs = None
        if options.logprobs and scores is not None:
            text_tokens = [t for t in seg.tokens if t < self._eot]
            probabilities = scores.take(text_tokens)
            if probabilities is None:  # not seen in the alignment pass: say nothing rather than guess
                log.warning("no alignment probabilities for segment %d's %d tokens", index, len(text_tokens))
            else:
                logprobs = token_logprobs(self._tokenizer, text_tokens, probabilities)
        return Segment(
            id=index,
            start=seg.start,
            end=seg.end,
            text=seg.text.strip(),
            seek=int(seg.seek),
            words=words,
            avg_logprob=seg.avg_logprob,
            no_speech_prob=seg.no_speech_prob,
            compression_ratio=seg.compression_ratio,
            temperature=seg.temperature,
            tokens=list(seg.tokens),
            logprobs=logprobs,
        )

    def _hotwords(self, keywords: tuple[str, ...]) -> str | None:
        """The keywords as faster-whisper's `hotwords`: one comma-separated text put before the
        previous-text prompt of every 30 s window. Raises BadRequestError when they need more
        tokens than the window's prompt may hold (faster-whisper would silently cut them)."""
        if not keywords:
            return None
        text = ", ".join(k.strip() for k in keywords)
        room = self._whisper.max_length // 2 - 1
        used = len(self._tokenizer.encode(" " + text, add_special_tokens=False).ids)
        if used > room:
            raise BadRequestError(
                f"the keywords take {used} tokens; {self.model} takes at most {room}: send fewer or shorter ones",
                param="keywords",
            )
        return text

    def close(self) -> None:
        self._whisper.model.unload_model()
