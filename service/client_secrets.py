"""Realtime client secrets: short-lived, single-use tokens for one live session, minted with a key.

A browser must not hold a long-lived key. A backend that holds one asks
`POST /v1/realtime/client_secrets` for a token (`ek_...`, OpenAI's shape) and hands it to the page,
which opens `/v1/realtime` with it, as a bearer token or as browsers must send it, the WebSocket
subprotocol `openai-insecure-api-key.<token>`. The session then runs as the key that minted it
(its limits, its audio budget).

Unlike OpenAI's, whose secrets open sessions until they expire, ours open exactly one: a token
that leaked from a page after use is worth nothing. They expire after
ASR_CLIENT_SECRET_SECONDS (the request's `expires_after.seconds` is honoured up to
ASR_CLIENT_SECRET_MAX_SECONDS); a session already open goes on after that.

They live in the database the job table uses (the SQLite file in ASR_JOBS_DIR, or
ASR_DATABASE_URL's PostgreSQL), not in memory: with ASR_PROCESSES above one, or replicas, the
connection may reach another process than the one that minted the token. Only the token's
SHA-256 is stored. Single use holds across processes: redeeming deletes the row, and only the
transaction whose DELETE removed it gets the session.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.migrations import Step, migrate

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.database import Database

PREFIX = "ek_"
# Unused, unexpired secrets one key may hold at once: what bounds the table, since a key may mint
# as fast as it likes.
MAX_UNUSED_PER_KEY = 100

MIGRATIONS = (
    Step(
        "client secrets (their hashes) for Realtime sessions",
        sql="""
CREATE TABLE IF NOT EXISTS client_secrets (
    digest TEXT PRIMARY KEY,
    key_name TEXT,
    admin INTEGER NOT NULL DEFAULT 0,
    session TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS client_secrets_key ON client_secrets(key_name, expires_at)
""",
    ),
)


@dataclass(frozen=True)
class ClientSecret:
    """What a redeemed token stands for: the key that minted it and the session it was minted for."""

    key: str | None  # None: minted while keys are off
    admin: bool
    session: dict[str, Any] | None
    expires_at: float


class TooManySecretsError(Exception):
    """The key holds MAX_UNUSED_PER_KEY unused secrets already."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ClientSecretStore:
    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock  # wall clock: expiry is compared across processes and hosts
        migrate(database, "client_secrets", MIGRATIONS)

    def mint(self, key: str | None, admin: bool, session: dict[str, Any] | None, seconds: float) -> tuple[str, float]:
        """A new token for one session of `key`, valid for `seconds`; returns (token, expires_at).
        Raises TooManySecretsError when the key holds MAX_UNUSED_PER_KEY unused ones."""
        token = PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        # Whole seconds, as the answer states them (OpenAI's expires_at is an integer): the token
        # stops working at the second its holder was told, not up to a second later.
        expires_at = float(math.ceil(now + seconds))
        owner = key or ""
        with self.database.transaction(exclusive="client_secrets") as db:
            db.execute("DELETE FROM client_secrets WHERE expires_at <= ?", (now,))
            row = db.execute(
                "SELECT COUNT(*) AS n FROM client_secrets WHERE COALESCE(key_name, '') = ?", (owner,)
            ).fetchone()
            if row is not None and int(row["n"]) >= MAX_UNUSED_PER_KEY:
                raise TooManySecretsError()
            db.execute(
                "INSERT INTO client_secrets (digest, key_name, admin, session, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _digest(token),
                    key,
                    int(admin),
                    json.dumps(session) if session is not None else None,
                    now,
                    expires_at,
                ),
            )
        return token, expires_at

    def redeem(self, token: str) -> ClientSecret | None:
        """What `token` was minted for, once: None when it is unknown, used or expired."""
        digest = _digest(token)
        with self.database.transaction() as db:
            row = db.execute("SELECT * FROM client_secrets WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                return None
            # Whoever deletes the row holds the session; a second redeemer (another process) finds none.
            if db.execute("DELETE FROM client_secrets WHERE digest = ?", (digest,)).rowcount != 1:
                return None
        if row["expires_at"] <= self._clock():
            return None
        session = json.loads(row["session"]) if row["session"] is not None else None
        return ClientSecret(row["key_name"], bool(row["admin"]), session, float(row["expires_at"]))

    def unused(self, key: str | None) -> int:
        """Unexpired, unused secrets of `key`."""
        with self.database.transaction() as db:
            row = db.execute(
                "SELECT COUNT(*) AS n FROM client_secrets WHERE COALESCE(key_name, '') = ? AND expires_at > ?",
                (key or "", self._clock()),
            ).fetchone()
        return int(row["n"]) if row else 0
