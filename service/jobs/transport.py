"""An httpx transport that connects only where the address policy allows, and only there.

Each request's host is resolved once; the addresses the policy refuses are dropped (none left:
RefusedAddressError, and no connection is made), and the connection goes to a checked address
itself, so a name cannot resolve to a public address for the check and to an internal one for
the connection (DNS rebinding). The request keeps its URL's Host header, and for https its TLS
server name (SNI), against which the certificate is verified.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from service.jobs.destinations import AddressPolicy, IPAddress

    Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


class RefusedAddressError(httpx.TransportError):
    """The host resolves only to addresses the policy refuses; nothing was sent."""


async def resolve_system(host: str, port: int) -> list[IPAddress]:
    """The host's addresses from the system resolver, in its order of preference (a literal
    address is itself). Raises httpx.ConnectError when the name does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpx.ConnectError(f"{host} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves, checks, then sends to the checked address (tried in order until one connects)."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolve: Resolve = resolve_system,
        verify: ssl.SSLContext | bool = True,
        resolve_timeout: float = 10.0,
    ) -> None:
        self.policy = policy
        self.resolve = resolve
        self.resolve_timeout = resolve_timeout
        # trust_env here is only SSL_CERT_FILE / SSL_CERT_DIR; proxies (which would resolve the
        # name themselves) are the client's, and a client given a transport takes none from the environment.
        self._inner = httpx.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            async with asyncio.timeout(self.resolve_timeout):
                addresses = await self.resolve(host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"resolving {host} took too long", request=request) from None
        allowed = [a for a in addresses if self.policy.allows(a)]
        if not allowed:
            shown = ", ".join(map(str, addresses)) or "nothing"
            raise RefusedAddressError(f"{host} resolves to {shown}, which webhooks may not reach", request=request)
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            extensions["sni_hostname"] = host
        failure: httpx.ConnectError | None = None
        for address in allowed:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # the Host header is the URL's, set when the request was built
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # nothing was sent: the next address may answer
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()
