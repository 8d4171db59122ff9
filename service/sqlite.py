"""SQLite as the stores use it: a connection per operation, in WAL mode, one transaction."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@contextmanager
def connection(path: Path) -> Iterator[sqlite3.Connection]:
    """Open `path`, run the block as one transaction, close. A connection per operation because
    callers are threads and several processes; WAL lets readers and the one writer proceed together."""
    db = sqlite3.connect(path, timeout=30.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.row_factory = sqlite3.Row
        with db:
            yield db
    finally:
        db.close()
