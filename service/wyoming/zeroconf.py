"""Announcing the Wyoming server over mDNS (`_wyoming._tcp`), so that Home Assistant discovers it.

Off unless ASR_WYOMING_ZEROCONF is true; the `zeroconf` package is an optional extra
(`pip install 'asr-service[zeroconf]'`), imported only here. The announcement goes out on the
interface of the address the server binds to (so a server on 127.0.0.1 announces on loopback
only, as the tests do), or on every interface for 0.0.0.0, with the host's primary address.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from service.errors import MissingExtraError

if TYPE_CHECKING:
    from service.config import WyomingSettings

log = logging.getLogger(__name__)
SERVICE_TYPE = "_wyoming._tcp.local."
_MDNS_GROUP = "224.0.0.251"
_ANY = ("", "0.0.0.0")


class Announcement:
    """One registered `_wyoming._tcp` service; `close` withdraws it."""

    def __init__(self, zeroconf: Any, info: Any) -> None:
        self._zeroconf = zeroconf
        self.info = info

    async def close(self) -> None:
        try:
            await self._zeroconf.async_unregister_service(self.info)
        finally:
            await self._zeroconf.async_close()


def announced_address(host: str) -> str:
    """The IPv4 address to announce for a server bound to `host`."""
    if host not in _ANY:
        return socket.gethostbyname(host)
    # The address this host would send multicast from: no packet leaves (UDP connect only routes).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((_MDNS_GROUP, 1))
        return str(probe.getsockname()[0])


async def announce(settings: WyomingSettings, port: int) -> Announcement:
    """Register the service; raises MissingExtraError when the `zeroconf` extra is not installed."""
    try:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"ASR_WYOMING_ZEROCONF is on, which needs the optional dependency {exc.name!r}: "
            "pip install 'asr-service[zeroconf]'"
        ) from exc
    address = announced_address(settings.host)
    interfaces: Any = InterfaceChoice.All if settings.host in _ANY else [address]
    zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
    name = settings.zeroconf_name
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(address)],
        port=port,
        server=f"{name}.local.",
    )
    await zeroconf.async_register_service(info)
    log.info("announced %s on %s:%d over mDNS", info.name, address, port)
    return Announcement(zeroconf, info)
