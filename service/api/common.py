"""What the routers share: the service objects on app.state, bearer auth, multipart forms.

Upload routes parse their form themselves, after auth and the queue check, so that a
refused request is refused before its (possibly large) body is read. The body is capped by
the route's `max_body_size`, which counts bytes as they arrive and raises 413 at the first
chunk past the limit (or at once when Content-Length already says so).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.errors import BadRequestError, UnauthorizedError, UploadTooLargeError
from service.middleware import request_state

if TYPE_CHECKING:
    from fastapi import Request
    from pydantic import SecretStr
    from starlette.datastructures import FormData

    from service.config import Settings
    from service.pipeline import Transcriber

M = TypeVar("M", bound=BaseModel)
# Room for multipart framing and the small text fields beside the file.
FORM_OVERHEAD_BYTES = 1024 * 1024


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def transcriber_of(request: Request) -> Transcriber:
    transcriber: Transcriber = request.app.state.transcriber
    return transcriber


def require_bearer(request: Request, expected: SecretStr | None) -> None:
    """Raise UnauthorizedError unless the request carries `Authorization: Bearer <expected>`.

    When `expected` is None no token is required.
    """
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise UnauthorizedError()


async def read_upload_form(request: Request, model: type[M], max_upload_bytes: int) -> tuple[M, UploadFile, FormData]:
    """Parse a multipart form holding one file field `file` and the fields of `model`.

    Returns (fields, file, form); the caller closes `form`. Raises BadRequestError for a
    missing file or invalid fields, UploadTooLargeError past `max_upload_bytes`.
    """
    form = await request.form(max_files=2, max_fields=64)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequestError("send the audio as multipart/form-data with a file field named 'file'")
        if upload.size is not None and upload.size > max_upload_bytes:
            raise UploadTooLargeError(f"the upload is larger than the limit of {max_upload_bytes} bytes")
        values: dict[str, Any] = {}
        for key in {k for k in form if k != "file"}:
            items = [v for v in form.getlist(key) if isinstance(v, str)]
            name = key.removesuffix("[]")
            values[name] = items if key.endswith("[]") or len(items) > 1 else items[0] if items else None
        fields = model.model_validate(values)
    except (BadRequestError, UploadTooLargeError):
        await form.close()
        raise
    except ValidationError as exc:
        await form.close()
        raise BadRequestError(describe_validation_error(exc)) from None
    request_state(request.scope)["upload_bytes"] = upload.size
    return fields, upload, form


def describe_validation_error(exc: ValidationError) -> str:
    """One readable sentence per invalid field: `response_format: Input should be 'json' or ...`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def form_openapi(model: type[BaseModel], required: tuple[str, ...] = ("file",)) -> dict[str, Any]:
    """The OpenAPI requestBody of an upload route: `model`'s fields plus the binary `file`."""
    schema = model.model_json_schema()
    schema["properties"] = {"file": {"type": "string", "format": "binary"}, **schema.get("properties", {})}
    schema["required"] = [*required, *schema.get("required", [])]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
