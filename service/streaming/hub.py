"""The live streams of one process: how many may be open, and closing them when the service drains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.lifecycle import Lifecycle
    from service.metrics import Metrics
    from service.streaming.session import RealtimeSession

log = logging.getLogger(__name__)


class StreamLimitError(Exception):
    """ASR_MAX_STREAMS streams are open already."""


class StreamHub:
    def __init__(self, max_streams: int, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.max_streams = max_streams
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.sessions: set[RealtimeSession] = set()
        self.draining = asyncio.Event()
        lifecycle.on_drain(self.draining.set)

    @contextlib.contextmanager
    def open(self, session: RealtimeSession) -> Iterator[None]:
        """Count `session` as open while the block runs; raises StreamLimitError when full."""
        if len(self.sessions) >= self.max_streams:
            raise StreamLimitError()
        self.sessions.add(session)
        self.metrics.streams_active.inc()
        try:
            yield
        finally:
            self.sessions.discard(session)
            self.metrics.streams_active.dec()
