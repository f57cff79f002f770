"""The job store's SQLite database: its schema, one connection per thread, and transactions.

SQLite in WAL mode under the node's data directory. Every state change is one committed
transaction, so a restart resumes where a crash left off. SQLite connections are not shared
across threads, so each thread opens its own; a writer waits up to 30 s for another's lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_JOBS = """CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL REFERENCES instances(sop_instance_uid),
    models TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    record TEXT,
    updated_at REAL NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    revision TEXT NOT NULL DEFAULT '',
    interrupted INTEGER NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0,
    started INTEGER NOT NULL DEFAULT 1,
    UNIQUE (sop_instance_uid, models, content)
);"""
"""A job per instance content and model versions; ``revision`` is empty for the first content
an instance was received with and the content's digest for a later one; ``interrupted``
counts the node's stops (a crash, the out-of-memory killer) while a worker held it; ``claims``
counts the times a worker took it (only the latest one's outcome is recorded); ``started``
says whether the worker holding it has started on it (it waits for the pixel budget first)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL,
    content TEXT NOT NULL DEFAULT ''
);
{jobs}
CREATE TABLE IF NOT EXISTS outputs (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (job_id, kind)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (job_id, destination)
);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    last_received_at REAL NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    summarised INTEGER NOT NULL DEFAULT 0,
    pruned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    record TEXT NOT NULL,
    made_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS summary_deliveries (
    summary_id INTEGER NOT NULL REFERENCES summaries(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (summary_id, destination)
);
CREATE TABLE IF NOT EXISTS left_files (
    study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (study_instance_uid, path)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_instance_uid);
CREATE INDEX IF NOT EXISTS summaries_by_study ON summaries(study_instance_uid);
""".replace("{jobs}", _JOBS)

_ADDED_COLUMNS = (
    ("studies", "summarised", "INTEGER NOT NULL DEFAULT 0"),
    ("instances", "content", "TEXT NOT NULL DEFAULT ''"),
    ("studies", "pruned", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "interrupted", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "claims", "INTEGER NOT NULL DEFAULT 0"),
    ("summaries", "series_uid", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "started", "INTEGER NOT NULL DEFAULT 1"),
)
"""Columns added since the first schema: a store made by an older node gets them on open."""


class Database:
    """The store's database file at ``path``, created with its tables when absent.

    Safe to use from several threads: each gets its own connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self.connection()
        db.executescript(_SCHEMA)  # idempotent; runs in its own transaction
        for table, column, definition in _ADDED_COLUMNS:
            present = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        if "content" not in {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}:
            _rebuild_jobs(db)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode: for reads; writes use
        :meth:`transaction`."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged instance survives power loss
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises.
        ``BEGIN IMMEDIATE`` takes the write lock at once, so two writers never deadlock."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _rebuild_jobs(db: sqlite3.Connection) -> None:
    """A jobs table of an older node (one job per instance and model versions) rebuilt with the
    content columns and key, its rows kept (SQLite's table-rebuild procedure: the key of a
    table cannot be altered in place)."""
    db.execute("PRAGMA foreign_keys=OFF")
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(_JOBS.replace("CREATE TABLE IF NOT EXISTS jobs", "CREATE TABLE jobs_rebuilt"))
        db.execute(
            "INSERT INTO jobs_rebuilt (id, sop_instance_uid, models, state, error, record, "
            "updated_at) SELECT id, sop_instance_uid, models, state, error, record, updated_at "
            "FROM jobs"
        )
        db.execute("DROP TABLE jobs")
        db.execute("ALTER TABLE jobs_rebuilt RENAME TO jobs")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state)")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        db.execute("PRAGMA foreign_keys=ON")
