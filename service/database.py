"""Where the stores keep their tables: SQLite files on one host (the default), PostgreSQL when
several replicas share the job table and the quality sample index (ASR_DATABASE_URL).

The stores write one SQL for both: `?` placeholders, `DOUBLE PRECISION` for reals (SQLite
gives it REAL affinity; PostgreSQL's REAL would be single precision, too coarse for epoch
seconds), `INSERT ... ON CONFLICT`, and no other dialect's extensions. What differs between the
two (transactions that must run alone, the columns a table has, a lock that spans processes and
hosts) is a method here, so no store ever asks which database it has.

The tables themselves come from versioned migrations (service.migrations, whose docstring says
how they run and how to add one): each store lists its schema steps in order, `schema_versions`
records how many have run, per store, and the missing ones run at start, each in one transaction
under the "schema" lock below. A change to a store's schema is a new step appended to its list,
written in the shared dialect above, never an edit of a released one.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
import zlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol, cast

from service.errors import MissingExtraError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from service.config import DatabaseSettings

Row = dict[str, Any]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Database(ABC):
    """A store's tables. Each `transaction()` is one atomic unit, rows are dicts."""

    @abstractmethod
    def transaction(self, exclusive: str | None = None) -> contextlib.AbstractContextManager[Connection]:
        """One transaction, committed when the block ends (rolled back on an exception). With
        `exclusive` (a name), no other transaction naming the same lock runs meanwhile, in any
        process: what a read-then-claim needs."""

    @abstractmethod
    def columns(self, db: Connection, table: str) -> set[str]:
        """The names of `table`'s columns, read in the transaction `db` (empty when there is no
        such table)."""

    @abstractmethod
    def exclusive(self, name: str, wait: bool) -> contextlib.AbstractContextManager[bool]:
        """Hold the lock `name` for the block, across processes and (PostgreSQL) hosts. Yields
        False at once when another holder has it and `wait` is False."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (a pool); the object is unusable afterwards."""


_SQLITE_TIMEOUT = 30.0


def _wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). Turning a new file to WAL needs its exclusive lock,
    and SQLite answers "database is locked" at once, without its busy timeout, when it sees a
    deadlock (this connection's read lock against another's pending write): processes that open
    a new file together would fail. So retry, within the same timeout."""
    deadline = time.monotonic() + _SQLITE_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteDatabase(Database):
    """One SQLite file. A connection per transaction, because callers are threads and several
    processes; WAL lets readers and the one writer proceed together."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode with dict rows, its block one transaction, closed after."""
        db = sqlite3.connect(self.path, timeout=_SQLITE_TIMEOUT)
        try:
            _wal(db)
            db.row_factory = _dict_row
            with db:
                yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self, exclusive: str | None = None) -> Iterator[Connection]:
        with self._open() as db:
            if exclusive is not None:  # SQLite has one writer: taking the write lock now suffices
                db.execute("BEGIN IMMEDIATE")
            yield db

    def columns(self, db: Connection, table: str) -> set[str]:
        return {row["name"] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}

    @contextlib.contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        # flock locks belong to an open file description, so two threads of one process
        # exclude each other as two processes do.
        with open(self.path.with_name(f"{self.path.name}.{name}.lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        pass  # nothing held between transactions


class PostgresDatabase(Database):
    """A PostgreSQL database shared by every replica, through a small connection pool."""

    def __init__(self, url: str, pool_size: int = 8, timeout: float = 30.0) -> None:
        # Imported here: psycopg is the `postgres` extra, needed only by those who set a URL.
        try:
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ModuleNotFoundError as exc:
            raise MissingExtraError(
                f"ASR_DATABASE_URL is set, which needs the optional dependency {exc.name!r}: "
                "pip install 'asr-service[postgres]'"
            ) from exc

        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(pool_size, 2),  # a held lock keeps one connection; the work needs another
            kwargs={"row_factory": dict_row},
            timeout=timeout,
            open=False,
            name="asr-store",
        )
        self._pool.open(wait=True, timeout=timeout)

    @contextlib.contextmanager
    def transaction(self, exclusive: str | None = None) -> Iterator[Connection]:
        with self._pool.connection() as conn, conn.transaction():
            if exclusive is not None:  # held until this transaction ends, released by the server
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(exclusive),))
            yield _PostgresConnection(conn)

    def columns(self, db: Connection, table: str) -> set[str]:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {row["column_name"] for row in rows}

    @contextlib.contextmanager
    def exclusive(self, name: str, wait: bool) -> Iterator[bool]:
        # A session lock on a connection kept for the block: if this process dies, the server
        # ends the session and the lock goes with it.
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                key = _lock_key(name)
                if wait:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                else:
                    held = conn.execute("SELECT pg_try_advisory_lock(%s) AS held", (key,)).fetchone()
                    if not (held and cast("Row", held)["held"]):
                        yield False
                        return
                try:
                    yield True
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            finally:
                conn.autocommit = False

    def close(self) -> None:
        if not self._pool.closed:
            self._pool.close()


class _PostgresConnection:
    """psycopg's connection with the stores' `?` placeholders (none of their SQL has a literal
    `?` or `%`, which is what makes the plain substitution safe)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return cast("Cursor", self._conn.execute(sql.replace("?", "%s"), tuple(params)))


def _lock_key(name: str) -> int:
    """A stable 63-bit advisory-lock key per name (the same in every process and release)."""
    return zlib.crc32(f"asr-service:{name}".encode()) | (0x5A5 << 32)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def open_shared(settings: DatabaseSettings) -> PostgresDatabase | None:
    """The shared database when ASR_DATABASE_URL is set (the stores then use it for their tables),
    else None: each store keeps its SQLite file beside its files."""
    if settings.url is None:
        return None
    return PostgresDatabase(settings.url.get_secret_value(), settings.pool_size, settings.connect_timeout_seconds)
