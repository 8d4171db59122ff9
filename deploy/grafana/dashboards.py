"""Grafana dashboards as code: `python -m deploy.grafana.dashboards` writes dashboards/*.json.

Four dashboards with stable uids: overview, performance, quality, resources. Panels query the
`datasource` variable (the provisioned Prometheus by default), use $__rate_interval, and draw
the alert thresholds of deploy/prometheus/rules/alerts.yml (THRESHOLDS; a test checks that the
two agree). Metric names: docs/metrics.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from deploy.grafana.builder import Layout, dashboard, quantile, rate, sel, stat, timeseries
from service.metrics import (
    QUEUE_WAIT_ALERT_SECONDS,
    REQUEST_RTF_P95_ALERT,
    REQUEST_RTF_P99_ALERT,
    RTF_ALERT,
    STREAM_FINALISATION_SLO_SECONDS,
)

OUT = Path(__file__).resolve().parent / "dashboards"
TRANSCRIPTION = 'route=~"/transcribe|/v1/audio/transcriptions|/v1/audio/translations"'

# The thresholds of the alert rules, drawn on the panels that show the same quantity.
THRESHOLDS = {
    "request_rtf_p95": REQUEST_RTF_P95_ALERT,  # ASRSlowResponses
    "request_rtf_p99": REQUEST_RTF_P99_ALERT,  # ASRSlowResponsesTail
    "workers_busy_ratio": 0.9,  # ASRWorkersSaturated
    "stream_finalisation_p95_seconds": STREAM_FINALISATION_SLO_SECONDS,  # ASRStreamFinalisationSlow
    "rtf": RTF_ALERT,  # ASRSlowerThanRealTime
    "queue_saturation": 0.8,  # ASRQueueSaturated
    "queue_wait_p95_seconds": QUEUE_WAIT_ALERT_SECONDS,  # ASRQueueWaitHigh
    "rejected_ratio": 0.05,  # ASRRejectingRequests
    "slo_fast_burn_ratio": 14.4 * 0.005,  # ASRErrorBudgetBurnFast
    "wer": 0.15,  # ASRWordErrorRateHigh
    "cer": 0.15,  # ASRCharacterErrorRateHigh
    "quality_job_age_seconds": 1800,  # ASRQualityJobStale
    "gpu_memory_ratio": 0.95,  # GPUMemoryHigh
    "gpu_temperature_celsius": 85,  # GPUTooHot
    "gpu_utilization_ratio": 0.95,  # GPUUtilizationHigh
    "gpu_power_ratio": 0.95,  # GPUPowerNearLimit
    "host_memory_available_ratio": 0.10,  # HostMemoryLow
    "disk_available_ratio": 0.05,  # HostDiskAlmostFull
}
T = THRESHOLDS
RTF = f"sum({rate('asr_inference_seconds_total')}) / sum({rate('asr_audio_processed_seconds_total')})"
QUEUE_FULL = 'reason="queue_full"'
NOT_LOOPBACK = 'device!="lo"'


def overview() -> dict[str, Any]:
    lay = Layout()
    lay.row("Service")
    lay.add(stat("Requests / s", f"sum({rate('asr_http_requests_total')})", "reqps"), 4, 4)
    ok = 'status=~"2.."'
    success = f"sum({rate('asr_http_requests_total', ok)}) / sum({rate('asr_http_requests_total')})"
    lay.add(stat("Success ratio", success, "percentunit", 0.995, below_is_bad=True), 4, 4)
    p95 = quantile(0.95, "asr_request_realtime_factor")
    answer = "Seconds from admission to answer per second of audio; above 1 answers take longer than the audio."
    lay.add(stat("p95 answer time per audio second", p95, "none", T["request_rtf_p95"], description=answer), 4, 4)
    lay.add(stat("Real-time factor", RTF, "none", T["rtf"]), 4, 4)
    saturation = f"sum(asr_queue_depth{sel()}) / sum(asr_queue_capacity{sel()})"
    lay.add(stat("Queue", saturation, "percentunit", T["queue_saturation"]), 4, 4)
    ready = "1 once the model is loaded and warmed up on every instance."
    lay.add(stat("Ready", f"min(asr_ready{sel()})", "bool_yes_no", 1, below_is_bad=True, description=ready), 4, 4)
    known = 'route!="<unmatched>"'
    by_status = f"sum by (route, status) ({rate('asr_http_requests_total', known)})"
    lay.add(timeseries("Requests by route and status", [(by_status, "{{route}} {{status}}")], "reqps", stack=True), 12)
    latency = [
        (quantile(q, "asr_http_request_duration_seconds", extra='route="/transcribe"'), f"p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    lay.add(timeseries("Latency /transcribe", latency, "s"), 12)
    burn = [
        ('job:asr_slo_errors:ratio_rate5m{job="asr"}', "errors 5m"),
        ('job:asr_slo_errors:ratio_rate1h{job="asr"}', "errors 1h"),
    ]
    burn_doc = "Share of transcription requests answered 5xx or 429; the line is the fast-burn page level."
    lay.add(
        timeseries(
            "Error-budget burn (SLO 99.5%)", burn, "percentunit", T["slo_fast_burn_ratio"], description=burn_doc
        ),
        12,
    )
    rejections = f"sum by (reason) ({rate('asr_requests_rejected_total')})"
    lay.add(timeseries("Rejections by reason", [(rejections, "{{reason}}")], "reqps", stack=True), 12)
    lay.row("Engine and quality")
    worst_wer = 'max(job_language:asr_quality_wer:ratio1d{job="asr"})'
    lay.add(stat("Word error rate (1d, worst language)", worst_wer, "percentunit", T["wer"]), 6, 4)
    gpu = "max(asr_gpu_memory_used_bytes / asr_gpu_memory_total_bytes)"
    lay.add(
        stat("GPU memory used", gpu, "percentunit", T["gpu_memory_ratio"], description="Empty without a GPU."), 6, 4
    )
    flagged = f"sum(increase(asr_suspected_hallucinations_total{sel()}[1h]))"
    lay.add(stat("Suspected hallucinations / h", flagged), 6, 4)
    lay.add(stat("Model load time", f"max(asr_model_load_seconds{sel()})", "s"), 6, 4)
    return dashboard("asr-overview", "ASR overview", "Rate, success, latency, RTF, queue and quality at a glance.", lay)


def performance() -> dict[str, Any]:
    lay = Layout()
    lay.row("Latency")
    per_audio = "Seconds from admission to answer (decode, queue, engine) per second of audio."
    for q, key in ((0.95, "request_rtf_p95"), (0.99, "request_rtf_p99")):
        answer = [(quantile(q, "asr_request_realtime_factor", "model"), "{{model}}")]
        title = f"Answer time per audio second p{round(q * 100)}"
        lay.add(timeseries(title, answer, "none", T[key], description=per_audio), 12)
    by_route = quantile(0.95, "asr_http_request_duration_seconds", "route", 'route!="<unmatched>"')
    lay.add(timeseries("p95 latency by route", [(by_route, "{{route}}")], "s"), 12)
    week = [
        ('job:asr_request_realtime_factor:p95_1h{job="asr"}', "now"),
        ('job:asr_request_realtime_factor:p95_1h{job="asr"} offset 7d', "7 days ago"),
    ]
    lay.add(
        timeseries(
            "p95 answer time per audio second, this week and last",
            week,
            "none",
            description="ASRLatencyDrift fires above 1.5x last week's value.",
        ),
        12,
    )
    engine = quantile(0.95, "asr_inference_duration_seconds", "language")
    lay.add(timeseries("Engine time p95 by language", [(engine, "{{language}}")], "s"), 12)
    audio = [(quantile(q, "asr_audio_duration_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.95)]
    lay.add(timeseries("Audio duration p50 / p95", audio, "s"), 12)
    lay.row("Real-time factor")
    by_model = (
        f"sum by (backend, model) ({rate('asr_inference_seconds_total')}) / "
        f"sum by (backend, model) ({rate('asr_audio_processed_seconds_total')})"
    )
    lay.add(
        timeseries("RTF by backend and model (aggregate)", [(by_model, "{{backend}} {{model}}")], "none", T["rtf"]), 12
    )
    per_request = [
        (quantile(q, "asr_realtime_factor", "model"), f"p{round(q * 100)} {{{{model}}}}") for q in (0.5, 0.95)
    ]
    lay.add(timeseries("RTF per request p50 / p95", per_request, "none", T["rtf"]), 12)
    seconds = f"sum by (language) ({rate('asr_audio_processed_seconds_total')})"
    lay.add(timeseries("Audio seconds per second by language", [(seconds, "{{language}}")], stack=True), 12)
    batch = f"sum({rate('asr_batch_size_sum')}) / sum({rate('asr_batch_size_count')})"
    lay.add(
        timeseries(
            "Mean GPU batch size", [(batch, "segments per batch")], "none", description="Only with batching (CUDA)."
        ),
        12,
    )
    lay.row("Queue")
    wait = [(quantile(0.95, "asr_queue_wait_seconds"), "p95")]
    lay.add(timeseries("Queue wait p95", wait, "s", T["queue_wait_p95_seconds"]), 8)
    queue = [
        (f"sum(asr_queue_depth{sel()})", "waiting"),
        (f"sum(asr_queue_capacity{sel()})", "capacity"),
        (f"sum(asr_http_requests_in_flight{sel()})", "in flight"),
    ]
    lay.add(timeseries("Queue depth and capacity", queue), 8)
    refused = (
        f"sum({rate('asr_requests_rejected_total', QUEUE_FULL)}) / "
        f"sum({rate('asr_http_requests_total', TRANSCRIPTION)})"
    )
    lay.add(timeseries("429 share", [(refused, "refused")], "percentunit", T["rejected_ratio"]), 8)
    busy = f"sum(avg_over_time(asr_workers_busy{sel()}[$__rate_interval])) / sum(asr_workers{sel()})"
    workers = "Share of inference worker time in use over every instance; jobs and streams count too."
    lay.add(
        timeseries("Workers busy", [(busy, "busy")], "percentunit", T["workers_busy_ratio"], description=workers), 8
    )
    decode = [
        (quantile(0.95, "asr_decode_seconds"), "decode p95"),
        (f"sum(asr_decodes_in_flight{sel()})", "decoding now"),
    ]
    lay.add(timeseries("Decoding", decode), 8)
    lay.row("Live streams (Realtime WebSocket, Wyoming), by entry point")
    streams = [
        (f"sum by (entrypoint) (asr_streams_active{sel()})", "{{entrypoint}} open"),
        (f"sum by (entrypoint) ({rate('asr_stream_audio_seconds_total')})", "{{entrypoint}} audio s/s"),
    ]
    lay.add(timeseries("Streams open and live audio", streams, description="Audio seconds received per second."), 8)
    final = (
        "From the end of a turn's speech (Wyoming: the audio-stop) to its final transcript; the line is the 2 s SLO."
    )
    turn_latency = [
        (quantile(0.95, "asr_stream_finalisation_seconds", "entrypoint"), "{{entrypoint}} finalisation p95"),
        (quantile(0.95, "asr_stream_first_partial_seconds", "entrypoint"), "{{entrypoint}} first partial p95"),
    ]
    lay.add(
        timeseries("Turn latency", turn_latency, "s", T["stream_finalisation_p95_seconds"], description=final),
        8,
    )
    revised = (
        f"sum({rate('asr_stream_partial_revisions_total')}) / sum({rate('asr_stream_finalisation_seconds_count')})"
    )
    dropped = f"sum by (reason) ({rate('asr_stream_audio_dropped_seconds_total')})"
    lay.add(
        timeseries(
            "Revised turns and dropped audio",
            [(revised, "turns revised (share)"), (dropped, "dropped audio s/s {{reason}}")],
            description="Revised: the final text did not begin with the partial text already sent.",
        ),
        8,
    )
    lay.row("Wyoming (Home Assistant voice)")
    wy = 'entrypoint="wyoming"'
    traffic = [
        (f"sum(asr_streams_active{sel(wy)})", "connections open"),
        (f"sum({rate('asr_stream_finalisation_seconds_count', wy)})", "utterances / s"),
        (f"sum({rate('asr_stream_audio_seconds_total', wy)})", "audio s/s"),
    ]
    lay.add(timeseries("Connections, utterances and audio", traffic), 8)
    stop_doc = "From the client's audio-stop to the transcript sent (the early final makes it shorter than a decode)."
    wy_latency = [
        (quantile(q, "asr_stream_finalisation_seconds", extra=wy), f"audio-stop to transcript p{round(q * 100)}")
        for q in (0.5, 0.95)
    ]
    lay.add(
        timeseries(
            "Latency after audio-stop", wy_latency, "s", T["stream_finalisation_p95_seconds"], description=stop_doc
        ),
        8,
    )
    wy_errors = [
        (f"sum by (reason) ({rate('asr_stream_events_rejected_total', wy)})", "error events {{reason}}"),
        (f"sum by (reason) ({rate('asr_streams_closed_total', wy)})", "closed {{reason}}"),
    ]
    lay.add(
        timeseries(
            "Errors and closes by reason", wy_errors, description="Error events sent and why connections ended."
        ),
        8,
    )
    lay.row("Jobs (long audio in the background)")
    states = [(f"max by (state) (asr_jobs{sel()})", "{{state}}")]
    lay.add(timeseries("Jobs by state", states, description="Finished jobs count until their retention ends."), 8)
    lay.add(
        timeseries(
            "Job duration p50 / p95",
            [(quantile(q, "asr_job_duration_seconds"), f"p{round(q * 100)}") for q in (0.5, 0.95)],
            "s",
        ),
        8,
    )
    hooks = [(f"sum by (outcome) (increase(asr_webhook_deliveries_total{sel()}[$__rate_interval]))", "{{outcome}}")]
    lay.add(timeseries("Webhook deliveries by outcome", hooks, stack=True), 8)
    lay.row("Models (ASR_MODELS: loaded on demand, unloaded by TTL, budget or the admin)")
    loaded = [(f"max by (model) (asr_model_loaded{sel()})", "{{model}}")]
    lay.add(timeseries("Loaded models", loaded, description="1 while loaded, per ASR_MODELS id."), 6)
    memory = [(f"sum by (model) (asr_model_memory_bytes{sel()})", "{{model}}")]
    budget_doc = "What each load added (RSS on CPU, GPU memory on CUDA); their sum stays within the budget."
    lay.add(timeseries("Model memory", memory, "bytes", stack=True, description=budget_doc), 6)
    churn = [
        (
            f"sum by (model, reason) (increase(asr_model_loads_total{sel()}[$__rate_interval]))",
            "load {{model}} {{reason}}",
        ),
        (
            f"sum by (model, reason) (increase(asr_model_unloads_total{sel()}[$__rate_interval]))",
            "unload {{model}} {{reason}}",
        ),
    ]
    thrash_doc = "ASRModelThrashing fires when a model is evicted by the budget and loaded again 3+ times an hour."
    lay.add(timeseries("Loads and unloads by reason", churn, description=thrash_doc), 6)
    load_time = [(f"max by (model) (asr_model_load_seconds{sel()})", "{{model}}")]
    lay.add(timeseries("Load time (with warm-up)", load_time, "s"), 6)
    lay.row("Speakers (diarization)")
    added = f"sum({rate('asr_diarization_duration_seconds_sum')}) / sum({rate('asr_diarization_audio_seconds_total')})"
    lay.add(
        timeseries(
            "Diarization: RTF added and p95 time",
            [(added, "RTF added"), (quantile(0.95, "asr_diarization_duration_seconds"), "p95 seconds")],
            "none",
            description="Seconds spent finding who spoke per audio second diarized, on top of the engine's RTF.",
        ),
        8,
    )
    speakers = f"sum({rate('asr_diarization_speakers_sum')}) / sum({rate('asr_diarization_speakers_count')})"
    lay.add(
        timeseries(
            "Speakers per diarized request",
            [(speakers, "mean speakers"), (quantile(0.95, "asr_diarization_speakers"), "p95")],
            "none",
        ),
        8,
    )
    matches = [
        (f"sum by (outcome) (increase(asr_known_speaker_matches_total{sel()}[$__rate_interval]))", "{{outcome}}")
    ]
    lay.add(
        timeseries(
            "Known-speaker references by outcome",
            matches,
            stack=True,
            description="matched: a voice in the audio took the reference's name; unmatched: none was alike enough.",
        ),
        8,
    )
    return dashboard(
        "asr-performance",
        "ASR performance",
        "Latency and RTF by route, language and model; queue wait, in-flight and 429s.",
        lay,
    )


def quality() -> dict[str, Any]:
    lay = Layout()
    lay.row("Error rates (sampled requests scored against references)")
    for unit, title, key in (
        ("wer", "Word error rate by language", "wer"),
        ("cer", "Character error rate by language (zh, yue, ja, ko)", "cer"),
    ):
        queries = [
            (f'job_language:asr_quality_{unit}:ratio1d{{job="asr"}}', "{{language}} 1d"),
            (f'job_language:asr_quality_{unit}:ratio1h{{job="asr"}}', "{{language}} 1h"),
        ]
        lay.add(timeseries(title, queries, "percentunit", T[key]), 12)
    scored = [
        ('job_language:asr_quality_reference_words:increase1d{job="asr"}', "{{language}} words"),
        ('job_language:asr_quality_reference_chars:increase1d{job="asr"}', "{{language}} characters"),
    ]
    lay.add(
        timeseries(
            "Reference words scored per day",
            scored,
            description="WER alerts need 200 words a day (CER: 500 characters).",
        ),
        12,
    )
    kept = f"sum by (language, stratum) (increase(asr_quality_samples_total{sel()}[1h]))"
    lay.add(timeseries("Samples kept per hour", [(kept, "{{language}} {{stratum}}")], stack=True), 12)
    both = [
        ('job_language:asr_quality_wer:ratio1d{job="asr"}', "{{language}} estimate (weighted)"),
        ('job_language:asr_quality_wer_unweighted:ratio1d{job="asr"}', "{{language}} samples (unweighted)"),
    ]
    weighting = (
        "The estimate weights each sample by 1 / the probability it was kept with (Horvitz-Thompson); "
        "the unweighted figure over-counts oversampled rare strata and flagged requests."
    )
    lay.add(
        timeseries("WER: estimate for all requests vs the samples' own", both, "percentunit", description=weighting), 12
    )
    lay.row("Shadow scoring (served model vs a stronger engine, no references needed)")
    shadow = [
        ('job_language:asr_quality_shadow_wer:ratio1d{job="asr"}', "{{language}} WER vs shadow 1d"),
        ('job_language:asr_quality_shadow_wer:ratio7d{job="asr"}', "{{language}} WER vs shadow 7d"),
        ('job_language:asr_quality_shadow_cer:ratio1d{job="asr"}', "{{language}} CER vs shadow 1d"),
    ]
    disagreement = "Not WER: the shadow engine errs too. ASRShadowDisagreementRising fires at 1.5x the 7-day figure."
    lay.add(timeseries("Disagreement with the shadow model", shadow, "percentunit", description=disagreement), 12)
    budget = [
        (f"sum(increase(asr_quality_shadow_scored_samples_total{sel()}[1h]))", "samples shadowed / h"),
        (f"sum(increase(asr_quality_shadow_seconds_total{sel()}[1h]))", "engine seconds / h"),
    ]
    spent = "Engine seconds are capped by ASR_SHADOW_BUDGET_SECONDS_PER_HOUR; shadow work runs only on idle workers."
    lay.add(timeseries("Shadow work", budget, description=spent), 12)
    lay.row("Input audio (every request: level, clipping, silence, SNR, codec mix)")
    level = [
        (quantile(q, "asr_input_level_dbfs", "model"), f"p{round(q * 100)} {{{{model}}}}") for q in (0.1, 0.5, 0.9)
    ]
    lay.add(
        timeseries(
            "Speech level (dBFS)", level, "dB", description="ASRInputLevelShifted: median moved 6 dB vs last week."
        ),
        8,
    )
    barely = 'le="0.001"'
    clipped = (
        f"1 - sum by (model) ({rate('asr_input_clipping_ratio_bucket', barely)}) "
        f"/ sum by (model) ({rate('asr_input_clipping_ratio_count')})"
    )
    lay.add(timeseries("Requests with over 0.1% clipped samples", [(clipped, "{{model}}")], "percentunit"), 8)
    snr = [
        (quantile(0.5, "asr_input_snr_db", "model"), "SNR p50 {{model}} (dB)"),
        (quantile(0.5, "asr_input_silence_ratio", "model"), "silence share p50 {{model}}"),
    ]
    lay.add(
        timeseries(
            "SNR and silence", snr, description="SNR: loud frames over quiet ones; silence: frames under -50 dBFS."
        ),
        8,
    )
    mix = 'job_codec_rate:asr_input_audio:share1h{job="asr"}'
    lay.add(
        timeseries(
            "Input mix by codec and sample rate",
            [(mix, "{{codec}} {{sample_rate}} Hz"), (f"{mix} offset 7d", "{{codec}} {{sample_rate}} Hz last week")],
            "percentunit",
            description="ASRInputMixShifted: a share moved by 25% of requests against the same hour last week.",
        ),
        24,
    )
    lay.row("The loop")
    lay.add(stat("Pending references", f"max(asr_quality_pending_samples{sel()})"), 6, 4)
    age = f"time() - max(asr_quality_job_last_success_timestamp_seconds{sel()})"
    lay.add(stat("Since the job last succeeded", age, "s", T["quality_job_age_seconds"]), 6, 4)
    lay.add(stat("Samples scored (1d)", f"sum(increase(asr_quality_scored_samples_total{sel()}[1d]))"), 6, 4)
    lay.add(
        stat("Samples skipped (1d)", f"sum(increase(asr_quality_skipped_samples_total{sel()}[1d]))", threshold=1), 6, 4
    )
    lay.row("Reference-free signals (every request)")
    flags = f"sum by (kind) (increase(asr_suspected_hallucinations_total{sel()}[$__rate_interval]))"
    dropped = f"sum by (kind) (increase(asr_segments_dropped_total{sel()}[$__rate_interval]))"
    lay.add(
        timeseries(
            "Suspected hallucinations by kind",
            [(flags, "flagged: {{kind}}"), (dropped, "dropped: {{kind}}")],
            description="Flagged: requests kept with a warning. Dropped: segments the guard was sure were invented.",
        ),
        8,
    )

    def share_past(histogram: str, le: str, above: bool) -> str:
        bucket = 'le="' + le + '"'
        part = f"sum({rate(histogram + '_bucket', bucket)}) / sum({rate(histogram + '_count')})"
        return f"1 - {part}" if above else part

    doubtful = [
        (share_past("asr_segment_avg_logprob", "-1.0", False), "avg log-prob below -1"),
        (share_past("asr_segment_no_speech_prob", "0.6", True), "no-speech prob above 0.6"),
        (share_past("asr_segment_compression_ratio", "2.4", True), "compression above 2.4"),
    ]
    lay.add(
        timeseries(
            "Doubtful segments",
            doubtful,
            "percentunit",
            description="Shares of segments past Whisper's own fallback thresholds.",
        ),
        8,
    )
    rich = [
        (f"sum by (emotion) ({rate('asr_emotion_total')})", "{{emotion}}"),
        (f"sum by (event) ({rate('asr_audio_events_total')})", "{{event}}"),
    ]
    lay.add(timeseries("Emotions and sound events (SenseVoice)", rich, description="Only with sensevoice."), 8)
    return dashboard(
        "asr-quality",
        "ASR quality",
        "WER/CER per language from sampled references, shadow scoring, input audio health, the loop, "
        "reference-free signals.",
        lay,
    )


def resources() -> dict[str, Any]:
    lay = Layout()
    # node-exporter's job is "node" in the compose stack, "node-exporter" in kube-prometheus-stack.
    node, fs = 'job=~"node|node-exporter"', 'job=~"node|node-exporter", fstype!~"tmpfs|overlay|squashfs|ramfs"'
    lay.row("GPU (dcgm-exporter; the service's NVML readings where dcgm-exporter is absent)")
    util = [("DCGM_FI_DEV_GPU_UTIL / 100", "dcgm gpu {{gpu}}"), ("asr_gpu_utilization_ratio", "nvml gpu {{gpu}}")]
    lay.add(timeseries("GPU utilisation", util, "percentunit", T["gpu_utilization_ratio"]), 6)
    memory = [
        ("DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)", "dcgm gpu {{gpu}}"),
        ("asr_gpu_memory_used_bytes / asr_gpu_memory_total_bytes", "nvml gpu {{gpu}}"),
    ]
    lay.add(timeseries("GPU memory used", memory, "percentunit", T["gpu_memory_ratio"]), 6)
    temp = [("DCGM_FI_DEV_GPU_TEMP", "dcgm gpu {{gpu}}"), ("asr_gpu_temperature_celsius", "nvml gpu {{gpu}}")]
    lay.add(timeseries("GPU temperature", temp, "celsius", T["gpu_temperature_celsius"]), 6)
    power = [("asr_gpu_power_watts / asr_gpu_power_limit_watts", "gpu {{gpu}}")]
    lay.add(timeseries("GPU power / its limit", power, "percentunit", T["gpu_power_ratio"]), 6)
    watts = [
        ("DCGM_FI_DEV_POWER_USAGE", "dcgm W gpu {{gpu}}"),
        ("asr_gpu_power_watts", "nvml W gpu {{gpu}}"),
        ("asr_gpu_process_memory_bytes / 2^30", "service GiB gpu {{gpu}}"),
    ]
    lay.add(timeseries("GPU power draw and the service's own GPU memory", watts), 6)
    lay.row("Host (node-exporter)")
    idle = 'mode="idle"'
    cpu = f"1 - avg by (instance) ({rate('node_cpu_seconds_total', idle, node)})"
    lay.add(timeseries("CPU busy", [(cpu, "{{instance}}")], "percentunit"), 6)
    available = f"node_memory_MemAvailable_bytes{sel(base=node)} / node_memory_MemTotal_bytes{sel(base=node)}"
    lay.add(
        timeseries(
            "Memory available",
            [(available, "{{instance}}")],
            "percentunit",
            T["host_memory_available_ratio"],
            below_is_bad=True,
        ),
        6,
    )
    disk = f"node_filesystem_avail_bytes{sel(base=fs)} / node_filesystem_size_bytes{sel(base=fs)}"
    lay.add(
        timeseries(
            "Disk free",
            [(disk, "{{instance}} {{mountpoint}}")],
            "percentunit",
            T["disk_available_ratio"],
            below_is_bad=True,
        ),
        6,
    )
    net = [
        (f"sum by (instance) ({rate(f'node_network_{d}_bytes_total', NOT_LOOPBACK, node)})", "{{instance}} " + d)
        for d in ("receive", "transmit")
    ]
    lay.add(timeseries("Network", net, "Bps"), 6)
    lay.row("Service process")
    lay.add(timeseries("Resident memory", [(f"process_resident_memory_bytes{sel()}", "{{instance}}")], "bytes"), 8)
    lay.add(timeseries("CPU", [(rate("process_cpu_seconds_total"), "{{instance}}")], "percentunit"), 8)
    lay.add(timeseries("Open file descriptors", [(f"process_open_fds{sel()}", "{{instance}}")]), 8)
    return dashboard("asr-resources", "ASR resources", "GPU (DCGM or NVML), host and service process resources.", lay)


DASHBOARDS = {
    "asr-overview": overview,
    "asr-performance": performance,
    "asr-quality": quality,
    "asr-resources": resources,
}


def render(name: str) -> str:
    """The dashboard's JSON as committed under dashboards/."""
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        (OUT / f"{name}.json").write_text(render(name))
        print(f"wrote {OUT / name}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
