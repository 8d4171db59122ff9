"""Every metric the service exports, defined once, against an injectable registry.

The names are a contract: deploy/prometheus rules and deploy/grafana dashboards use them
(docs/metrics.md lists each with a query). Labels are bounded: route templates, backend,
model, languages the engine knows, fixed reason/kind sets; never raw paths or user input.

Multiprocess mode (several uvicorn workers) is on when PROMETHEUS_MULTIPROC_DIR is set
before prometheus_client is imported: values then live in that directory, and a scrape
merges them (`render`). Gauges state how they merge; exemplars and custom collectors do not
work across processes, so the GPU collector and a summed process collector run at scrape
time in the answering process.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from service.errors import REJECTION_REASONS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

# Alert thresholds that deploy/prometheus/rules/alerts.yml uses; each is a bucket boundary
# below so that histogram_quantile and le-ratios are exact there (tests check both files).
# Latency is judged per second of audio (a 10-minute file may take a minute; a 5 s clip may not):
# p95 of the request's real-time factor above 1 means answers take longer than the audio lasts.
REQUEST_RTF_P95_ALERT = 1.0
REQUEST_RTF_P99_ALERT = 2.0
QUEUE_WAIT_ALERT_SECONDS = 10.0
# Live streams: a turn's text within 2 s of the end of its speech.
STREAM_FINALISATION_SLO_SECONDS = 2.0
RTF_ALERT = 1.0

# HTTP latency: from quick errors to a 10-minute transcription.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Real-time factor: 0.01 (a GPU on large batches) to 4 (four times slower than speech).
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
# Request real-time factor (decode + queue + engine per audio second): a fast answer to a trip
# through a long queue.
REQUEST_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
STREAM_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
DECODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Audio duration: 1 s to 2 h.
AUDIO_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Whisper's own fallback thresholds are -1.0 (log-prob), 0.6 (no-speech), 2.4 (compression).
# Input audio health (service.audio_health).
LEVEL_DBFS_BUCKETS = (-60.0, -50.0, -45.0, -40.0, -35.0, -30.0, -25.0, -20.0, -15.0, -10.0, -5.0, 0.0)
CLIPPING_BUCKETS = (0.0, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0)
SILENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SNR_BUCKETS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0)
# Label values of the input mix; anything else is "other", so that a client cannot mint series.
INPUT_RATES = frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000})
INPUT_CODECS = frozenset(
    {"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_mulaw", "pcm_alaw", "mp3", "mp3float",
     "flac", "vorbis", "opus", "aac", "alac", "amr_nb", "amr_wb", "gsm", "gsm_ms", "speex", "wmav2", "g722", "g723_1",
     "g729", "adpcm_ms", "adpcm_ima_wav"}
)  # fmt: skip
LOGPROB_BUCKETS = (-3.0, -2.0, -1.5, -1.0, -0.8, -0.6, -0.4, -0.3, -0.2, -0.1, 0.0)
NO_SPEECH_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COMPRESSION_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.4, 3.0, 4.0, 6.0, 10.0)

HALLUCINATION_KINDS = ("repetition", "silence", "phantom_phrase")
# Segments the guard was sure were invented (service.quality.hallucination.Guard).
DROPPED_SEGMENT_KINDS = ("past_end", "silence", "repetition")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
# A job from submission to its end: a minute to several hours.
JOB_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
SKIP_REASONS = ("missing_audio", "damaged_audio", "missing_record")
# Live streams: client events answered with an error (invalid: malformed or out of range;
# unsupported: an option or event not offered; rate_limited; turns_pending: too many turns
# waiting for their final decode), why streams ended, and why audio was dropped.
STREAM_EVENT_REJECTIONS = ("invalid", "unsupported", "rate_limited", "turns_pending")
STREAM_CLOSE_REASONS = ("client", "idle_timeout", "too_long", "slow_consumer", "shutting_down", "key_limit")
STREAM_DROP_REASONS = ("buffer_full", "turns_pending")
# The entry points that serve live streams: the `entrypoint` label of the asr_stream(s)_* families.
ENTRYPOINTS = ("realtime", "wyoming")
# Wyoming (service.wyoming): a refused event is malformed (invalid), asks for what is not offered
# (unsupported: an audio format, a model, a language), or is past an utterance's caps (too_large);
# a connection also ends on a frame it cannot read (invalid).
WYOMING_EVENT_REJECTIONS = ("invalid", "unsupported", "too_large", "turns_pending")
WYOMING_CLOSE_REASONS = ("client", "idle_timeout", "too_long", "slow_consumer", "shutting_down", "invalid")
STREAM_REASONS: dict[str, dict[str, tuple[str, ...]]] = {
    "realtime": {"dropped": STREAM_DROP_REASONS, "rejected": STREAM_EVENT_REJECTIONS, "closed": STREAM_CLOSE_REASONS},
    "wyoming": {"dropped": (), "rejected": WYOMING_EVENT_REJECTIONS, "closed": WYOMING_CLOSE_REASONS},
}
# Diarization of one request or job window: a fraction of a second to minutes for hours of audio.
DIARIZATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SPEAKER_COUNT_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 16, 32)
KNOWN_SPEAKER_OUTCOMES = ("matched", "unmatched")
UNMATCHED_ROUTE = "<unmatched>"
CONNECTION_CLOSE_REASONS = ("connection_limit", "evicted_idle", "header_timeout")

_MODEL_LABELS = ("backend", "model")
_LANG_LABELS = ("backend", "model", "language")


class ByReason:
    """A family labelled (entrypoint, reason) with its entry point given: `.labels(reason)`."""

    def __init__(self, family: Counter, entrypoint: str) -> None:
        self._family = family
        self._entrypoint = entrypoint

    def labels(self, reason: str) -> Counter:
        return self._family.labels(self._entrypoint, reason)


@dataclass(frozen=True)
class StreamMetrics:
    """One entry point's live-stream metrics (its `entrypoint` label given)."""

    active: Gauge
    audio: Counter
    first_partial: Histogram
    finalisation: Histogram
    revisions: Counter
    dropped: ByReason
    rejected: ByReason
    closed: ByReason


@dataclass(frozen=True)
class StreamFamilies:
    """The asr_stream(s)_* families, shared by every entry point."""

    active: Gauge
    audio: Counter
    first_partial: Histogram
    finalisation: Histogram
    revisions: Counter
    dropped: Counter
    rejected: Counter
    closed: Counter

    def view(self, entrypoint: str) -> StreamMetrics:
        return StreamMetrics(
            self.active.labels(entrypoint),
            self.audio.labels(entrypoint),
            self.first_partial.labels(entrypoint),
            self.finalisation.labels(entrypoint),
            self.revisions.labels(entrypoint),
            ByReason(self.dropped, entrypoint),
            ByReason(self.rejected, entrypoint),
            ByReason(self.closed, entrypoint),
        )


class Metrics:
    """The metric objects; build one per app with a fresh registry in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` samples would double every counter's series; Prometheus 2.x never reads them.
        disable_created_metrics()
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = registry if registry is not None else CollectorRegistry()
        # In multiprocess mode values go to mmap files; the registry is only for the
        # collectors that are read at scrape time.
        r = None if self.multiprocess else self.registry
        self._extra_collectors: list[Collector] = []

        self.http_requests = Counter(
            "asr_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "asr_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "asr_http_requests_in_flight",
            "Requests being served now (health and metrics excluded).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_closed = Counter(
            "asr_connections_closed",
            "Connections the server closed before a request: connection_limit (ASR_MAX_CONNECTIONS reached, all "
            "busy), evicted_idle (the oldest still without a request head, to make room), header_timeout (no "
            "whole request head within ASR_HEADER_TIMEOUT_SECONDS).",
            ["reason"],
            registry=r,
        )
        self.accept_errors = Counter(
            "asr_accept_errors",
            "Connections the server could not accept (out of file descriptors or memory).",
            registry=r,
        )
        self.rejected = Counter(
            "asr_requests_rejected",
            "Requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        # Per API key: the key's name comes from the configured set only (service.keys), never
        # from what a client sends, so the series are bounded by the keys file.
        self.key_requests = Counter(
            "asr_key_requests",
            "HTTP requests answered, by API key name and status class (2xx, 4xx, 5xx).",
            ["key", "status_class"],
            registry=r,
        )
        self.key_audio = Counter(
            "asr_key_audio_seconds",
            "Audio seconds transcribed for each API key (uploads, job audio, live turns).",
            ["key"],
            registry=r,
        )
        self.key_in_flight = Gauge(
            "asr_key_work_in_flight",
            "Transcription requests, job submissions and live streams of each API key in flight now.",
            ["key"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "asr_queue_depth",
            "Requests waiting for an inference worker.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "asr_queue_capacity",
            "Requests that may wait before 429s begin.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.workers = Gauge(
            "asr_workers",
            "Inference workers (transcriptions that can run at once).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.workers_busy = Gauge(
            "asr_workers_busy",
            "Inference workers running a transcription now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.decode_seconds = Histogram(
            "asr_decode_seconds",
            "Time to decode an upload to 16 kHz mono (waiting for a decode slot excluded).",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.decodes_in_flight = Gauge(
            "asr_decodes_in_flight",
            "Uploads being decoded now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_rtf = Histogram(
            "asr_request_realtime_factor",
            "Seconds from admission to answer (decode, queue wait, engine) per audio second.",
            _MODEL_LABELS,
            buckets=REQUEST_RTF_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "asr_queue_wait_seconds",
            "Time a request waited for a worker.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.input_level = Histogram(
            "asr_input_level_dbfs",
            "Input level: RMS of the speech-bearing 20 ms frames, dBFS (first 30 s of each request).",
            ["model"],
            buckets=LEVEL_DBFS_BUCKETS,
            registry=r,
        )
        self.input_clipping = Histogram(
            "asr_input_clipping_ratio",
            "Share of input samples at full scale (clipped).",
            ["model"],
            buckets=CLIPPING_BUCKETS,
            registry=r,
        )
        self.input_silence = Histogram(
            "asr_input_silence_ratio",
            "Share of 20 ms input frames below -50 dBFS.",
            ["model"],
            buckets=SILENCE_BUCKETS,
            registry=r,
        )
        self.input_snr = Histogram(
            "asr_input_snr_db",
            "Signal-to-noise estimate of the input: loud frames (p90 energy) over quiet ones (p10), dB.",
            ["model"],
            buckets=SNR_BUCKETS,
            registry=r,
        )
        self.input_audio = Counter(
            "asr_input_audio",
            "Requests by the uploaded audio's codec and sample rate (before resampling).",
            ["codec", "sample_rate"],
            registry=r,
        )
        self.audio_duration = Histogram(
            "asr_audio_duration_seconds",
            "Length of the audio transcribed per request.",
            _LANG_LABELS,
            buckets=AUDIO_BUCKETS,
            registry=r,
        )
        self.audio_processed = Counter(
            "asr_audio_processed_seconds",
            "Seconds of audio transcribed.",
            _LANG_LABELS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "asr_inference_duration_seconds",
            "Engine time per request (decode and queue excluded).",
            _LANG_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Counter(
            "asr_inference_seconds",
            "Engine seconds spent; over audio seconds it is the aggregate RTF.",
            _LANG_LABELS,
            registry=r,
        )
        self.rtf = Histogram(
            "asr_realtime_factor",
            "Engine seconds per audio second, per request (below 1 is faster than real time).",
            _MODEL_LABELS,
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "asr_model_info",
            "The loaded model (value 1).",
            ["backend", "model", "device", "compute_type"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_load_seconds = Gauge(
            "asr_model_load_seconds",
            "Time each model's last load and warm-up took.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_loaded = Gauge(
            "asr_model_loaded",
            "1 while the model (an ASR_MODELS id) is loaded, 0 while it is not.",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_memory = Gauge(
            "asr_model_memory_bytes",
            "What loading the model added to the process: heap in use on CPU, GPU memory on CUDA (0 while unloaded).",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_loads = Counter(
            "asr_model_loads",
            "Model loads by reason: preload (at startup), demand (a request), admin (POST /v1/models/{id}).",
            ["model", "reason"],
            registry=r,
        )
        self.model_unloads = Counter(
            "asr_model_unloads",
            "Model unloads by reason: ttl (idle past its ttl_seconds), budget (room for another within "
            "ASR_MODEL_MEMORY_BUDGET_BYTES), admin (DELETE /v1/models/{id}).",
            ["model", "reason"],
            registry=r,
        )
        self.ready = Gauge(
            "asr_ready",
            "1 once the model is loaded and warmed up.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.emotions = Counter("asr_emotion", "Segments by SenseVoice emotion.", ["emotion"], registry=r)
        self.audio_events = Counter("asr_audio_events", "Sound events SenseVoice heard.", ["event"], registry=r)
        self.gpu_oom = Counter("asr_gpu_oom", "Requests that failed with GPU out-of-memory.", registry=r)
        self.batch_size = Histogram(
            "asr_batch_size",
            "Items per batched engine call: a long file's 30 s chunks, or clips of several requests and streams "
            "that the scheduler gathered (1: a batchable clip that ran alone).",
            _MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.segment_logprob = Histogram(
            "asr_segment_avg_logprob",
            "Average token log-probability per segment.",
            _MODEL_LABELS,
            buckets=LOGPROB_BUCKETS,
            registry=r,
        )
        self.segment_no_speech = Histogram(
            "asr_segment_no_speech_prob",
            "Engine's probability that a segment holds no speech.",
            _MODEL_LABELS,
            buckets=NO_SPEECH_BUCKETS,
            registry=r,
        )
        self.segment_compression = Histogram(
            "asr_segment_compression_ratio",
            "gzip compression ratio of segment text (high means repetitive).",
            _MODEL_LABELS,
            buckets=COMPRESSION_BUCKETS,
            registry=r,
        )
        self.hallucinations = Counter(
            "asr_suspected_hallucinations",
            "Requests the hallucination guard flagged, by kind.",
            ["kind"],
            registry=r,
        )
        self.dropped_segments = Counter(
            "asr_segments_dropped",
            "Segments the hallucination guard was sure were invented and dropped from the answer, by kind.",
            ["kind"],
            registry=r,
        )
        # Live streams of every entry point (ENTRYPOINTS) share these families, told apart by the
        # `entrypoint` label; each entry point records through its own view (`stream(entrypoint)`).
        families = StreamFamilies(
            active=Gauge(
                "asr_streams_active",
                "Live transcription streams open now: Realtime WebSocket sessions, Wyoming connections.",
                ["entrypoint"],
                registry=r,
                multiprocess_mode="livesum",
            ),
            audio=Counter(
                "asr_stream_audio_seconds",
                "Seconds of live audio received from streams.",
                ["entrypoint"],
                registry=r,
            ),
            first_partial=Histogram(
                "asr_stream_first_partial_seconds",
                "From the start of a turn's speech to its first partial text sent.",
                ["entrypoint"],
                buckets=STREAM_LATENCY_BUCKETS,
                registry=r,
            ),
            finalisation=Histogram(
                "asr_stream_finalisation_seconds",
                "From the end of a turn's speech (its commit; Wyoming: audio-stop) to its final transcript sent.",
                ["entrypoint"],
                buckets=STREAM_LATENCY_BUCKETS,
                registry=r,
            ),
            revisions=Counter(
                "asr_stream_partial_revisions",
                "Turns whose final transcript did not begin with the partial text already sent.",
                ["entrypoint"],
                registry=r,
            ),
            dropped=Counter(
                "asr_stream_audio_dropped_seconds",
                "Live audio dropped, by reason (buffer_full: held past ASR_STREAM_MAX_BUFFER_SECONDS without a "
                "commit; turns_pending: a VAD turn past ASR_STREAM_MAX_PENDING_TURNS).",
                ["entrypoint", "reason"],
                registry=r,
            ),
            rejected=Counter(
                "asr_stream_events_rejected",
                "Client events of live streams answered with an error event, by reason.",
                ["entrypoint", "reason"],
                registry=r,
            ),
            closed=Counter(
                "asr_streams_closed",
                "Live streams ended, by reason (client: the client closed or left; slow_consumer: it stopped reading).",
                ["entrypoint", "reason"],
                registry=r,
            ),
        )
        self._streams = {entrypoint: families.view(entrypoint) for entrypoint in ENTRYPOINTS}
        # The Realtime WebSocket's view under the names its code has always used.
        realtime = self._streams["realtime"]
        self.streams_active = realtime.active
        self.stream_audio = realtime.audio
        self.stream_first_partial = realtime.first_partial
        self.stream_finalisation = realtime.finalisation
        self.stream_revisions = realtime.revisions
        self.stream_dropped_audio = realtime.dropped
        self.stream_events_rejected = realtime.rejected
        self.streams_closed = realtime.closed
        self.jobs = Gauge(
            "asr_jobs",
            "Jobs in the job table by state (finished ones until their retention ends).",
            ["state"],
            registry=r,
            multiprocess_mode="livemax",  # every process reads the same shared table
        )
        self.job_duration = Histogram(
            "asr_job_duration_seconds",
            "Time from a job's submission to its end, for jobs that succeeded.",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "asr_webhook_deliveries",
            "Job webhook deliveries by outcome (retried: failed, another attempt follows).",
            ["outcome"],
            registry=r,
        )
        self.diarization_duration = Histogram(
            "asr_diarization_duration_seconds",
            "Time spent finding who spoke (VAD, speaker embeddings, clustering) per diarized request or job window.",
            buckets=DIARIZATION_BUCKETS,
            registry=r,
        )
        self.diarization_audio = Counter(
            "asr_diarization_audio_seconds",
            "Audio seconds diarized (with asr_diarization_duration_seconds_sum: the real-time factor it adds).",
            registry=r,
        )
        self.diarization_speakers = Histogram(
            "asr_diarization_speakers",
            "Speakers found per diarized request or job window.",
            buckets=SPEAKER_COUNT_BUCKETS,
            registry=r,
        )
        self.known_speakers = Counter(
            "asr_known_speaker_matches",
            "Known-speaker references by outcome: matched (a voice in the audio took its name) or unmatched.",
            ["outcome"],
            registry=r,
        )
        self.quality_samples = Counter(
            "asr_quality_samples",
            "Requests kept for quality review.",
            ["language", "stratum"],
            registry=r,
        )
        # Raw counts over the scored samples, and the same weighted by 1 / inclusion probability
        # (Horvitz-Thompson): the weighted ratio estimates the WER of all requests, the raw one
        # that of the samples (oversampled strata and flagged requests count too much in it).
        self.quality_errors: dict[str, Counter] = {}
        self.quality_reference_units: dict[str, Counter] = {}
        self.quality_weighted_errors: dict[str, Counter] = {}
        self.quality_weighted_reference_units: dict[str, Counter] = {}
        self.quality_shadow_errors: dict[str, Counter] = {}
        self.quality_shadow_reference_units: dict[str, Counter] = {}
        for unit, what in (("word", "Word"), ("char", "Character")):
            units = f"{unit}s"
            self.quality_errors[unit] = Counter(
                f"asr_quality_{unit}_errors", f"{what} errors (S+D+I) in scored samples.", ["language"], registry=r
            )
            self.quality_reference_units[unit] = Counter(
                f"asr_quality_reference_{units}", f"Reference {units} in scored samples.", ["language"], registry=r
            )
            self.quality_weighted_errors[unit] = Counter(
                f"asr_quality_weighted_{unit}_errors",
                f"{what} errors in scored samples, each weighted by 1 / its inclusion probability.",
                ["language"],
                registry=r,
            )
            self.quality_weighted_reference_units[unit] = Counter(
                f"asr_quality_weighted_reference_{units}",
                f"Reference {units} in scored samples, each weighted by 1 / its inclusion probability.",
                ["language"],
                registry=r,
            )
            self.quality_shadow_errors[unit] = Counter(
                f"asr_quality_shadow_{unit}_errors",
                f"{what}s where the served transcript differs from the shadow engine's (weighted as above).",
                ["language"],
                registry=r,
            )
            self.quality_shadow_reference_units[unit] = Counter(
                f"asr_quality_shadow_reference_{units}",
                f"{what}s in the shadow engine's transcripts of samples (weighted as above).",
                ["language"],
                registry=r,
            )
        self.quality_shadow_scored = Counter(
            "asr_quality_shadow_scored_samples",
            "Samples the shadow engine transcribed and compared with the served transcript.",
            ["language"],
            registry=r,
        )
        self.quality_shadow_seconds = Counter(
            "asr_quality_shadow_seconds",
            "Engine seconds the shadow engine spent (its budget: ASR_SHADOW_BUDGET_SECONDS_PER_HOUR).",
            registry=r,
        )
        self.quality_scored = Counter(
            "asr_quality_scored_samples",
            "Samples scored against their reference.",
            ["language"],
            registry=r,
        )
        self.quality_skipped = Counter(
            "asr_quality_skipped_samples",
            "Samples the job could not score, by reason.",
            ["reason"],
            registry=r,
        )
        self.quality_enabled = Gauge(
            "asr_quality_enabled",
            "1 when the quality loop (sampling and scoring) is on.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.quality_pending = Gauge(
            "asr_quality_pending_samples",
            "Samples waiting for a reference.",
            registry=r,
            multiprocess_mode="max",
        )
        self.quality_last_success = Gauge(
            "asr_quality_job_last_success_timestamp_seconds",
            "When the scoring job last finished without error.",
            registry=r,
            multiprocess_mode="max",
        )

        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for reason in CONNECTION_CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for kind in HALLUCINATION_KINDS:
            self.hallucinations.labels(kind)
        for kind in DROPPED_SEGMENT_KINDS:
            self.dropped_segments.labels(kind)
        for reason in SKIP_REASONS:
            self.quality_skipped.labels(reason)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)
        for entrypoint, view in self._streams.items():
            reasons = STREAM_REASONS[entrypoint]
            for reason in reasons["dropped"]:
                view.dropped.labels(reason)
            for reason in reasons["rejected"]:
                view.rejected.labels(reason)
            for reason in reasons["closed"]:
                view.closed.labels(reason)
        for outcome in KNOWN_SPEAKER_OUTCOMES:
            self.known_speakers.labels(outcome)
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def stream(self, entrypoint: str) -> StreamMetrics:
        """The live-stream metrics of `entrypoint` (one of ENTRYPOINTS)."""
        return self._streams[entrypoint]

    def add_collector(self, collector: Collector) -> None:
        """Add a collector read at scrape time (e.g. the NVML GPU collector)."""
        if self.multiprocess:
            self._extra_collectors.append(collector)
        else:
            self.registry.register(collector)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Return the exposition (Prometheus text, or OpenMetrics when `accept` asks) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        if not self.multiprocess:
            return encoder(self.registry), content_type
        return encoder(scrape_registry(self._extra_collectors)), content_type


def scrape_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """Build the registry for one multiprocess scrape: merged files, summed process metrics."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    forget_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    registry.register(WorkerProcessCollector(path))
    for collector in extra:
        registry.register(collector)
    return registry


_PID_FILE = re.compile(r"_(\d+)\.db$")


def worker_pids(path: str) -> list[int]:
    """Return the pids of live processes that have written metrics in `path`."""
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "*.db")) if (m := _PID_FILE.search(f))}
    return sorted(pid for pid in pids if is_alive(pid))


def is_alive(pid: int) -> bool:
    """Whether `pid` runs: a killed worker stays a zombie (with a /proc entry) until reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def forget_dead_processes(path: str) -> None:
    """Drop the live-gauge files of workers that died without cleaning up.

    uvicorn has no child-exit hook, so a crashed worker's in-flight and queue gauges would
    otherwise be summed into `livesum` forever.
    """
    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _PID_FILE.search(f)
        if m and not is_alive(int(m.group(1))):
            multiprocess.mark_process_dead(int(m.group(1)), path)


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class WorkerProcessCollector:
    """process_* metrics summed over the live worker processes (multiprocess mode)."""

    _SUMMED = (
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
    )

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        totals: dict[str, float] = {}
        docs: dict[str, str] = {}
        for pid in worker_pids(self._path):
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                if family.name not in self._SUMMED:
                    continue
                docs[family.name] = family.documentation
                for sample in family.samples:
                    totals[family.name] = totals.get(family.name, 0.0) + sample.value
        for name, value in totals.items():
            if name == "process_cpu_seconds":
                from prometheus_client.core import CounterMetricFamily

                yield CounterMetricFamily(name, docs[name] + " (all workers)", value=value)
            else:
                yield GaugeMetricFamily(name, docs[name] + " (all workers)", value=value)
