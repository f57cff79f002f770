"""Jobs: each received instance and its processing by one set of model versions.

A job is ``queued`` when its instance is on disk, ``processing`` while a worker holds it,
``encoded`` once its result files are on disk (then :mod:`.deliveries` takes over), and
``failed`` when processing failed (bad input). A job is keyed by source instance and model
versions, so a result is made and sent once per source instance and model version, also across
restarts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lus_pacs.domain import Instance, Job, JobState, Output
from lus_pacs.queue.database import Database
from lus_pacs.queue.deliveries import DeliveryRow, DeliveryState, delivery_rows


@dataclass(frozen=True)
class JobRow:
    """One line of ``lus-pacs status``."""

    id: int
    sop_instance_uid: str
    state: JobState
    error: str | None
    deliveries: tuple[DeliveryRow, ...]


class Jobs:
    """Recording received instances, and the processing queue."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_instance(self, instance: Instance, models: str) -> bool:
        """Record a stored instance and queue its job; False when the same instance was
        already processed (or is queued) for these model versions."""
        now = time.time()
        with self._db.transaction() as db:
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
                "INSERT INTO studies (study_instance_uid, last_received_at) VALUES (?, ?) "
                "ON CONFLICT (study_instance_uid) "
                "DO UPDATE SET last_received_at = excluded.last_received_at, complete = 0, "
                "summarised = 0",
                (instance.study_instance_uid, now),
            )
            cursor = db.execute(
                "INSERT INTO jobs (sop_instance_uid, models, state, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (instance.sop_instance_uid, models, JobState.QUEUED, now),
            )
            return cursor.rowcount == 1

    def recover(self) -> int:
        """After a restart: jobs a dead worker held go back to the queue. Returns how many."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, time.time(), JobState.PROCESSING),
            )
            return cursor.rowcount

    def requeue(self, job_id: int) -> None:
        """A job a worker could not finish for a cause outside the cine (a full disk) goes back
        to the queue; if the store itself is down, :meth:`recover` does it on the next start."""
        try:
            with self._db.transaction() as db:
                db.execute(
                    "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                    (JobState.QUEUED, time.time(), job_id, JobState.PROCESSING),
                )
        except sqlite3.Error:
            pass

    def claim(self) -> Job | None:
        """The oldest queued job, now ``processing``; None when the queue is empty."""
        with self._db.transaction() as db:
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

    def finish(
        self, job_id: int, record: str, outputs: Sequence[Output], destinations: Sequence[str]
    ) -> None:
        """The job's result files are on disk: record them and queue one delivery each."""
        now = time.time()
        with self._db.transaction() as db:
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

    def fail(self, job_id: int, reason: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (JobState.FAILED, reason, time.time(), job_id),
            )

    def counts(self) -> dict[JobState, int]:
        rows = self._db.connection().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {JobState(r[0]): int(r[1]) for r in rows}

    def rows(self, state: JobState | None = None) -> list[JobRow]:
        """Every job (or those in ``state``) with its deliveries, in the order received."""
        db = self._db.connection()
        sql = "SELECT id, sop_instance_uid, state, error FROM jobs"
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        out = []
        for r in db.execute(sql + " ORDER BY id", args).fetchall():
            deliveries = delivery_rows(db, r["id"], summary=False)
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
