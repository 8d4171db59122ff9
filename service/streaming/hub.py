"""The live streams of one process: how many may be open, and closing them when the service drains.

Every entry point that holds live audio counts here against the one ASR_MAX_STREAMS: Realtime
WebSocket sessions and Wyoming connections hold the same things (a buffer of live audio, partial
decodes at STREAM priority, finals at INTERACTIVE), so one number sizes the workers for them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.lifecycle import Lifecycle
    from service.metrics import Metrics

log = logging.getLogger(__name__)


class StreamLimitError(Exception):
    """ASR_MAX_STREAMS streams are open already."""


class StreamHub:
    def __init__(self, max_streams: int, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.max_streams = max_streams
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.sessions: set[object] = set()  # Realtime sessions, Wyoming connections
        self.draining = asyncio.Event()
        lifecycle.on_drain(self.draining.set)

    @contextlib.contextmanager
    def open(self, session: object, entrypoint: str = "realtime") -> Iterator[None]:
        """Count `session` (of `entrypoint`, metrics.ENTRYPOINTS) as open while the block runs; raises
        StreamLimitError when full."""
        if len(self.sessions) >= self.max_streams:
            raise StreamLimitError()
        active = self.metrics.stream(entrypoint).active
        self.sessions.add(session)
        active.inc()
        try:
            yield
        finally:
            self.sessions.discard(session)
            active.dec()
