"""SenseVoiceSmall through FunASR: text in zh/en/yue/ja/ko plus emotion and sound events.

Two ways to cut the audio into the ≤30 s stretches SenseVoice is trained on:
- default: Silero VAD (bundled with faster-whisper, no extra weights) finds speech, adjacent
  stretches are merged up to ASR_SENSEVOICE_MERGE_LENGTH_S, and the chunks go to
  `AutoModel.generate` in batches of ASR_SENSEVOICE_BATCH_SIZE_S seconds. Each chunk is one
  segment with exact times and its own emotion and events.
- ASR_SENSEVOICE_VAD_MODEL (e.g. `fsmn-vad` or a local directory): FunASR's own VAD pipeline,
  `AutoModel(model, vad_model, vad_kwargs={"max_single_segment_time": ...})`, as in FunASR's
  examples; segment times come from its `sentence_info`.
The raw tagged output is kept (`raw_text`); the readable text is FunASR's
`rich_transcription_postprocess` of it, and the tags become per-segment fields.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faster_whisper.vad import VadOptions, get_speech_timestamps

from service.backends import model_label
from service.backends.base import SAMPLE_RATE, Cancelled, Capabilities, Segment, TranscribeOptions, Transcript
from service.backends.sensevoice_tags import RichPiece, split_rich
from service.embedded_model import is_embedded
from service.errors import ModelLoadError
from service.hardware import resolve_device
from service.languages import join_texts

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from service.config import Settings

log = logging.getLogger(__name__)

LANGUAGES = frozenset({"zh", "en", "yue", "ja", "ko"})
UNKNOWN_LANGUAGE = "unknown"


def _device(requested: str) -> str:
    # FunASR names the device as torch does, with its index.
    return "cuda:0" if resolve_device(requested, "torch") == "cuda" else "cpu"


class SenseVoiceBackend:
    name = "sensevoice"

    def __init__(self, settings: Settings) -> None:
        # FunASR and torch are the `sensevoice` extra: imported when the engine is built, not with
        # this module, so that every module imports with the core install and load_backend names
        # the extra to install.
        from funasr import AutoModel

        self._sv = settings.sensevoice
        ms = settings.model
        self.device = _device(ms.device)
        self.compute_type = "float32"
        self.model = model_label(settings)
        if is_embedded(ms.model):
            raise ModelLoadError(
                "no SenseVoice model ships with the service: set ASR_MODEL to a SenseVoiceSmall directory "
                "(config.yaml, model.pt, am.mvn, the BPE model) or to iic/SenseVoiceSmall where a hub is reachable"
            )
        if ms.local_files_only and not Path(ms.model).is_dir():
            raise ModelLoadError(f"ASR_LOCAL_FILES_ONLY is set and {ms.model} is not a local directory")
        kwargs: dict[str, Any] = {
            "model": ms.model,
            "device": self.device,
            "disable_update": True,
            "disable_pbar": True,
        }
        if self._sv.vad_model:
            kwargs["vad_model"] = self._sv.vad_model
            kwargs["vad_kwargs"] = {"max_single_segment_time": self._sv.max_single_segment_time}
        try:
            self._auto = AutoModel(**kwargs)
        except Exception as exc:  # FunASR raises assertion, key and OS errors alike on a bad model
            raise ModelLoadError(f"cannot load SenseVoice model {ms.model!r}: {type(exc).__name__}: {exc}") from exc
        self.capabilities = Capabilities(
            languages=LANGUAGES,
            translate=False,
            word_timestamps=False,
            emotion=True,
            audio_events=True,
            batching=True,
            prompt=False,
            temperature=False,
            vad_filter=True,  # speech is always found by VAD first
            segment_scores=False,
            partials=False,  # a live stream gets each VAD turn whole, with its emotion and events
        )

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscribeOptions,
        cancel: threading.Event | None = None,
        on_segment: Callable[[Segment], None] | None = None,
    ) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        language = options.language or "auto"
        if self._sv.vad_model:
            segments, raw = self._funasr_vad(audio, language)
        else:
            segments, raw = self._silero_chunks(audio, language, cancel)
        if on_segment is not None:
            for segment in segments:
                on_segment(segment)
        return _transcript(segments, raw, duration, options.language)

    def _generate(
        self, inputs: npt.NDArray[np.float32] | list[npt.NDArray[np.float32]], language: str, **extra: Any
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._auto.generate(
            input=inputs, cache={}, language=language, use_itn=self._sv.use_itn, disable_pbar=True, **extra
        )
        return result

    def _silero_chunks(
        self, audio: npt.NDArray[np.float32], language: str, cancel: threading.Event | None
    ) -> tuple[list[Segment], str]:
        spans = speech_spans(
            audio, self._sv.max_single_segment_time / 1000, self._sv.merge_vad, self._sv.merge_length_s
        )
        segments: list[Segment] = []
        raws: list[str] = []
        for batch in _batches(spans, self._sv.batch_size_s):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            results = self._generate([audio[a:b] for a, b in batch], language, batch_size=len(batch))
            for (start, end), result in zip(batch, results, strict=True):
                raw = str(result.get("text", ""))
                raws.append(raw)
                segment = _segment(len(segments), start / SAMPLE_RATE, end / SAMPLE_RATE, split_rich(raw), raw)
                if segment is not None:
                    segments.append(segment)
        return segments, "".join(raws)

    def _funasr_vad(self, audio: npt.NDArray[np.float32], language: str) -> tuple[list[Segment], str]:
        sv = self._sv
        [result] = self._generate(
            audio,
            language,
            batch_size_s=sv.batch_size_s,
            merge_vad=sv.merge_vad,
            merge_length_s=sv.merge_length_s,
            sentence_timestamp=True,
        )
        raw = str(result.get("text", ""))
        pieces = [p for p in split_rich(raw) if p.text]
        sentences = result.get("sentence_info") or []
        if pieces and len(sentences) == len(pieces):
            segments = [
                _segment(i, s["start"] / 1000, s["end"] / 1000, [p], p.raw)
                for i, (s, p) in enumerate(zip(sentences, pieces, strict=True))
            ]
            return [s for s in segments if s is not None], raw
        # FunASR could not time the pieces apart: one segment over the audio, tags combined.
        whole = _segment(0, 0.0, len(audio) / SAMPLE_RATE, split_rich(raw), raw)
        return ([whole] if whole is not None else []), raw

    def detect_language(self, audio: npt.NDArray[np.float32]) -> tuple[str, float]:
        """SenseVoice tags each stretch with its language: the share of speech in the most common one."""
        transcript = self.transcribe(audio[: 30 * SAMPLE_RATE], TranscribeOptions())
        return transcript.language, transcript.language_probability

    def close(self) -> None:
        import torch

        self._auto = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def speech_spans(
    audio: npt.NDArray[np.float32], max_seconds: float, merge: bool, merge_seconds: float
) -> list[tuple[int, int]]:
    """Sample ranges with speech (Silero VAD), at most `max_seconds` long; adjacent ranges
    merged up to `merge_seconds` when `merge`, as FunASR's merge_vad does."""
    options = VadOptions(max_speech_duration_s=max_seconds, min_silence_duration_ms=500, speech_pad_ms=200)
    spans = [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(audio, options)]
    if not merge:
        return spans
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and (end - merged[-1][0]) / SAMPLE_RATE <= merge_seconds:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _batches(spans: list[tuple[int, int]], seconds: float) -> list[list[tuple[int, int]]]:
    """Group spans so that each batch holds at most `seconds` of audio (at least one span)."""
    batches: list[list[tuple[int, int]]] = []
    total = 0.0
    for span in spans:
        length = (span[1] - span[0]) / SAMPLE_RATE
        if not batches or total + length > seconds:
            batches.append([])
            total = 0.0
        batches[-1].append(span)
        total += length
    return batches


def _segment(index: int, start: float, end: float, pieces: list[RichPiece], raw: str) -> Segment | None:
    """One segment from the pieces SenseVoice decoded for a stretch of audio (None if empty)."""
    from funasr.utils.postprocess_utils import rich_transcription_postprocess

    if not pieces:
        return None
    emotions = Counter(p.emotion for p in pieces if p.emotion)
    events = list(dict.fromkeys(e for p in pieces for e in p.events))
    text = rich_transcription_postprocess(raw) if any(p.text for p in pieces) else ""
    language = next((p.language for p in pieces if p.language in LANGUAGES), None)
    return Segment(
        id=index,
        start=round(start, 3),
        end=round(end, 3),
        text=text,
        emotion=emotions.most_common(1)[0][0] if emotions else None,
        events=events,
        language=language,
    )


def _transcript(segments: list[Segment], raw: str, duration: float, requested: str | None) -> Transcript:
    weights: dict[str, float] = {}
    for s in segments:
        if s.language:
            weights[s.language] = weights.get(s.language, 0.0) + s.end - s.start
    language = requested or (max(weights, key=weights.__getitem__) if weights else UNKNOWN_LANGUAGE)
    total = sum(weights.values())
    probability = 1.0 if requested else (weights.get(language, 0.0) / total if total else 0.0)
    text = join_texts([s.text for s in segments], language)
    return Transcript(text, language, probability, duration, segments, raw_text=raw)
