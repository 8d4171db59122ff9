"""A reverse proxy that serves the service under a path prefix, as a site's proxy would.

Like nginx's `location /asr/ { proxy_pass http://service/; }`: the prefix is cut from each
request's path before it goes upstream, and a path outside the prefix is 404. Each connection
carries one request (the proxy asks the service to close after answering), so every request line
is seen and rewritten; a WebSocket upgrade is piped both ways after its handshake.
`drop_connections()` cuts every open connection at once, as a proxy restart or a network
failure would, for the console's "connection lost" path.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import TYPE_CHECKING

from deploy.local_stack import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator


class PrefixProxy:
    def __init__(self, upstream_port: int, prefix: str = "/asr") -> None:
        self.upstream_port = upstream_port
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{prefix}"
        self.requests: list[str] = []  # "METHOD /upstream/path", as forwarded
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefix-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._started.set()
            async with self._server:
                await self._server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(main())

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        upstream_writer = None
        try:
            head = await client_reader.readuntil(b"\r\n\r\n")
            line, *headers = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = line.split(" ", 2)
            if target != self.prefix and not target.startswith(self.prefix + "/"):
                client_writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await client_writer.drain()
                return
            target = target[len(self.prefix) :] or "/"
            upgrade = any(h.lower().startswith("upgrade:") for h in headers)
            if not upgrade:
                headers = [h for h in headers if not h.lower().startswith(("connection:", "keep-alive:"))]
                headers.append("Connection: close")
            headers.append(f"X-Forwarded-Prefix: {self.prefix}")
            self.requests.append(f"{method} {target}")
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream_writer)
            request = "\r\n".join([f"{method} {target} {version}", *headers]) + "\r\n\r\n"
            upstream_writer.write(request.encode("latin-1"))
            # Either side ending ends the exchange: the service closing after its answer, or either
            # end of a WebSocket going away.
            pipes = {
                asyncio.ensure_future(_pipe(client_reader, upstream_writer)),
                asyncio.ensure_future(_pipe(upstream_reader, client_writer)),
            }
            _, rest = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()

    def drop_connections(self) -> None:
        """Cut every open connection (the next ones go through as before)."""

        def cut() -> None:
            for writer in list(self._writers):
                transport = writer.transport
                transport.abort()

        self._loop.call_soon_threadsafe(cut)

    @contextlib.contextmanager
    def running(self) -> Iterator[PrefixProxy]:
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"
        try:
            yield self
        finally:
            self.drop_connections()
            self._loop.call_soon_threadsafe(self._server.close)
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
            self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
