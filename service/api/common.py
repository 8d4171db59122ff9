"""What the routers share: multipart forms, rendering a transcription, documented errors.

Upload routes parse their form themselves, after auth and the queue check, so that a
refused request is refused before its (possibly large) body is read. The body is capped by
service.body_limit, which counts bytes as they arrive and raises 413 at the first chunk past
the limit (or at once when Content-Length already says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service.api.schemas import ErrorResponse
from service.errors import (
    BadRequestError,
    ClientGoneError,
    InsufficientStorageError,
    UploadTooLargeError,
    is_disk_full,
)
from service.formats import JSON_FORMATS, MEDIA_TYPES, render_text
from service.middleware import request_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import Request
    from starlette.background import BackgroundTask
    from starlette.datastructures import FormData

    from service.api.schemas import Answer
    from service.formats import OpenAIResponseFormat, Result

M = TypeVar("M", bound=BaseModel)
# Room for multipart framing and the small text fields beside the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
# Fields a form may hold beside its list fields' items (keywords[]: up to ASR_MAX_KEYWORDS more).
FORM_FIELDS = 64
# The largest text field of a form: known speakers' reference clips come as base64 data URLs.
MAX_FIELD_BYTES = 6 * 1024 * 1024
# Routes whose body is an upload (ASR_MAX_UPLOAD_BYTES); every other body is capped at 1 MB.
UPLOAD_ROUTES = frozenset(
    {"/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/asr", "/detect-language", "/v1/jobs"}
)


def respond(
    result: Result, fmt: OpenAIResponseFormat, json_body: Callable[[], Answer], background: BackgroundTask | None = None
) -> Response:
    """A transcription in the format the client chose: `json_body()` for the JSON formats (each
    dialect builds its own), the shared text renderers for text, srt and vtt."""
    if fmt in JSON_FORMATS:
        return JSONResponse(json_body().body(), background=background)
    return Response(render_text(result, fmt), media_type=MEDIA_TYPES[fmt], background=background)


def documented(*statuses: int, ok: Any = None, ok_text: str | None = None) -> dict[int | str, Any]:
    """The `responses` of a route for OpenAPI: its success shape and the errors it may answer,
    each with ErrorResponse's schema."""
    out: dict[int | str, Any] = {}
    if ok is not None or ok_text is not None:
        content = {"text/plain": {"schema": {"type": "string"}}} if ok_text else {}
        out[200] = {"description": ok_text or "OK", **({"model": ok} if ok is not None else {}), "content": content}
    for status in statuses:
        out[status] = {"description": _ERRORS.get(status, "error"), "model": ErrorResponse}
    return out


_ERRORS = {
    400: "empty upload, or not a form",
    401: "missing or wrong API key",
    403: "the admin API is off",
    404: "no such resource",
    409: "conflict with the resource's state",
    413: "upload or audio too large",
    415: "not audio",
    422: "invalid parameter, corrupt audio or unsupported feature",
    429: "queue full (Retry-After)",
    499: "the client hung up",
    503: "model not ready, engine failure or shutting down",
    504: "took longer than the request timeout",
    507: "temporary disk full",
}
UPLOAD_ERRORS = (400, 401, 413, 415, 422, 429, 503, 504, 507)


async def read_form(request: Request, max_fields: int = FORM_FIELDS) -> FormData:
    """The multipart form, read within the body limit; raises ClientGoneError, InsufficientStorageError
    or BadRequestError (a body that is not a form)."""
    try:
        return await request.form(max_files=4, max_fields=max_fields, max_part_size=MAX_FIELD_BYTES)
    except ClientDisconnect:
        raise ClientGoneError("the client closed the connection during the upload") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorageError(
                "the service's temporary disk is full, so the upload could not be stored; retry later"
            ) from exc
        raise


async def read_upload_form(
    request: Request, model: type[M], max_upload_bytes: int, file_field: str = "file", max_fields: int = FORM_FIELDS
) -> tuple[M, UploadFile, FormData]:
    """Parse a multipart form holding one file field `file` and the fields of `model`.

    Returns (fields, file, form); the caller closes `form`. Raises BadRequestError for a
    missing, repeated or invalid field, UploadTooLargeError past `max_upload_bytes`,
    ClientGoneError when the client hangs up mid-upload and InsufficientStorageError when the
    disk the upload spools to is full.
    """
    form = await read_form(request, max_fields)
    try:
        files = form.getlist(file_field)
        upload = files[0] if len(files) == 1 else None
        if len(files) > 1:
            raise BadRequestError(f"the form holds {len(files)} '{file_field}' fields; send exactly one")
        if not isinstance(upload, UploadFile):
            raise BadRequestError(f"send the audio as multipart/form-data with a file field named '{file_field}'")
        if upload.size is not None and upload.size > max_upload_bytes:
            raise UploadTooLargeError(f"the upload is larger than the limit of {max_upload_bytes} bytes")
        values: dict[str, Any] = {}
        for key in {k for k in form if k != file_field}:
            items = [v for v in form.getlist(key) if isinstance(v, str)]
            name = key.removesuffix("[]")
            values[name] = items if key.endswith("[]") or len(items) > 1 else items[0] if items else None
        fields = model.model_validate(values)
    except (BadRequestError, UploadTooLargeError):
        await form.close()
        raise
    except ValidationError as exc:
        await form.close()
        raise BadRequestError(describe_validation_error(exc), param=first_field(exc)) from None
    request_state(request.scope)["upload_bytes"] = upload.size
    return fields, upload, form


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per invalid field: `response_format: Input should be 'json' or ...`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"])[:60] or "request"
        parts.append(f"{where}: {error['msg'][:200]}")
    return "; ".join(parts)


def first_field(exc: ValidationError) -> str | None:
    """The name of the first invalid field (for the error's `param`)."""
    for error in exc.errors():
        names = [str(p) for p in error["loc"] if isinstance(p, str) and p not in ("body", "query", "path")]
        if names:
            return names[-1][:60]
    return None


def form_openapi(model: type[BaseModel], required: tuple[str, ...] = ("file",)) -> dict[str, Any]:
    """The OpenAPI requestBody of an upload route: `model`'s fields plus the binary `file`."""
    schema = model.model_json_schema()
    schema["properties"] = {"file": {"type": "string", "format": "binary"}, **schema.get("properties", {})}
    schema["required"] = [*required, *schema.get("required", [])]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
