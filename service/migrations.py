"""Versioned schema migrations: each store's tables are built by an ordered list of steps, and
the database records how many of them have run.

`schema_versions(store TEXT PRIMARY KEY, version INTEGER)` holds one row per store ("jobs", the
job table; "quality", the sample index and its totals): the number of that store's steps applied.
Opening a store calls `migrate`, which runs the steps it lacks, in order. Each step runs in a
transaction of its own that also records the new version, under the database's lock across
processes and hosts (SQLite: a write transaction, BEGIN IMMEDIATE, on the file; PostgreSQL: a
transaction advisory lock): a step runs once, whole or not at all (both databases roll DDL back),
and processes or replicas starting together wait for each other and then find the work done.

Adopting a store from before versioning (its tables but no `schema_versions` row): it runs every
step from the first. A store's first steps describe the schema of those releases and are written
to be no-ops where their change is already there: `CREATE ... IF NOT EXISTS`, and `add_columns`,
which adds only the columns a table lacks (some older stores lack columns that later ones have).
Every step after them runs exactly once, so it needs no such care.

A version above the last step means a newer release has written the tables; `migrate` refuses
them (SchemaTooNewError) rather than let this code misread or damage what it does not know.

Adding a migration: append a Step to the store's MIGRATIONS (never edit, reorder or remove one
that was released: databases in the wild have run it). Its SQL is the dialect both databases
share (see service.database); statements are split on ";", so none may contain one in a literal.
Keep it additive (new tables, nullable or defaulted columns): during a rolling update the previous
release's replicas still use the tables. Update the store's dataclass and queries in the same
change, and add the case to tests/test_migrations.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from service.database import Connection, Database

log = logging.getLogger(__name__)

_VERSIONS = "CREATE TABLE IF NOT EXISTS schema_versions (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"


@dataclass(frozen=True)
class Step:
    """One change to a store's schema: `sql` (statements separated by ";"), then `add_columns`
    ({table: {column: type}}), each added only where the table lacks it."""

    description: str
    sql: str = ""
    add_columns: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


class SchemaTooNewError(RuntimeError):
    """The database's schema is newer than the code: a newer release wrote it."""

    def __init__(self, store: str, found: int, latest: int) -> None:
        super().__init__(
            f"the {store} store's tables are at schema version {found}, but this release knows only"
            f" versions up to {latest}: a newer release has written them. Run that release or a newer"
            " one, or restore a backup taken before the upgrade; this one leaves them untouched."
        )
        self.store, self.found, self.latest = store, found, latest


def migrate(database: Database, store: str, steps: Sequence[Step]) -> int:
    """Apply the steps of `store` that `database` has not run yet, each in its own locked
    transaction; returns the version now recorded (len(steps)).

    Raises SchemaTooNewError when the recorded version is above len(steps); a step that fails
    raises its database error, leaving that step undone and the earlier ones recorded.
    """
    while True:
        # One step per transaction: the version is read under the lock, so a process that waited
        # for another sees the steps that one applied and does not repeat them.
        with database.transaction(exclusive="schema") as db:
            db.execute(_VERSIONS)
            version = current_version(db, store)
            if version > len(steps):
                raise SchemaTooNewError(store, version, len(steps))
            if version == len(steps):
                return version
            _apply(database, db, steps[version])
            db.execute(
                "INSERT INTO schema_versions (store, version) VALUES (?, ?)"
                " ON CONFLICT(store) DO UPDATE SET version = excluded.version",
                (store, version + 1),
            )
        log.info("%s store: schema version %d (%s)", store, version + 1, steps[version].description)


def current_version(db: Connection, store: str) -> int:
    """The number of `store`'s steps recorded in `schema_versions` (0: none, or unversioned)."""
    row = db.execute("SELECT version FROM schema_versions WHERE store = ?", (store,)).fetchone()
    return int(row["version"]) if row is not None else 0


def _apply(database: Database, db: Connection, step: Step) -> None:
    for statement in filter(None, (s.strip() for s in step.sql.split(";"))):
        db.execute(statement)
    for table, columns in step.add_columns.items():
        present = database.columns(db, table)
        for column, kind in columns.items():
            if column not in present:  # SQLite has no ADD COLUMN IF NOT EXISTS; PostgreSQL's is not needed
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
