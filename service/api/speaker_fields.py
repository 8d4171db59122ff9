"""OpenAI's speaker fields of a transcription form: known speakers by name and reference clip,
and the `server_vad` chunking strategy. Each bad value is a 422 that names its field; whether a
reference is audio of the right length is the pipeline's to say, once it has decoded it.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.speakers.base import KnownSpeaker

MAX_KNOWN_SPEAKERS = 4  # as OpenAI
MAX_NAME_CHARS = 64
# A reference lasts at most 10 s: even as 48 kHz stereo 24-bit WAV that is under 3 MB.
MAX_REFERENCE_BYTES = 4 * 1024 * 1024
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,(?P<data>.*)", re.DOTALL)


class ServerVadChunking(BaseModel):
    """OpenAI's `chunking_strategy: {type: server_vad}`: how speech is found before speakers are."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"] = Field(description="Always `server_vad`.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Silero's speech threshold (0.5).")
    prefix_padding_ms: int | None = Field(None, ge=0, le=2000, description="Audio kept around speech (100).")
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000, description="Silence that ends speech (300).")


def check_names(names: list[str]) -> list[str]:
    """`names` stripped; raises ValueError for an empty, too long, control-character or repeated one."""
    out = []
    for i, name in enumerate(names):
        name = name.strip()
        if not name:
            raise ValueError(f"name {i} is empty")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"name {i} is longer than {MAX_NAME_CHARS} characters")
        if any(not c.isprintable() for c in name):
            raise ValueError(f"name {i} holds a control character")
        if name in out:
            raise ValueError(f"{name[:MAX_NAME_CHARS]!r} is named twice; each known speaker needs its own name")
        out.append(name)
    return out


def check_references(references: list[str], names: list[str] | None) -> list[str]:
    """`references` when each is a base64 data URL and they pair with `names` one to one; raises
    ValueError saying which is not."""
    if names is not None and len(references) != len(names):
        raise ValueError(
            f"{len(references)} reference(s) for {len(names)} known_speaker_names; send one data URL per name"
        )
    for i, reference in enumerate(references):
        reference_bytes(reference, i)
    return references


def reference_bytes(reference: str, index: int) -> bytes:
    """The clip a data URL holds; raises ValueError when it is no base64 data URL, or too large."""
    match = _DATA_URL.fullmatch(reference.strip())
    if match is None:
        raise ValueError(f"reference {index} is not a base64 data URL (data:audio/wav;base64,...)")
    data = re.sub(r"\s+", "", match["data"])
    if len(data) * 3 // 4 > MAX_REFERENCE_BYTES:
        raise ValueError(f"reference {index} is larger than {MAX_REFERENCE_BYTES // 2**20} MB")
    try:
        clip = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"reference {index} holds invalid base64") from None
    if not clip:
        raise ValueError(f"reference {index} is empty")
    return clip


def known(names: list[str], references: list[str]) -> tuple[KnownSpeaker, ...]:
    """The known speakers of checked fields, their clips still encoded."""
    return tuple(KnownSpeaker(n, reference_bytes(r, i)) for i, (n, r) in enumerate(zip(names, references, strict=True)))
