"""Settings: one object, read from ASR_* environment variables, passed down explicitly.

Sub-models group the settings by concern; each is a BaseSettings of its own so that its
variables keep flat, readable names (ASR_QUEUE_SIZE, ASR_QUALITY_SAMPLE_RATE).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "asr-service"


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True)


# OpenAI's transcription model names: clients hard-code them, so the default model answers to them.
OPENAI_TRANSCRIPTION_MODELS = (
    "whisper-1,gpt-transcribe,gpt-live-transcribe,gpt-4o-transcribe,gpt-4o-mini-transcribe,"
    "gpt-4o-mini-transcribe-2025-12-15,gpt-4o-transcribe-diarize,gpt-realtime-whisper"
)
_MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"


class ModelEntry(BaseModel):
    """One model the service may serve (an item of ASR_MODELS): an engine instance with its own
    lifecycle, chosen by requests through its id or an alias."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., pattern=_MODEL_ID, description="What requests name it by, and its metrics label.")
    backend: str = Field("faster-whisper", description="Engine: faster-whisper, openai-whisper or sensevoice.")
    model: str = Field(..., min_length=1, description="As ASR_MODEL: embedded:base, a name, a directory or file.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "auto"
    aliases: tuple[str, ...] = Field((), description="Other names for it, e.g. whisper-1, gpt-4o-transcribe.")
    preload: bool = Field(False, description="Load at startup (readiness waits for it); else on first use.")
    ttl_seconds: float | None = Field(None, gt=0, description="Unload after this long unused; None: never.")

    @field_validator("aliases")
    @classmethod
    def aliases_are_names(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not re.match(_MODEL_ID, alias):
                raise ValueError(f"alias {alias[:40]!r} is not a model name (letters, digits, . _ : / -)")
        return aliases


def _model_entries(value: Any) -> Any:
    """ASR_MODELS as given: a JSON list, or the path of a file holding one."""
    if not isinstance(value, str) or not value.strip():
        return value or None
    text = value.strip()
    if not text.startswith("["):
        try:
            text = Path(text).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"ASR_MODELS is neither a JSON list nor a readable file: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"ASR_MODELS is not valid JSON: {exc}") from None


class ModelSettings(BaseSettings):
    """Which engine runs which model, where."""

    model_config = _config("ASR_")

    backend: str = Field("faster-whisper", description="Engine: faster-whisper, openai-whisper or sensevoice.")
    model: str = Field(
        "embedded:base",
        description="Model: `embedded:base` (shipped Whisper base), `embedded:tiny.en`, a name such as "
        "`large-v3`, a hub id, or a local directory / checkpoint file.",
    )
    model_label: str | None = Field(
        None,
        description="Name the model is reported under in metrics and /v1/models (default: derived from ASR_MODEL).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where inference runs.")
    compute_type: str = Field(
        "auto", description="CTranslate2 compute type; `auto` is int8 on CPU and float16 on CUDA."
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="CPU threads per inference worker; 0 divides the host's cores among the workers of "
        "all processes (1 each with the default worker count).",
    )
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR, description="Where the embedded model is assembled and hub models are cached."
    )
    local_files_only: bool = Field(False, description="Never contact a model hub; load only what is already on disk.")
    models: Annotated[tuple[ModelEntry, ...] | None, NoDecode] = Field(
        None,
        description="Several models: a JSON list (or the path of a JSON file) of entries {id, backend, model, "
        "device, compute_type, aliases, preload, ttl_seconds}; the first is the default. Unset: one model from "
        "ASR_BACKEND / ASR_MODEL, preloaded, answering to ASR_MODEL_ALIASES (docs/models.md).",
    )
    model_aliases: str = Field(
        OPENAI_TRANSCRIPTION_MODELS,
        description="Without ASR_MODELS: other names the one model answers to (comma-separated).",
    )
    model_memory_budget_bytes: int = Field(
        0,
        ge=0,
        description="Most memory the loaded models may take together (heap in use on CPU, GPU memory on CUDA, "
        "measured at each load); the least recently used idle ones are unloaded to make room. 0: no budget.",
    )
    model_load_wait_seconds: float = Field(
        60.0, ge=0, description="How long a request waits for its model to load on demand, else 503 Retry-After."
    )

    @field_validator("models", mode="before")
    @classmethod
    def read_models(cls, value: Any) -> Any:
        return _model_entries(value)

    @field_validator("models")
    @classmethod
    def names_are_unique(cls, entries: tuple[ModelEntry, ...] | None) -> tuple[ModelEntry, ...] | None:
        if entries is not None:
            if not entries:
                raise ValueError("ASR_MODELS lists no model")
            seen: set[str] = set()
            for name in (n for e in entries for n in (e.id, *e.aliases)):
                if name in seen:
                    raise ValueError(f"ASR_MODELS names {name!r} twice (ids and aliases must be unique)")
                seen.add(name)
        return entries


class DecodeSettings(BaseSettings):
    """Decoding defaults; they equal faster-whisper 1.2.1's own defaults unless changed."""

    model_config = _config("ASR_")

    beam_size: int = Field(5, ge=1, le=20, description="Beam size for decoding.")
    best_of: int = Field(5, ge=1, le=20, description="Candidates when sampling with temperature > 0.")
    condition_on_previous_text: bool = Field(
        True, description="Feed the previous window's text as a prompt to the next."
    )
    vad_filter_default: bool = Field(
        False, description="Whether requests that do not say otherwise drop silence with Silero VAD."
    )
    long_audio_window_seconds: float = Field(
        300.0,
        ge=10.0,
        description="Audio longer than this is transcribed in windows cut at quiet points, so memory stays bounded "
        "(peak memory grows with the window, not with the file).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Inside one long file: its 30 s chunks decoded per batched engine call (faster-whisper's "
        "batched pipeline). Across requests: ASR_BATCH_MAX_SIZE.",
    )
    batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Batched inference (faster-whisper): `auto` batches everything on CUDA and, on a CPU, audio of "
        "at least ASR_BATCH_MIN_SECONDS (measured 1.36x faster at equal threads, WER within 0.01).",
    )
    batch_min_seconds: float = Field(
        60.0, ge=0, description="Shortest audio batched on a CPU with ASR_BATCHING=auto (a batch needs 2+ chunks)."
    )


class LimitSettings(BaseSettings):
    """What one request may ask of the service."""

    model_config = _config("ASR_")

    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0, description="Largest upload accepted (413 beyond).")
    max_audio_seconds: float = Field(7200.0, gt=0, description="Longest audio accepted (413 beyond).")
    request_timeout_seconds: float = Field(
        300.0, gt=0, description="Base time a request may take, queue wait included (504 beyond)."
    )
    timeout_per_audio_second: float = Field(
        1.0, ge=0, description="Extra timeout granted per second of audio, so long files are not cut short."
    )
    max_keywords: int = Field(
        50, ge=0, le=1000, description="Most `keywords` one request or stream may give (422 beyond); 0: none allowed."
    )
    max_keyword_chars: int = Field(
        64, ge=1, le=1000, description="Longest keyword accepted, in characters (422 beyond)."
    )


class SchedulerSettings(BaseSettings):
    """Admission control in front of the engine."""

    model_config = _config("ASR_")

    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Inference workers (concurrent transcriptions) per process; 0: one per CPU core "
        "(shared among ASR_PROCESSES), or 1 on a GPU, which batches instead.",
    )
    queue_size: int = Field(16, ge=0, le=10_000, description="Requests that may wait for a worker (429 beyond).")
    interactive_order: Literal["fair", "arrival"] = Field(
        "fair",
        description="Which waiting request a free worker takes: `fair`, the highest response ratio (time waited "
        "plus expected time, over expected time: short requests pass long ones, long ones are not starved); "
        "`arrival`, first come first served.",
    )
    queue_wait_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="How long /asr and /detect-language requests wait for a place when the queue is full, "
        "instead of a 429 (whisper-asr-webservice clients such as Bazarr do not retry); 0: answer 429.",
    )
    decode_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Uploads decoded at once per process; 0: one per CPU core (shared among ASR_PROCESSES). "
        "Others wait their turn, holding their place in the queue.",
    )
    batch_max_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Across requests: most clips of at most 30 s (file requests, stream turns and partials) that "
        "the scheduler gathers into one engine call, of one model and priority; 1 turns dynamic batching off. "
        "Within one long file: ASR_BATCH_SIZE.",
    )
    batch_wait_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="How long a worker may wait for admitted requests still being decoded to join its batch, "
        "only while every other worker is busy (never at concurrency 1). Measured at concurrency 8 with base on "
        "2 cores: 50 ms gave 1.63x the throughput of no batching, 10 ms 1.28x.",
    )


class ServerSettings(BaseSettings):
    """The HTTP listener, auth and logs."""

    model_config = _config("ASR_")

    host: str = Field("127.0.0.1", description="Address `serve` binds to (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="Port `serve` listens on.")
    processes: int = Field(
        1, ge=1, le=64, description="Uvicorn worker processes; above 1, metrics use multiprocess mode."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve /metrics on this port only, off the public listener."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer token every route requires but /healthz, /readyz, /metrics and the API docs "
        "(the key named `default`; keys are off when neither this nor ASR_API_KEYS is set).",
    )
    api_keys: Path | None = Field(
        None,
        description="TOML file of named keys, stored as SHA-256 hashes, each with optional limits (see docs/auth.md; "
        "`python -m service keys add NAME` makes one); re-read when it changes. Each key sees only its own jobs.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the sample review API (off when unset); on the other routes it is the "
        "`admin` caller, who sees every key's jobs and has no per-key limits.",
    )
    client_secret_seconds: int = Field(
        120,
        ge=1,
        le=7200,
        description="Lifetime of a Realtime client secret (POST /v1/realtime/client_secrets) whose request names none.",
    )
    client_secret_max_seconds: int = Field(
        600,
        ge=1,
        le=7200,
        description="Longest lifetime a client secret may ask for (`expires_after.seconds` is cut to it).",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, how long requests already admitted may run on (readiness turns 503 at once); "
        "what is left then is answered 503.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Open connections per process at most (HTTP and WebSocket); one more is answered 503 and "
        "closed. Never more than the file-descriptor limit leaves room for (64 are kept for files).",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A connection must send its whole request head within this long of opening (or of its next "
        "request's first byte), else it is closed.",
    )
    keepalive_seconds: int = Field(5, ge=1, le=300, description="An idle kept-alive connection is closed after this.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    log_file: Path | None = Field(None, description="Also append logs to this file.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


class KeyLimitSettings(BaseSettings):
    """What each API key may use at once and per hour (defaults; the keys file overrides them per key)."""

    model_config = _config("ASR_KEY_")

    max_in_flight: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Transcription requests, job submissions and live streams one key may have in flight in a "
        "process (429 `key_concurrency_limit` beyond); 0: no limit.",
    )
    audio_seconds_per_hour: float = Field(
        0.0,
        ge=0,
        description="Audio seconds one key may have transcribed in a process over the last hour (429 "
        "`key_audio_limit` once spent); 0: no limit.",
    )


class QualitySettings(BaseSettings):
    """The quality loop: sampling, the sample store, the scoring job."""

    model_config = _config("ASR_QUALITY_")

    sample_rate: float = Field(0.01, ge=0.0, le=1.0, description="Share of served requests kept for review.")
    min_per_stratum: float = Field(
        20.0,
        ge=0.0,
        description="Samples a day each stratum (language x duration bucket) gets at least, however rare.",
    )
    flagged_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="Keep rate for requests the hallucination guard flagged."
    )
    dir: Path = Field(DEFAULT_CACHE_DIR / "quality", description="Where samples and their SQLite index live.")
    max_samples: int = Field(10_000, ge=1, description="Most samples kept; the oldest go first.")
    retention_days: float = Field(30.0, gt=0, description="Samples older than this are deleted.")
    max_sample_seconds: float = Field(600.0, gt=0, description="Longer requests are never sampled.")
    interval_seconds: float = Field(300.0, gt=0, description="How often the scoring job runs in the service.")
    normalizer: Literal["auto", "basic", "whisper"] = Field(
        "auto",
        description="Text normalisation before scoring: `auto` and `whisper` use Whisper's English normaliser "
        "for English (the torch-free whisper-normalizer package), `basic` only case, punctuation and spacing.",
    )


class ShadowSettings(BaseSettings):
    """Shadow scoring: a reference engine re-transcribes quality samples while workers are idle."""

    model_config = _config("ASR_SHADOW_")

    model: str | None = Field(
        None,
        description="Reference model for shadow scoring (as ASR_MODEL: e.g. `large-v3`, or `embedded:base` beside "
        "a served tiny.en); unset: off. Needs the quality loop (ASR_QUALITY_SAMPLE_RATE > 0).",
    )
    backend: str = Field("faster-whisper", description="Engine of the shadow model.")
    budget_seconds_per_hour: float = Field(
        600.0, gt=0, description="Most engine seconds shadow scoring may use in any hour."
    )
    interval_seconds: float = Field(60.0, gt=0, description="How often shadow scoring looks for new samples.")


class StreamSettings(BaseSettings):
    """Live transcription over the Realtime WebSocket (/v1/realtime)."""

    model_config = _config("ASR_")

    max_streams: int = Field(
        8,
        ge=0,
        le=1000,
        description="Live streams per process at once: Realtime WebSocket sessions and Wyoming connections together; "
        "one more gets an error event (and close 1013 on the WebSocket).",
    )
    stream_idle_seconds: float = Field(30.0, gt=0, description="A stream that sends nothing for this long is closed.")
    stream_max_seconds: float = Field(3600.0, gt=0, description="The longest a stream may stay connected.")
    stream_max_frame_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest audio one append may carry (decoded); larger gets an error event."
    )
    stream_partial_seconds: float = Field(
        0.5,
        gt=0,
        description="New audio between two partial hypotheses of a turn (each decodes the turn's audio since "
        "its last confirmed word).",
    )
    stream_partial_beam_size: int = Field(
        1,
        ge=0,
        le=20,
        description="Beam for partial hypotheses; 0: ASR_BEAM_SIZE. The turn's final is decoded at the "
        "session's beam whatever this is.",
    )
    stream_partial_model: str | None = Field(
        None,
        description="An ASR_MODELS id or alias whose model decodes live partial hypotheses (a small fast one, "
        "e.g. tiny.en, preloaded), while each turn's final comes from the session's model; unset: the "
        "session's model. Not used for a session whose language it does not know.",
    )
    stream_partial_agreement: int = Field(
        2,
        ge=2,
        le=5,
        description="Consecutive partial hypotheses that must agree on a word before it is sent, unless its "
        "own timing is stable already (ASR_STREAM_PARTIAL_STABLE_SECONDS).",
    )
    stream_partial_stable_seconds: float = Field(
        0.3,
        ge=0.0,
        le=5.0,
        description="A word of a single partial hypothesis is sent once it ended this long before the end of "
        "the audio that hypothesis heard (and its probability is 0.7 or more).",
    )
    stream_context_chars: int = Field(
        200,
        ge=0,
        le=1000,
        description="Characters of the session's recent final text given as the prompt of its next turns "
        "(forgotten after a turn that looks like a hallucination); 0: each turn is decoded alone.",
    )
    stream_max_turn_seconds: float = Field(
        30.0, ge=5.0, le=120.0, description="A turn is finalised at this length even if the speaker goes on."
    )
    stream_max_buffer_seconds: float = Field(
        120.0,
        gt=0,
        description="Without server VAD, audio held until the client commits; beyond it the oldest is dropped.",
    )
    stream_final_wait_seconds: float = Field(
        10.0, ge=0, description="How long a finished turn waits for a place when the queue is full."
    )
    stream_max_pending_turns: int = Field(
        8,
        ge=1,
        le=100,
        description="Finished turns of one stream waiting for (or in) their final decode; past it a commit gets "
        "an error event and a VAD turn fails at once.",
    )
    stream_max_events_per_second: float = Field(
        200.0,
        gt=0,
        description="Client events one stream may send per second (bursts of a second's worth); the rest get an "
        "error event and are dropped unread.",
    )
    stream_max_audio_per_second: float = Field(
        4.0,
        gt=0,
        description="Seconds of audio one stream may send per second, on average (a live source sends 1); the "
        "excess gets an error event and is dropped.",
    )
    stream_audio_burst_seconds: float = Field(
        150.0,
        gt=0,
        description="Audio a stream may send at once beyond that rate (the largest frame at 8 kHz is 131 s).",
    )
    stream_send_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A client that reads nothing for this long while events wait for it is closed "
        "(slow consumer), as is one with more than 1 MiB of events waiting.",
    )


class WyomingSettings(BaseSettings):
    """The Wyoming speech-to-text server for Home Assistant (service.wyoming; docs/wyoming.md)."""

    model_config = _config("ASR_WYOMING_")

    port: int | None = Field(
        None, ge=1, le=65535, description="Serve Wyoming on this TCP port (10300 by convention); unset: off."
    )
    host: str = Field(
        "127.0.0.1",
        description="Address the Wyoming server binds to. Wyoming has no authentication: expose it only to a "
        "trusted network (Home Assistant's host).",
    )
    streaming: bool = Field(
        True,
        description="Send transcript-start / -chunk / -stop while audio arrives to clients of wyoming 1.7 or later; "
        "false: plain transcripts only.",
    )
    speculate_silence_ms: int = Field(
        300,
        ge=0,
        le=2000,
        description="Silence after speech (server VAD) that starts the final decode before the client's "
        "audio-stop, kept if no speech follows; 0: decode only after audio-stop.",
    )
    max_utterance_seconds: float = Field(
        60.0, gt=0, le=600, description="Longest utterance accepted; more audio gets an error event."
    )
    max_utterance_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Most audio bytes one utterance may carry; more gets an error event."
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=65536, description="Largest event (header, data and payload) read; larger ends the connection."
    )
    idle_seconds: float = Field(
        30.0, gt=0, description="A connection that sends nothing for this long, with no answer owed, is closed."
    )
    send_timeout_seconds: float = Field(
        10.0, gt=0, description="A client that takes longer to take one event is closed (slow consumer)."
    )
    zeroconf: bool = Field(
        False,
        description="Announce the server as _wyoming._tcp over mDNS (the `zeroconf` extra) so that Home Assistant "
        "discovers it.",
    )
    zeroconf_name: str = Field("asr-service", min_length=1, max_length=63, description="The announced service name.")


class JobSettings(BaseSettings):
    """Long audio as jobs: submitted, worked on in the background, fetched later."""

    model_config = _config("ASR_JOBS_")

    dir: Path = Field(DEFAULT_CACHE_DIR / "jobs", description="Where job uploads and the job table (SQLite) live.")
    max_queued: int = Field(32, ge=1, le=10_000, description="Jobs waiting or running at once (429 beyond).")
    concurrency: int = Field(2, ge=1, le=64, description="Jobs each process works on at the same time.")
    window_seconds: float = Field(
        120.0,
        ge=30.0,
        description="Audio per job window: the unit of progress, of resumption after a restart, and of turns on "
        "the workers (a request waits at most one window when jobs hold every worker).",
    )
    retention_hours: float = Field(72.0, gt=0, description="Finished jobs (and their results) are deleted after this.")


class DatabaseSettings(BaseSettings):
    """Shared state for several replicas: the job table and the quality sample index in PostgreSQL."""

    model_config = _config("ASR_DATABASE_")

    url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user:password@host:5432/asr`) for the job table and the quality "
        "sample index, shared by every replica (needs the `postgres` extra); unset: SQLite files in "
        "ASR_JOBS_DIR and ASR_QUALITY_DIR. Replicas must then share those directories too (uploads, audio).",
    )
    pool_size: int = Field(8, ge=2, le=100, description="Most PostgreSQL connections one process holds.")
    connect_timeout_seconds: float = Field(
        30.0, gt=0, description="How long to wait for PostgreSQL at startup, and for a free pooled connection."
    )


class WebhookSettings(BaseSettings):
    """The POST a job's `webhook_url` receives when it ends."""

    model_config = _config("ASR_WEBHOOK_")

    secret: SecretStr | None = Field(
        None, description="Key for the HMAC-SHA256 signature (X-ASR-Signature) of every webhook; unsigned when unset."
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated hosts webhooks may go to (empty: any whose address is allowed); others are "
        "refused with 422.",
    )
    allowed_networks: str = Field(
        "",
        description="Comma-separated CIDRs (e.g. `10.20.0.0/16,127.0.0.1/32`) webhooks may reach although they are "
        "not public; other private, loopback, link-local and reserved addresses are refused (checked on the "
        "address a name resolves to, when the webhook is sent).",
    )
    allow_private: bool = Field(
        False,
        description="Let webhooks reach any address, private, loopback and link-local included (cloud metadata "
        "services too): only where everyone who can submit a job is trusted. Prefer ASR_WEBHOOK_ALLOWED_NETWORKS.",
    )
    max_attempts: int = Field(6, ge=1, le=20, description="Deliveries tried before a webhook counts as failed.")
    retry_seconds: float = Field(
        5.0, gt=0, description="First retry delay; it doubles with each attempt (10 min at most)."
    )
    timeout_seconds: float = Field(10.0, gt=0, description="How long one delivery may take.")

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        # A typo must stop the start, not silently refuse every webhook to that network.
        for part in filter(None, (p.strip() for p in value.split(","))):
            ipaddress.ip_network(part, strict=False)
        return value


class DiarizationSettings(BaseSettings):
    """Who spoke: speaker diarization (the `diarization` extra), asked for per request."""

    model_config = _config("ASR_DIARIZATION_")

    embedder: Literal["resemblyzer", "pyannote"] = Field(
        "resemblyzer",
        description="Speaker embedder: `resemblyzer` (its weights ship in its wheel) or `pyannote` (a local "
        "pyannote.audio embedding model, ASR_DIARIZATION_MODEL; needs pyannote.audio).",
    )
    model: str | None = Field(
        None,
        description="pyannote only: the local directory or checkpoint of the embedding model (e.g. "
        "wespeaker-voxceleb-resnet34-LM); it is never fetched from a hub.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="Where the speaker embedder runs.")
    max_speakers: int = Field(
        10, ge=1, le=32, description="The most speakers an estimate finds, and a request may ask for."
    )
    match_threshold: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="Cosine similarity at which two voice prints are one speaker: a voice and a known speaker's "
        "reference, a job window's speaker and the job's, a live turn's and the session's.",
    )
    similarity: float = Field(
        0.8,
        gt=0.0,
        lt=1.0,
        description="Cosine similarity of two groups of windows' mean voice prints at or above which they are one "
        "speaker: it decides the estimated speaker count (lower merges more).",
    )


class SenseVoiceSettings(BaseSettings):
    """FunASR SenseVoiceSmall options (used when ASR_BACKEND=sensevoice)."""

    model_config = _config("ASR_SENSEVOICE_")

    vad_model: str | None = Field(
        None, description="FunASR VAD model (e.g. `fsmn-vad` or a local directory); none feeds audio whole."
    )
    max_single_segment_time: int = Field(30_000, gt=0, description="Longest VAD segment in milliseconds.")
    use_itn: bool = Field(True, description="Inverse text normalisation (punctuation, numbers).")
    batch_size_s: float = Field(60.0, gt=0, description="Seconds of audio per batch.")
    merge_vad: bool = Field(True, description="Merge short VAD segments.")
    merge_length_s: float = Field(15.0, gt=0, description="Merged segments' target length in seconds.")


class Settings(BaseModel):
    """Everything the service can be told. Build one and pass it down; nothing reads os.environ later.

    A plain model, not a BaseSettings: each group reads its own variables, and ASR_MODEL (a
    field of ModelSettings) must not be mistaken for the `model` group itself.
    """

    model_config = ConfigDict(frozen=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    keys: KeyLimitSettings = Field(default_factory=KeyLimitSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    wyoming: WyomingSettings = Field(default_factory=WyomingSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    diarization: DiarizationSettings = Field(default_factory=DiarizationSettings)
    sensevoice: SenseVoiceSettings = Field(default_factory=SenseVoiceSettings)


def iter_env_vars(settings_cls: type[BaseModel] = Settings) -> Iterator[tuple[str, Any, str]]:
    """Yield (environment variable, default, description) for every setting, in declaration order."""
    for field in settings_cls.model_fields.values():
        group = field.annotation
        assert isinstance(group, type) and issubclass(group, BaseSettings)
        prefix = str(group.model_config.get("env_prefix", ""))
        for name, sub in group.model_fields.items():
            default = sub.default
            if isinstance(default, Path) and default.is_relative_to(Path.home()):
                default = "~/" + str(default.relative_to(Path.home()))
            yield (prefix + name).upper(), default, sub.description or ""


def configuration_markdown() -> str:
    """Return the configuration table that README.md embeds (a test keeps the two equal)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, description in iter_env_vars():
        shown = "(unset)" if default is None else f"`{default}`"
        rows.append(f"| `{env}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
