"""Studies and their summaries: when a study is complete, what its cines found, and the
summary object made of them.

A study is complete on association release or after a quiet period, whichever comes first;
it is done once no job of it waits to be processed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lus_pacs.domain import JobState, Output
from lus_pacs.queue.database import Database
from lus_pacs.queue.deliveries import DeliveryRow, DeliveryState, delivery_rows


@dataclass(frozen=True)
class SummaryRow:
    """One study summary in ``lus-pacs status``."""

    id: int
    study_instance_uid: str
    sop_instance_uid: str
    deliveries: tuple[DeliveryRow, ...]


class Studies:
    """Study completion, the records of a study's cines, and study summaries."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def complete(self, study_uids: Sequence[str]) -> None:
        with self._db.transaction() as db:
            db.executemany(
                "UPDATE studies SET complete = 1 WHERE study_instance_uid = ?",
                [(uid,) for uid in study_uids],
            )

    def complete_quiet(self, quiet_s: float) -> list[str]:
        """Studies with nothing received for ``quiet_s`` seconds, now marked complete."""
        cutoff = time.time() - quiet_s
        with self._db.transaction() as db:
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

    def done(self, study_uid: str) -> bool:
        """Complete, and no job of the study is still waiting to be processed."""
        db = self._db.connection()
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
        rows = self._db.connection().execute(
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
        db = self._db.connection()
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
        with self._db.transaction() as db:
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
        db = self._db.connection()
        out = []
        for r in db.execute("SELECT id, study_instance_uid, sop_instance_uid FROM summaries"):
            deliveries = delivery_rows(db, r["id"], summary=True)
            out.append(
                SummaryRow(r["id"], r["study_instance_uid"], r["sop_instance_uid"], deliveries)
            )
        return out
