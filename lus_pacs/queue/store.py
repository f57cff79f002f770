"""The job store: every received instance, its processing job and each delivery of its results.

SQLite in WAL mode under the node's data directory. Every state change is one committed row
update, so a restart resumes where a crash left off:

* a job is ``queued`` when its instance is on disk, ``processing`` while a worker holds it,
  ``encoded`` once its result files are on disk, ``sent`` when every destination has them, and
  ``failed`` when processing failed (bad input) or a delivery ran out of retries;
* a job is keyed by source instance and model versions, so a result is made and sent once per
  source instance and model version, also across restarts.

One connection per thread (SQLite connections are not shared across threads).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class JobState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    ENCODED = "encoded"
    SENT = "sent"
    FAILED = "failed"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL REFERENCES instances(sop_instance_uid),
    models TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    record TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (sop_instance_uid, models)
);
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
    complete INTEGER NOT NULL DEFAULT 0
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
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
"""


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    calling_ae: str
    path: Path


@dataclass(frozen=True)
class Job:
    id: int
    instance: Instance
    models: str
    state: JobState
    error: str | None


@dataclass(frozen=True)
class Output:
    kind: str
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class Delivery:
    job_id: int
    """The job whose outputs these are or, with ``summary``, the study summary's id."""
    destination: str
    attempts: int
    outputs: tuple[Output, ...]
    summary: bool = False
    """A study summary (made when the study is complete) rather than a cine's results."""


@dataclass(frozen=True)
class SummaryRow:
    """One study summary in ``lus-pacs status``."""

    id: int
    study_instance_uid: str
    sop_instance_uid: str
    deliveries: tuple[tuple[str, DeliveryState, int, str | None], ...]


def _tables(summary: bool) -> tuple[str, str]:
    """The delivery table and its owner column, for a cine's results or a study summary."""
    return ("summary_deliveries", "summary_id") if summary else ("deliveries", "job_id")


@dataclass(frozen=True)
class JobRow:
    """One line of ``lus-pacs status``."""

    id: int
    sop_instance_uid: str
    state: JobState
    error: str | None
    deliveries: tuple[tuple[str, DeliveryState, int, str | None], ...]


class JobStore:
    """The node's durable state. Safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)  # idempotent; runs in its own transaction

    def _connection(self) -> sqlite3.Connection:
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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # Receiving

    def record_instance(self, instance: Instance, models: str) -> bool:
        """Record a stored instance and queue its job; False when the same instance was
        already processed (or is queued) for these model versions."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sop_instance_uid) DO UPDATE SET path = excluded.path, "
                "received_at = excluded.received_at",
                (
                    instance.sop_instance_uid,
                    instance.sop_class_uid,
                    instance.study_instance_uid,
                    instance.series_instance_uid,
                    instance.calling_ae,
                    str(instance.path),
                    now,
                ),
            )
            db.execute(
                "INSERT INTO studies VALUES (?, ?, 0) ON CONFLICT (study_instance_uid) "
                "DO UPDATE SET last_received_at = excluded.last_received_at, complete = 0",
                (instance.study_instance_uid, now),
            )
            cursor = db.execute(
                "INSERT INTO jobs (sop_instance_uid, models, state, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (instance.sop_instance_uid, models, JobState.QUEUED, now),
            )
            return cursor.rowcount == 1

    # Processing

    def recover(self) -> int:
        """After a restart: jobs a dead worker held go back to the queue. Returns how many."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, time.time(), JobState.PROCESSING),
            )
            return cursor.rowcount

    def claim_job(self) -> Job | None:
        """The oldest queued job, now ``processing``; None when the queue is empty."""
        with self._tx() as db:
            row = db.execute(
                "SELECT j.id, j.models, j.state, j.error, i.* FROM jobs j "
                "JOIN instances i USING (sop_instance_uid) WHERE j.state = ? "
                "ORDER BY j.id LIMIT 1",
                (JobState.QUEUED,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                (JobState.PROCESSING, time.time(), row["id"]),
            )
        return Job(row["id"], _instance(row), row["models"], JobState.PROCESSING, None)

    def finish_job(
        self, job_id: int, record: str, outputs: Sequence[Output], destinations: Sequence[str]
    ) -> None:
        """The job's result files are on disk: record them and queue one delivery each."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)",
                [(job_id, o.kind, o.sop_instance_uid, str(o.path)) for o in outputs],
            )
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (job_id, destination, state, next_attempt_at) "
                "VALUES (?, ?, ?, ?)",
                [(job_id, d, DeliveryState.PENDING, now) for d in destinations],
            )
            state = JobState.ENCODED if destinations else JobState.SENT
            db.execute(
                "UPDATE jobs SET state = ?, record = ?, error = NULL, updated_at = ? WHERE id = ?",
                (state, record, now, job_id),
            )

    def fail_job(self, job_id: int, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (JobState.FAILED, reason, time.time(), job_id),
            )

    # Delivering

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first: cines' results, then
        study summaries."""
        now = time.time() if now is None else now
        db = self._connection()
        due: list[Delivery] = []
        for summary in (False, True):
            table, owner = _tables(summary)
            rows = db.execute(
                f"SELECT {owner}, destination, attempts FROM {table} "
                f"WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, {owner}",
                (DeliveryState.PENDING, now),
            ).fetchall()
            due.extend(
                Delivery(
                    r[0],
                    r["destination"],
                    r["attempts"],
                    self._summary_output(r[0]) if summary else self.outputs(r[0]),
                    summary,
                )
                for r in rows
            )
        return due

    def outputs(self, job_id: int) -> tuple[Output, ...]:
        rows = self._connection().execute(
            "SELECT kind, sop_instance_uid, path FROM outputs WHERE job_id = ? ORDER BY kind",
            (job_id,),
        )
        return tuple(Output(r["kind"], r["sop_instance_uid"], Path(r["path"])) for r in rows)

    def _summary_output(self, summary_id: int) -> tuple[Output, ...]:
        r = (
            self._connection()
            .execute(
                "SELECT kind, sop_instance_uid, path FROM summaries WHERE id = ?", (summary_id,)
            )
            .fetchone()
        )
        return (Output(r["kind"], r["sop_instance_uid"], Path(r["path"])),)

    def delivered(self, job_id: int, destination: str, *, summary: bool = False) -> None:
        table, owner = _tables(summary)
        with self._tx() as db:
            db.execute(
                f"UPDATE {table} SET state = ?, error = NULL WHERE {owner} = ? AND destination = ?",
                (DeliveryState.SENT, job_id, destination),
            )
            if not summary:
                self._settle(db, job_id)

    def delivery_failed(
        self,
        job_id: int,
        destination: str,
        reason: str,
        retry_at: float | None,
        *,
        summary: bool = False,
    ) -> None:
        """Count a failed attempt; ``retry_at`` None means the retry budget is spent."""
        table, owner = _tables(summary)
        with self._tx() as db:
            if retry_at is None:
                db.execute(
                    f"UPDATE {table} SET state = ?, attempts = attempts + 1, error = ? "
                    f"WHERE {owner} = ? AND destination = ?",
                    (DeliveryState.FAILED, reason, job_id, destination),
                )
            else:
                db.execute(
                    f"UPDATE {table} SET attempts = attempts + 1, error = ?, "
                    f"next_attempt_at = ? WHERE {owner} = ? AND destination = ?",
                    (reason, retry_at, job_id, destination),
                )
            if not summary:
                self._settle(db, job_id)

    def _settle(self, db: sqlite3.Connection, job_id: int) -> None:
        states = {
            r[0] for r in db.execute("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))
        }
        if states == {DeliveryState.SENT}:
            state, error = JobState.SENT, None
        elif DeliveryState.FAILED in states and DeliveryState.PENDING not in states:
            state, error = JobState.FAILED, "delivery failed: see lus-pacs status"
        else:
            return
        db.execute(
            "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
            (state, error, time.time(), job_id),
        )

    def retry_failed(self) -> int:
        """Failed deliveries get a fresh retry budget and failed jobs are processed again.
        Returns the number of jobs put back."""
        now = time.time()
        with self._tx() as db:
            failed = [
                r[0] for r in db.execute("SELECT id FROM jobs WHERE state = ?", (JobState.FAILED,))
            ]
            for job_id in failed:
                undelivered = db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ? "
                    "WHERE job_id = ? AND state = ?",
                    (DeliveryState.PENDING, now, job_id, DeliveryState.FAILED),
                ).rowcount
                state = JobState.ENCODED if undelivered else JobState.QUEUED
                db.execute(
                    "UPDATE jobs SET state = ?, error = NULL, updated_at = ? WHERE id = ?",
                    (state, now, job_id),
                )
            summaries = db.execute(
                "UPDATE summary_deliveries SET state = ?, attempts = 0, next_attempt_at = ? "
                "WHERE state = ?",
                (DeliveryState.PENDING, now, DeliveryState.FAILED),
            ).rowcount
            return len(failed) + summaries

    # Studies

    def complete_studies(self, study_uids: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE studies SET complete = 1 WHERE study_instance_uid = ?",
                [(uid,) for uid in study_uids],
            )

    def quiet_studies(self, quiet_s: float) -> list[str]:
        """Studies with nothing received for ``quiet_s`` seconds, now marked complete."""
        cutoff = time.time() - quiet_s
        with self._tx() as db:
            uids = [
                r[0]
                for r in db.execute(
                    "SELECT study_instance_uid FROM studies "
                    "WHERE complete = 0 AND last_received_at <= ?",
                    (cutoff,),
                )
            ]
            db.executemany(
                "UPDATE studies SET complete = 1 WHERE study_instance_uid = ?",
                [(u,) for u in uids],
            )
        return uids

    def study_done(self, study_uid: str) -> bool:
        """Complete, and no job of the study is still waiting to be processed."""
        db = self._connection()
        row = db.execute(
            "SELECT complete FROM studies WHERE study_instance_uid = ?", (study_uid,)
        ).fetchone()
        if row is None or not row[0]:
            return False
        waiting = db.execute(
            "SELECT COUNT(*) FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE i.study_instance_uid = ? AND j.state IN (?, ?)",
            (study_uid, JobState.QUEUED, JobState.PROCESSING),
        ).fetchone()[0]
        return int(waiting) == 0

    def processed_paths(self, study_uid: str, models: str) -> list[Path]:
        """The stored files of the study's instances with a result record for ``models``."""
        rows = self._connection().execute(
            "SELECT i.path FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE j.record IS NOT NULL AND i.study_instance_uid = ? AND j.models = ? "
            "ORDER BY j.id",
            (study_uid, models),
        )
        return [Path(r[0]) for r in rows]

    def records(self, study_uid: str | None = None, models: str | None = None) -> list[str]:
        """The result records (JSON text) of finished jobs, of one study or all; with
        ``models``, only those made by these model versions (after a model update the older
        records stay in the store, and a study's summary must not count a cine twice)."""
        db = self._connection()
        sql = (
            "SELECT j.record FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE j.record IS NOT NULL"
        )
        args: tuple[str, ...] = ()
        if study_uid is not None:
            sql += " AND i.study_instance_uid = ?"
            args = (*args, study_uid)
        if models is not None:
            sql += " AND j.models = ?"
            args = (*args, models)
        return [r[0] for r in db.execute(sql + " ORDER BY j.id", args)]

    def record_summary(
        self, study_uid: str, record: str, output: Output, destinations: Sequence[str]
    ) -> bool:
        """A study summary's file is on disk: record it and queue one delivery each. False
        when the same summary object (same SOP Instance UID) was recorded before: the study
        did not change, and what was sent is not sent again."""
        now = time.time()
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO summaries (study_instance_uid, kind, sop_instance_uid, path, record, "
                "made_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (study_uid, output.kind, output.sop_instance_uid, str(output.path), record, now),
            )
            if cursor.rowcount != 1:
                return False
            db.executemany(
                "INSERT INTO summary_deliveries (summary_id, destination, state, "
                "next_attempt_at) VALUES (?, ?, ?, ?)",
                [(cursor.lastrowid, d, DeliveryState.PENDING, now) for d in destinations],
            )
            return True

    def summaries(self) -> list[SummaryRow]:
        db = self._connection()
        out = []
        for r in db.execute("SELECT id, study_instance_uid, sop_instance_uid FROM summaries"):
            deliveries = self._delivery_rows(r["id"], summary=True)
            out.append(
                SummaryRow(r["id"], r["study_instance_uid"], r["sop_instance_uid"], deliveries)
            )
        return out

    def _delivery_rows(
        self, owner_id: int, *, summary: bool
    ) -> tuple[tuple[str, DeliveryState, int, str | None], ...]:
        """(destination, state, attempts, last error) of each delivery of a job or summary."""
        table, owner = _tables(summary)
        rows = self._connection().execute(
            f"SELECT destination, state, attempts, error FROM {table} "
            f"WHERE {owner} = ? ORDER BY destination",
            (owner_id,),
        )
        return tuple(
            (d["destination"], DeliveryState(d["state"]), int(d["attempts"]), d["error"])
            for d in rows
        )

    # Reporting

    def counts(self) -> dict[JobState, int]:
        rows = self._connection().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {JobState(r[0]): int(r[1]) for r in rows}

    def jobs(self, state: JobState | None = None) -> list[JobRow]:
        db = self._connection()
        sql = "SELECT id, sop_instance_uid, state, error FROM jobs"
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        out = []
        for r in db.execute(sql + " ORDER BY id", args).fetchall():
            deliveries = self._delivery_rows(r["id"], summary=False)
            out.append(
                JobRow(r["id"], r["sop_instance_uid"], JobState(r["state"]), r["error"], deliveries)
            )
        return out


def _instance(row: sqlite3.Row) -> Instance:
    return Instance(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        calling_ae=row["calling_ae"],
        path=Path(row["path"]),
    )
