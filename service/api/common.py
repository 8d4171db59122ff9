"""What the routers share: the service objects on app.state, bearer auth, multipart forms.

Upload routes parse their form themselves, after auth and the queue check, so that a
refused request is refused before its (possibly large) body is read. The body is capped by
service.body_limit, which counts bytes as they arrive and raises 413 at the first chunk past
the limit (or at once when Content-Length already says so).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service.errors import (
    BadRequestError,
    ClientGoneError,
    InsufficientStorageError,
    UnauthorizedError,
    UploadTooLargeError,
    is_disk_full,
)
from service.middleware import request_state

if TYPE_CHECKING:
    from fastapi import Request
    from pydantic import SecretStr
    from starlette.datastructures import FormData
    from starlette.requests import HTTPConnection

    from service.config import Settings
    from service.engine import Engine
    from service.pipeline import Pipeline

M = TypeVar("M", bound=BaseModel)
# Room for multipart framing and the small text fields beside the file.
FORM_OVERHEAD_BYTES = 1024 * 1024
# Routes whose body is an upload (ASR_MAX_UPLOAD_BYTES); every other body is capped at 1 MB.
UPLOAD_ROUTES = frozenset(
    {"/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/asr", "/detect-language", "/v1/jobs"}
)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def pipeline_of(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def has_bearer(request: HTTPConnection, expected: SecretStr | None) -> bool:
    """Whether the request carries `Authorization: Bearer <expected>` (False when none is configured)."""
    if expected is None:
        return False
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    )


def require_bearer(request: Request, expected: SecretStr | None) -> None:
    """Raise UnauthorizedError unless the request carries `Authorization: Bearer <expected>`.

    When `expected` is None no token is required.
    """
    if expected is not None and not has_bearer(request, expected):
        raise UnauthorizedError()


async def read_form(request: Request, file_field: str = "file") -> FormData:
    """The multipart form, read within the body limit; raises ClientGoneError, InsufficientStorageError
    or BadRequestError (a body that is not a form)."""
    try:
        return await request.form(max_files=4, max_fields=64)
    except ClientDisconnect:
        raise ClientGoneError("the client closed the connection during the upload") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise InsufficientStorageError(
                "the service's temporary disk is full, so the upload could not be stored; retry later"
            ) from exc
        raise


async def read_upload_form(
    request: Request, model: type[M], max_upload_bytes: int, file_field: str = "file"
) -> tuple[M, UploadFile, FormData]:
    """Parse a multipart form holding one file field `file` and the fields of `model`.

    Returns (fields, file, form); the caller closes `form`. Raises BadRequestError for a
    missing, repeated or invalid field, UploadTooLargeError past `max_upload_bytes`,
    ClientGoneError when the client hangs up mid-upload and InsufficientStorageError when the
    disk the upload spools to is full.
    """
    form = await read_form(request, file_field)
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
