"""Reading Wyoming events from a client that may send anything: each header checked first.

A Wyoming event is a JSON header line, then `data_length` bytes of JSON data and `payload_length`
bytes of payload (audio). The protocol library's `async_read_event` reads them; it is given a
`GuardedReader` instead of the bare StreamReader, which checks each header line before the
library reads on: that it is a JSON object with a `type`, and that the lengths it declares are
integers that together stay within the event limit (ASR_WYOMING_MAX_EVENT_BYTES). Without the
check, a header declaring a payload of a terabyte would be read into memory until it arrived.

The library answers a malformed data part, as it does the end of the stream, with None; the
reader says which it was (`mid_event`). Everything else it cannot read is a FrameError, which is
deliberately not a ValueError: the library swallows those as the end of the stream.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

EVENT_TYPE_CHARS = 64


class FrameError(Exception):
    """Bytes that are not a Wyoming event, or an event past the limits; the connection ends."""

    def __init__(self, message: str, code: str = "invalid_event") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def version_tuple(text: object) -> tuple[int, ...] | None:
    """A protocol version ("1.10.2") as numbers, or None when it is not one."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


class GuardedReader:
    """The connection's StreamReader as `async_read_event` reads it, every header checked."""

    def __init__(self, reader: asyncio.StreamReader, max_event_bytes: int) -> None:
        self._reader = reader
        self.max_event_bytes = max_event_bytes
        self.mid_event = False  # a header was read: a None from the library now means bad data
        self.version: tuple[int, ...] | None = None  # the protocol version the client's events declare

    async def readline(self) -> bytes:
        self.mid_event = False
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than the stream's line limit (64 KiB)
            raise FrameError("an event's header line is too long") from None
        if not line.endswith(b"\n"):
            return b""  # the end of the stream, maybe in the middle of a line: the client left
        self._check(line)
        self.mid_event = True
        return line

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)  # IncompleteReadError (an EOFError): the client left

    def _check(self, line: bytes) -> None:
        try:
            header: Any = json.loads(line)
        except ValueError:
            raise FrameError("not a Wyoming event: the header line is not JSON") from None
        if not isinstance(header, dict):
            raise FrameError("not a Wyoming event: the header is not a JSON object")
        kind = header.get("type")
        if not isinstance(kind, str) or not kind or len(kind) > EVENT_TYPE_CHARS:
            raise FrameError("not a Wyoming event: the header has no event type")
        if "data" in header and not isinstance(header["data"], dict):
            raise FrameError("an event's data must be a JSON object")
        total = len(line)
        for key in ("data_length", "payload_length"):
            value = header.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FrameError(f"an event's {key} must be a non-negative integer")
            total += value
        if total > self.max_event_bytes:
            raise FrameError(
                f"an event may hold at most {self.max_event_bytes} bytes; this one declares {total}", "event_too_large"
            )
        version = version_tuple(header.get("version"))
        if version is not None:
            self.version = version
