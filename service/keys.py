"""Named API keys: ASR_API_KEY (the key named "default") and the ASR_API_KEYS file, kept as hashes.

The file is TOML, one table per key; it holds each key's SHA-256, never the key:

    [keys.alice]
    sha256 = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
    max_in_flight = 4               # optional: overrides ASR_KEY_MAX_IN_FLIGHT
    audio_seconds_per_hour = 3600   # optional: overrides ASR_KEY_AUDIO_SECONDS_PER_HOUR

`python -m service keys add NAME` makes a random key, prints it once and appends its table;
`keys hash` prints the hash of a key made elsewhere. The service re-reads the file when it changes
(checked at most once a second), so keys are added and revoked without a restart; a file that no
longer parses is logged and the keys read before are kept.

A plain SHA-256, not a slow password hash: the keys are 256-bit random strings, not passwords, so
no dictionary exists to try against a stolen hash, and a slow hash would cost every request tens
of milliseconds. A presented token is hashed once and compared with every stored hash in
constant time (hmac.compare_digest, no early exit), so timing tells nothing of which is close.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pydantic import SecretStr

    from service.config import KeyLimitSettings

log = logging.getLogger(__name__)

# Names are metric label values and appear in logs: short and plain.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
DEFAULT_KEY = "default"  # ASR_API_KEY
ADMIN = "admin"  # ASR_ADMIN_TOKEN used on a client route
ANONYMOUS = "anonymous"  # no key: keys are off, or the request was refused before it named one
RESERVED_NAMES = frozenset({DEFAULT_KEY, ADMIN, ANONYMOUS})
KEY_PREFIX = "asr_"
_FIELDS = {"sha256", "max_in_flight", "audio_seconds_per_hour"}
_RELOAD_CHECK_SECONDS = 1.0


class KeysFileError(ValueError):
    """The ASR_API_KEYS file cannot be read or does not hold valid key tables; says where."""


@dataclass(frozen=True)
class KeyLimits:
    """What one key may use; 0 means no limit."""

    max_in_flight: int = 0
    audio_seconds_per_hour: float = 0.0

    @classmethod
    def of(cls, settings: KeyLimitSettings) -> KeyLimits:
        return cls(settings.max_in_flight, settings.audio_seconds_per_hour)


@dataclass(frozen=True)
class ApiKey:
    """A configured key: its name, the SHA-256 digest of its secret, its limits."""

    name: str
    digest: bytes
    limits: KeyLimits


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe, so that it also fits a WebSocket subprotocol)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of `key`, as the keys file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_table(name: str, digest: str, limits: dict[str, float | int] | None = None) -> str:
    """The TOML table of one key, as `keys add` appends it."""
    lines = [f"[keys.{name}]", f'sha256 = "{digest}"']
    lines += [f"{field} = {value}" for field, value in (limits or {}).items()]
    return "\n".join(lines) + "\n"


def parse_keys(text: str, defaults: KeyLimits, source: str = "ASR_API_KEYS") -> tuple[ApiKey, ...]:
    """The keys of a keys file's `text`; raises KeysFileError naming what is wrong and where."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"{source} is not valid TOML: {exc}") from None
    extra = set(data) - {"keys"}
    if extra:
        raise KeysFileError(f"{source}: unknown top-level entries {sorted(extra)}; keys go in [keys.NAME] tables")
    tables = data.get("keys", {})
    if not isinstance(tables, dict):
        raise KeysFileError(f"{source}: `keys` must be tables, [keys.NAME]")
    keys = []
    seen: dict[bytes, str] = {}
    for name, table in tables.items():
        key = _parse_key(name, table, defaults, source)
        if key.digest in seen:
            raise KeysFileError(f"{source}: keys {seen[key.digest]!r} and {name!r} have the same hash")
        seen[key.digest] = name
        keys.append(key)
    return tuple(keys)


def _parse_key(name: str, table: Any, defaults: KeyLimits, source: str) -> ApiKey:
    where = f"{source}: [keys.{name}]"
    if not NAME_PATTERN.match(name):
        raise KeysFileError(f"{where}: a name is 1-32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit")
    if name in RESERVED_NAMES:
        raise KeysFileError(f"{where}: {name!r} is reserved ({DEFAULT_KEY} is ASR_API_KEY, {ADMIN} ASR_ADMIN_TOKEN)")
    if not isinstance(table, dict):
        raise KeysFileError(f"{where} must be a table")
    unknown = set(table) - _FIELDS
    if unknown:
        raise KeysFileError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
    digest = table.get("sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise KeysFileError(f"{where}: sha256 must be 64 lowercase hex digits (`python -m service keys hash`)")
    in_flight = table.get("max_in_flight", defaults.max_in_flight)
    audio = table.get("audio_seconds_per_hour", defaults.audio_seconds_per_hour)
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 0:
        raise KeysFileError(f"{where}: max_in_flight must be a whole number, 0 or more (0: no limit)")
    if isinstance(audio, bool) or not isinstance(audio, int | float) or audio < 0:
        raise KeysFileError(f"{where}: audio_seconds_per_hour must be a number, 0 or more (0: no limit)")
    return ApiKey(name, bytes.fromhex(digest), KeyLimits(in_flight, float(audio)))


class KeyRing:
    """The keys the service accepts: ASR_API_KEY as "default" and the keys file's, re-read when
    the file changes."""

    def __init__(
        self,
        single: SecretStr | None,
        path: Path | None,
        defaults: KeyLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises KeysFileError when `path` cannot be read or parsed (the service must not start
        open, or with fewer keys than the operator wrote)."""
        self.defaults = defaults
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._single = (
            ApiKey(DEFAULT_KEY, bytes.fromhex(hash_key(single.get_secret_value())), defaults) if single else None
        )
        self._stamp: tuple[int, int] | None = None
        self._file_keys: tuple[ApiKey, ...] = ()
        self._checked = clock()
        if path is not None:
            self._stamp = self._stat_or_fail()
            self._file_keys = self._read()

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (ASR_API_KEY or ASR_API_KEYS is set)."""
        return self._single is not None or self._path is not None

    def accepted(self) -> tuple[ApiKey, ...]:
        """Every key accepted now."""
        self._maybe_reload()
        return ((self._single,) if self._single is not None else ()) + self._file_keys

    def names(self) -> list[str]:
        return [key.name for key in self.accepted()]

    def identify(self, token: str) -> ApiKey | None:
        """The key whose hash `token` has, or None; every stored hash is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for key in self.accepted():
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def get(self, name: str) -> ApiKey | None:
        """The key named `name` (None once it has been removed from the file)."""
        return next((key for key in self.accepted() if key.name == name), None)

    def _stat_or_fail(self) -> tuple[int, int]:
        assert self._path is not None
        try:
            stat = self._path.stat()
        except OSError as exc:
            raise KeysFileError(f"ASR_API_KEYS={self._path}: {exc.strerror}") from None
        return stat.st_mtime_ns, stat.st_size

    def _read(self) -> tuple[ApiKey, ...]:
        assert self._path is not None
        try:
            text = self._path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysFileError(f"ASR_API_KEYS={self._path}: {exc}") from None
        return parse_keys(text, self.defaults, f"ASR_API_KEYS={self._path}")

    def _maybe_reload(self) -> None:
        if self._path is None or self._clock() - self._checked < _RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            if self._clock() - self._checked < _RELOAD_CHECK_SECONDS:
                return
            self._checked = self._clock()
            try:
                stamp = self._stat_or_fail()
            except KeysFileError as exc:
                if self._stamp is not None:  # said once, until the file is back
                    log.error("keys file unreadable, the keys read before stay in use: %s", exc)
                self._stamp = None
                return
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                keys = self._read()
            except KeysFileError as exc:
                # A half-written or broken file must not lock every client out: keep what was read.
                log.error("keys file not reloaded, the keys read before stay in use: %s", exc)
                return
            self._file_keys = keys
            log.info("keys file reloaded: %d keys", len(keys))
