"""Error types the service raises on purpose, each with its HTTP status and rejection reason.

The mapping lives here and only here: routers raise, app.py's handlers render
`{"error": {"code", "message", "type"}}` and count the rejection by `reason`.
"""

from __future__ import annotations

import errno
from typing import ClassVar

# Every value of asr_requests_rejected_total{reason}; pre-created at zero so alerts see them.
REJECTION_REASONS = (
    "too_large",
    "unsupported_media",
    "decode_error",
    "bad_request",
    "queue_full",
    "timeout",
    "backend_error",
    "unauthorized",
    "not_ready",
    "client_disconnected",
    "insufficient_storage",
    "shutting_down",
    "stream_limit",
    "key_limit",
)


class ServiceError(Exception):
    """Base of the errors that become a JSON answer. Subclasses fix status, code and reason."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    reason: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault (OpenAI's error shape names it)


class BadRequestError(ServiceError):
    """A parameter is missing or has a value the service does not know (422)."""

    status = 422
    code = "invalid_parameter"


class EmptyUploadError(ServiceError):
    """The upload holds no bytes at all (400)."""

    status = 400
    code = "empty_upload"


class UploadTooLargeError(ServiceError):
    """The upload passed ASR_MAX_UPLOAD_BYTES (413); raised while reading, not after."""

    status = 413
    code = "upload_too_large"
    reason = "too_large"


class AudioTooLongError(ServiceError):
    """The audio lasts longer than ASR_MAX_AUDIO_SECONDS (413)."""

    status = 413
    code = "audio_too_long"
    reason = "too_large"


class UnsupportedMediaError(ServiceError):
    """The upload is not audio that ffmpeg recognises: no container, or no audio stream (415)."""

    status = 415
    code = "unsupported_media"
    reason = "unsupported_media"


class AudioDecodeError(ServiceError):
    """The upload looks like audio but cannot be decoded: truncated or corrupt (422)."""

    status = 422
    code = "undecodable_audio"
    reason = "decode_error"


class UnsupportedFeatureError(ServiceError):
    """The request asks for something the loaded engine cannot do (422)."""

    status = 422
    code = "unsupported_feature"


class UnauthorizedError(ServiceError):
    """Missing or wrong bearer token (401)."""

    status = 401
    code = "unauthorized"
    reason = "unauthorized"

    def __init__(self, message: str = "missing or invalid bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFoundError(ServiceError):
    """The named resource does not exist (404)."""

    status = 404
    code = "not_found"


class QueueFullError(ServiceError):
    """Every worker is busy and the queue is full (429 with Retry-After)."""

    status = 429
    code = "queue_full"
    reason = "queue_full"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            f"the service is at capacity; retry in {retry_after_seconds} s",
            headers={"Retry-After": str(retry_after_seconds)},
        )
        self.retry_after_seconds = retry_after_seconds


class KeyBusyError(ServiceError):
    """The caller's key already has as much work in flight as its limit allows (429 with Retry-After)."""

    status = 429
    code = "key_concurrency_limit"
    reason = "key_limit"

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(
            f"key {key!r} already has {limit} requests or streams in flight, its limit; retry when one ends",
            headers={"Retry-After": "1"},
        )


class KeyAudioLimitError(ServiceError):
    """The caller's key has used its audio seconds for the last hour (429 with Retry-After)."""

    status = 429
    code = "key_audio_limit"
    reason = "key_limit"

    def __init__(self, key: str, budget: float, retry_after_seconds: int) -> None:
        super().__init__(
            f"key {key!r} has used its {budget:g} audio seconds of the last hour; retry in {retry_after_seconds} s",
            headers={"Retry-After": str(retry_after_seconds)},
        )
        self.retry_after_seconds = retry_after_seconds


class RequestTimeoutError(ServiceError):
    """The request waited and ran longer than its timeout (504)."""

    status = 504
    code = "timeout"
    reason = "timeout"


class BackendError(ServiceError):
    """The engine failed (CUDA out of memory, an engine bug); the service keeps serving (503)."""

    status = 503
    code = "backend_error"
    reason = "backend_error"


class NotReadyError(ServiceError):
    """The model is still loading, or failed to load (503; with Retry-After when known)."""

    status = 503
    code = "not_ready"
    reason = "not_ready"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)} if retry_after else None)


class ModelNotFoundError(ServiceError):
    """The request names a model no ASR_MODELS entry has, by id or alias (404, OpenAI's code)."""

    status = 404
    code = "model_not_found"
    reason = "bad_request"

    def __init__(self, name: str, known: list[str]) -> None:
        shown_known = ", ".join(known[:20])
        super().__init__(f"the model {shown(name)} does not exist; models here: {shown_known}", param="model")


class ModelBudgetError(ServiceError):
    """A model cannot be loaded within ASR_MODEL_MEMORY_BUDGET_BYTES while the others are busy (503)."""

    status = 503
    code = "model_budget_exceeded"
    reason = "not_ready"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "10"})


class ModelBusyError(ServiceError):
    """A model with requests in flight cannot be unloaded now (409)."""

    status = 409
    code = "model_busy"


class ClientGoneError(ServiceError):
    """The client hung up (mid-upload, queued or while its audio was transcribed): 499, as nginx logs
    it. Nobody reads the answer; the status exists for the access log and the metrics."""

    status = 499
    code = "client_disconnected"
    reason = "client_disconnected"

    def __init__(self, message: str = "the client closed the connection before the answer was ready") -> None:
        super().__init__(message)


class ShuttingDownError(ServiceError):
    """The service is draining for shutdown: new work is refused, unfinished work stopped (503)."""

    status = 503
    code = "shutting_down"
    reason = "shutting_down"

    def __init__(self, message: str = "the service is shutting down; retry on another instance") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class JobCancelledError(ServiceError):
    """A job's work stopped because the job was cancelled (the runner's concern, never an answer)."""

    status = 409
    code = "job_cancelled"


class InsufficientStorageError(ServiceError):
    """The disk that uploads and long audio spill to is full (507); small requests still work."""

    status = 507
    code = "insufficient_storage"
    reason = "insufficient_storage"


def shown(value: str, limit: int = 40) -> str:
    """A client's value as an error message may echo it: quoted, and cut to `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def is_disk_full(exc: BaseException) -> bool:
    """Whether an OSError means "no space left" (ENOSPC) or "quota exceeded" (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def error_for_cancellation(reason: str | None, time_limit: float | None = None) -> ServiceError:
    """The answer for work stopped by a CancelToken with `reason` (service.cancellation)."""
    if reason == "client_disconnected":
        return ClientGoneError()
    if reason == "shutting_down":
        return ShuttingDownError("the service shut down before the request finished; retry on another instance")
    if reason == "job_cancelled":
        return JobCancelledError("the job was cancelled")
    limit = f" {time_limit:.0f} s" if time_limit is not None else ""
    return RequestTimeoutError(f"the request took longer than its{limit} limit and was stopped")


class ModelLoadError(Exception):
    """The configured model cannot be found or loaded; carries a message an operator can act on."""


class MissingExtraError(Exception):
    """An optional extra that the configuration chose is not installed: an engine's (ASR_BACKEND)
    or the shared database's (ASR_DATABASE_URL). The message names the extra to install."""
