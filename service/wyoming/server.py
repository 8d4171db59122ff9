"""The Wyoming TCP server beside HTTP, in the same process and on the same pipeline.

Started by the app's lifespan when ASR_WYOMING_PORT is set (service.app), on ASR_WYOMING_HOST
(loopback by default: Wyoming has no authentication, so it must only be reachable from a trusted
network). The protocol library's AsyncTcpServer accepts connections; each is a WyomingHandler
(service.wyoming.handler), counted with the Realtime streams against ASR_MAX_STREAMS (the
StreamHub). When the service drains, connections answer what they owe within the grace period
and new ones are told to go elsewhere; `stop` closes the listener, withdraws the mDNS
announcement and waits for every connection's work to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from wyoming.server import AsyncTcpServer

from service.backends import on_gpu
from service.hardware import worker_count
from service.wyoming.handler import WyomingHandler

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from service.config import Settings
    from service.metrics import Metrics
    from service.pipeline import Pipeline
    from service.streaming.hub import StreamHub
    from service.wyoming.zeroconf import Announcement

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # for connections' work to end once cancelled


class WyomingServer:
    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics, hub: StreamHub) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.hub = hub
        self.draining = hub.draining
        self._tcp: AsyncTcpServer | None = None
        self._announcement: Announcement | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._utterances = 0  # in progress: audio arriving, or the final owed
        # Partials only while a worker is left for the finals (service.wyoming.utterance).
        self._partial_room = max(1, worker_count(settings, on_gpu(settings)) - 1)
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def port(self) -> int:
        port = self.settings.wyoming.port
        assert port is not None
        return port

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken) and announce over mDNS when asked."""
        wy = self.settings.wyoming
        self._tcp = AsyncTcpServer(wy.host, self.port)
        await self._tcp.start(self._connect)
        log.info("wyoming server on %s:%d", wy.host, self.port)
        if wy.zeroconf:
            from service.wyoming.zeroconf import announce

            self._announcement = await announce(wy, self.port)

    def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WyomingHandler:
        return WyomingHandler(reader, writer, self)

    def track(self, connection: asyncio.Task[Any] | None) -> None:
        """Count a connection's task (the library's, running the handler) until it ends."""
        if connection is not None:
            self._connections.add(connection)
            connection.add_done_callback(self._connections.discard)

    def utterance_began(self) -> Callable[[], None]:
        """Count an utterance in progress; returns what to call once it is over."""
        self._utterances += 1

        def ended() -> None:
            self._utterances -= 1

        return ended

    def partials_room(self) -> bool:
        """Whether partial decodes fit now: no more utterances in progress than workers - 1 (at least 1)."""
        return self._utterances <= self._partial_room

    def keep(self, work: Awaitable[Any]) -> None:
        """Run `work` (sampling an answered utterance) in the background, kept until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Stop listening, withdraw the announcement, end every connection and wait for its work."""
        if self._announcement is not None:
            with contextlib.suppress(Exception):
                await self._announcement.close()
        if self._tcp is not None:
            await self._tcp.stop()  # closes the listener; each handler's reader sees its end
        if self._connections:
            _, late = await asyncio.wait(set(self._connections), timeout=STOP_SECONDS)
            for task in late:
                task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=STOP_SECONDS)
