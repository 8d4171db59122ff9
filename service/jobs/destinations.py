"""Where a job's webhook may go: its URL read strictly, and the addresses it may reach.

A URL is taken only when every parser would read it the same way: http(s), no user information,
a host that is either an IP address written canonically or a name of letters, digits and
hyphens (an IDNA name must be valid), a port from 1 to 65535, no spaces or control characters.
`0177.0.0.1`, `2130706433` or `127.1` are refused: the system resolver reads them as 127.0.0.1,
httpx as an error, and a URL that means different things to the check and to the sender is how
checks are bypassed.

Addresses: only public (globally routable unicast) ones, unless ASR_WEBHOOK_ALLOWED_NETWORKS
lists the network or ASR_WEBHOOK_ALLOW_PRIVATE is set. An IPv6 address that carries an IPv4 one
(mapped, NAT64, 6to4, Teredo) must pass for the IPv4 address too. A literal address is checked
here, when the job is submitted; a name is checked on what it resolves to, when the webhook is
sent (service.jobs.transport).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from service.errors import BadRequestError, shown

if TYPE_CHECKING:
    from service.config import WebhookSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# What WHATWG URL parsers (browsers, curl) and inet_aton take for an IPv4 address: a host whose
# last label is a number, in decimal, octal or hex.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class WebhookRefusedError(BadRequestError):
    """The webhook URL is well formed, but the settings do not let webhooks go there (422)."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses webhooks may connect to."""

    allow_private: bool
    networks: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, allow_private: bool, networks: str) -> AddressPolicy:
        """From the settings' values; raises ValueError for a network that is not a CIDR."""
        return cls(allow_private, parse_networks(networks))

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> AddressPolicy:
        return cls.of(settings.allow_private, settings.allowed_networks)

    def allows(self, address: IPAddress) -> bool:
        """Whether a webhook may connect to `address`."""
        return all(
            self.allow_private or _public(a) or any(a in net for net in self.networks) for a in _meanings(address)
        )


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (a bare address is one host); raises ValueError for anything else."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _meanings(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address it carries (where it would really connect)."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]  # ::ffff:127.0.0.1 is 127.0.0.1, nothing else
    out: list[IPAddress] = [address]
    if address in _NAT64:
        out.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        out.append(address.sixtofour)
    if address.teredo is not None:
        out.extend(address.teredo)
    return out


def _public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


def check_url(url: str, settings: WebhookSettings) -> str:
    """Return `url` if webhooks may go there. Raises BadRequestError (422) when it is not a URL
    every parser reads alike, WebhookRefusedError (422) when the settings refuse its host."""
    host, literal = _parse(url)
    allowed = {h.strip().lower().rstrip(".") for h in settings.allowed_hosts.split(",") if h.strip()}
    if allowed and host not in allowed:
        raise WebhookRefusedError(
            f"webhook_url host {shown(host)} is not in ASR_WEBHOOK_ALLOWED_HOSTS", param="webhook_url"
        )
    if literal is not None and not AddressPolicy.from_settings(settings).allows(literal):
        raise WebhookRefusedError(
            f"webhook_url address {shown(host)} is not public: webhooks may go there only if "
            "ASR_WEBHOOK_ALLOWED_NETWORKS lists it",
            param="webhook_url",
        )
    return url


def _parse(url: str) -> tuple[str, IPAddress | None]:
    """The URL's host (lower case, IDNA-encoded, no trailing dot) and its address when it is one."""

    def refuse(why: str) -> BadRequestError:
        return BadRequestError(f"webhook_url {shown(url)} {why}", param="webhook_url")

    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise refuse("holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        parsed = httpx.URL(url)
        raw_host = parsed.raw_host.decode("ascii")  # IDNA-encoded
        parsed.host  # noqa: B018 - decoding it checks each A-label (`xn--zz` is none)
    except (ValueError, httpx.InvalidURL) as exc:  # idna's errors are ValueErrors
        raise refuse(f"is not a URL ({type(exc).__name__})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not raw_host:
        raise refuse("is not an http(s) URL with a host")
    if "@" in parts.netloc:
        raise refuse("carries user information; put credentials in the path or query instead")
    if port is not None and not 0 < port < 65536:
        raise refuse("has no usable port")
    if ":" in parts.hostname:  # an IPv6 literal (a name has no colon)
        try:
            address = None if "%" in parts.hostname else ipaddress.IPv6Address(parts.hostname)
        except ValueError:
            address = None
        if address is None:
            raise refuse("has an IPv6 address that is not one (or names a zone)")
        return str(address), address
    host = raw_host.lower().removesuffix(".")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            address4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise refuse("has a host that reads as an IP address, but not as four decimal numbers") from None
        return host, address4
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise refuse("has a host that is not a valid name")
    return host, None
