"""Studies and their summaries: when a study is complete, what its cines found, and the
summary object made of them.

A study is complete on association release or after a quiet period, whichever comes first;
it is done once no job of it waits to be processed, and then awaits its summary until one is
made. All three are rows of the store, so a restart makes every summary a crash left unmade;
an instance received later reopens its study.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lus_pacs.domain import JobState, Output
from lus_pacs.queue.database import Database
from lus_pacs.queue.deliveries import DeliveryRow, DeliveryState, called_off, delivery_rows
from lus_pacs.queue.jobs import MADE_BY_OTHERS_ONLY


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
        return study_uid in {uid for uid, _ in self._awaiting(study_uid, summarised=None)}

    def awaiting_summary(self) -> list[tuple[str, float]]:
        """Done studies whose summary is not made yet, as (study, last received at): pass
        both to :meth:`summarised` once it is."""
        return self._awaiting(None, summarised=False)

    def summarised(self, study_uid: str, received_at: float) -> bool:
        """The study's summary is made; False (and it stays awaiting) when an instance of it
        arrived since ``received_at``, as :meth:`awaiting_summary` gave it."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE studies SET summarised = 1 WHERE study_instance_uid = ? "
                "AND last_received_at = ? AND complete = 1",
                (study_uid, received_at),
            )
            return cursor.rowcount == 1

    def _awaiting(self, study_uid: str | None, summarised: bool | None) -> list[tuple[str, float]]:
        sql = (
            "SELECT s.study_instance_uid, s.last_received_at FROM studies s WHERE s.complete = 1 "
            "AND NOT EXISTS (SELECT 1 FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE i.study_instance_uid = s.study_instance_uid AND j.state IN (?, ?))"
        )
        args: tuple[object, ...] = (JobState.QUEUED, JobState.PROCESSING)
        if study_uid is not None:
            sql += " AND s.study_instance_uid = ?"
            args = (*args, study_uid)
        if summarised is not None:
            sql += " AND s.summarised = ?"
            args = (*args, int(summarised))
        rows = self._db.connection().execute(sql + " ORDER BY s.last_received_at", args)
        return [(r[0], float(r[1])) for r in rows]

    def failed(self, study_uid: str, models: str) -> dict[str, str]:
        """SOP Instance UID -> reason, for the study's instances whose job for ``models``
        failed to process them (and was not replaced by other content since). A job that
        failed only at delivery has its record: the cine was processed and is summarised."""
        rows = self._db.connection().execute(
            "SELECT i.sop_instance_uid, j.error FROM jobs j JOIN instances i "
            "USING (sop_instance_uid) WHERE j.state = ? AND i.study_instance_uid = ? "
            "AND j.models = ? AND j.record IS NULL ORDER BY j.id",
            (JobState.FAILED, study_uid, models),
        )
        return {r[0]: r[1] or "failed" for r in rows}

    def processed_paths(self, study_uid: str, models: str) -> list[Path]:
        """The stored files of the study's instances with a result record for ``models``."""
        rows = self._db.connection().execute(
            "SELECT i.path FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE j.record IS NOT NULL AND j.state != ? AND i.study_instance_uid = ? "
            "AND j.models = ? ORDER BY j.id",
            (JobState.REPLACED, study_uid, models),
        )
        return [Path(r[0]) for r in rows]

    def made_by_others_only(self, study_uid: str, models: str) -> list[str]:
        """The study's instances made by other model versions only, none by ``models`` (their
        files removed by retention, so not made again by
        :meth:`~lus_pacs.queue.jobs.Jobs.queue_missing`)."""
        rows = self._db.connection().execute(
            f"SELECT i.sop_instance_uid {MADE_BY_OTHERS_ONLY}",
            (study_uid, models, JobState.REPLACED),
        )
        return [r[0] for r in rows]

    def records(self, study_uid: str | None = None, models: str | None = None) -> list[str]:
        """The result records (JSON text) of finished jobs, of one study or all, but those of
        replaced content; with
        ``models``, only those made by these model versions (after a model update the older
        records stay in the store, and a study's summary must not count a cine twice)."""
        db = self._db.connection()
        sql = (
            "SELECT j.record FROM jobs j JOIN instances i USING (sop_instance_uid) "
            "WHERE j.record IS NOT NULL AND j.state != ?"
        )
        args: tuple[str, ...] = (JobState.REPLACED,)
        if study_uid is not None:
            sql += " AND i.study_instance_uid = ?"
            args = (*args, study_uid)
        if models is not None:
            sql += " AND j.models = ?"
            args = (*args, models)
        return [r[0] for r in db.execute(sql + " ORDER BY j.id", args)]

    def record_summary(
        self,
        study_uid: str,
        record: str,
        output: Output,
        destinations: Sequence[str],
        series_uid: str = "",
        received_at: float | None = None,
    ) -> bool:
        """A study summary's file is on disk: record it and queue one delivery each. False
        when the same summary object (same SOP Instance UID) was recorded before: the study
        did not change, and what was sent is not sent again; but its deliveries called off
        (the study changed, then came back to what it said) are queued again, True: without
        them no destination would get a summary of the study. False too, nothing recorded, when
        the study received an instance since ``received_at`` (its ``last_received_at`` when
        the summary was begun): a cine received again with other content calls off the
        summaries recorded, and one made from the old content at that moment was sent."""
        now = time.time()
        with self._db.transaction() as db:
            if received_at is not None:
                row = db.execute(
                    "SELECT last_received_at FROM studies WHERE study_instance_uid = ?",
                    (study_uid,),
                ).fetchone()
                if row is None or row[0] != received_at:
                    return False
            cursor = db.execute(
                "INSERT INTO summaries (study_instance_uid, kind, sop_instance_uid, path, record, "
                "made_at, series_uid) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    study_uid,
                    output.kind,
                    output.sop_instance_uid,
                    str(output.path),
                    record,
                    now,
                    series_uid,
                ),
            )
            if cursor.rowcount != 1:
                revived = db.execute(
                    "UPDATE summary_deliveries SET state = ?, attempts = 0, next_attempt_at = ?, "
                    f"error = NULL WHERE {called_off()} AND summary_id = "
                    "(SELECT id FROM summaries WHERE sop_instance_uid = ?)",
                    (DeliveryState.PENDING, now, output.sop_instance_uid),
                )
                return revived.rowcount > 0
            db.executemany(
                "INSERT INTO summary_deliveries (summary_id, destination, state, "
                "next_attempt_at) VALUES (?, ?, ?, ?)",
                [(cursor.lastrowid, d, DeliveryState.PENDING, now) for d in destinations],
            )
            return True

    def summary_known(self, sop_instance_uid: str) -> bool:
        """Whether a summary of this SOP Instance UID is recorded."""
        row = (
            self._db.connection()
            .execute("SELECT 1 FROM summaries WHERE sop_instance_uid = ?", (sop_instance_uid,))
            .fetchone()
        )
        return row is not None

    def prunable(self, before: float) -> list[str]:
        """Studies whose files may go (:func:`lus_pacs.retention.prune`): summarised, nothing
        received, processed or summarised since ``before`` (seconds since the epoch; results
        and summaries are made after the last instance, late after a retry), every job sent
        (or replaced by other content) and every summary delivered (or called off: made again
        after one of its cines changed); none pruned before. A study with a job or a delivery
        that failed keeps its files for ``lus-pacs retry``; a called-off delivery is never
        retried, and held the study's files for good."""
        rows = self._db.connection().execute(
            "SELECT s.study_instance_uid FROM studies s WHERE s.summarised = 1 AND s.pruned = 0 "
            "AND s.last_received_at < ? AND NOT EXISTS (SELECT 1 FROM jobs j JOIN instances i "
            "USING (sop_instance_uid) WHERE i.study_instance_uid = s.study_instance_uid AND "
            "j.state NOT IN (?, ?)) AND NOT EXISTS (SELECT 1 FROM summaries m JOIN "
            "summary_deliveries d ON d.summary_id = m.id WHERE m.study_instance_uid = "
            f"s.study_instance_uid AND d.state != ? AND NOT {called_off('d')}) AND NOT EXISTS "
            "(SELECT 1 FROM jobs j JOIN "
            "instances i USING (sop_instance_uid) WHERE i.study_instance_uid = "
            "s.study_instance_uid AND j.updated_at >= ?) AND NOT EXISTS (SELECT 1 FROM "
            "summaries m WHERE m.study_instance_uid = s.study_instance_uid AND m.made_at >= ?) "
            "ORDER BY s.last_received_at",
            (
                before,
                JobState.SENT,
                JobState.REPLACED,
                DeliveryState.SENT,
                before,
                before,
            ),
        )
        return [r[0] for r in rows]

    def files(self, study_uid: str) -> tuple[list[tuple[str, Path]], list[Path]]:
        """The study's received instances as (SOP Instance UID, stored path), the first files
        of instances sent again into it from another study (with an empty UID), and every
        result file recorded for it (each job's objects, each summary SR)."""
        db = self._db.connection()
        instances = [
            (r[0], Path(r[1]))
            for r in db.execute(
                "SELECT sop_instance_uid, path FROM instances WHERE study_instance_uid = ? "
                "UNION ALL SELECT '', path FROM left_files WHERE study_instance_uid = ?",
                (study_uid, study_uid),
            )
        ]
        results = [
            Path(r[0])
            for r in db.execute(
                "SELECT o.path FROM outputs o JOIN jobs j ON j.id = o.job_id JOIN instances i "
                "ON i.sop_instance_uid = j.sop_instance_uid WHERE i.study_instance_uid = ? "
                "UNION SELECT path FROM summaries WHERE study_instance_uid = ?",
                (study_uid, study_uid),
            )
        ]
        return instances, results

    def pruned(self, study_uid: str, before: float) -> bool:
        """The study's files are gone; False when an instance of it arrived meanwhile (then
        it is pruned again once it is done)."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE studies SET pruned = 1 WHERE study_instance_uid = ? AND summarised = 1 "
                "AND last_received_at < ?",
                (study_uid, before),
            )
            return cursor.rowcount == 1

    def summary_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of the study's summary SRs in series ``series_uid`` (those of
        one set of model versions) recorded so far, oldest first; not those called off before
        they were sent anywhere, which no PACS holds (one sent to a destination before it was
        called off for another is held there, and the next names it)."""
        rows = self._db.connection().execute(
            "SELECT sop_instance_uid FROM summaries m WHERE study_instance_uid = ? AND "
            "series_uid = ? AND (NOT EXISTS (SELECT 1 FROM summary_deliveries d WHERE "
            f"d.summary_id = m.id AND {called_off('d')}) OR EXISTS (SELECT 1 FROM "
            "summary_deliveries d WHERE d.summary_id = m.id AND d.state = ?)) ORDER BY id",
            (study_uid, series_uid, DeliveryState.SENT),
        )
        return [r[0] for r in rows]

    def summaries(self) -> list[SummaryRow]:
        db = self._db.connection()
        out = []
        for r in db.execute("SELECT id, study_instance_uid, sop_instance_uid FROM summaries"):
            deliveries = delivery_rows(db, r["id"], summary=True)
            out.append(
                SummaryRow(r["id"], r["study_instance_uid"], r["sop_instance_uid"], deliveries)
            )
        return out
