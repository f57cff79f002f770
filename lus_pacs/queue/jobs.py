"""Jobs: each received instance and its processing by one set of model versions.

A job is ``queued`` when its instance is on disk, ``processing`` while a worker holds it,
``encoded`` once its result files are on disk (then :mod:`.deliveries` takes over), and
``failed`` when processing failed (bad input), ``replaced`` when its instance came again with
other content. A job is keyed by source instance, its content and model versions, so a result
is made and sent once per source instance content and model version, also across restarts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lus_pacs.domain import Instance, Job, JobState, Output, Received
from lus_pacs.queue.database import Database
from lus_pacs.queue.deliveries import (
    CALLED_OFF,
    DeliveryRow,
    DeliveryState,
    called_off,
    delivery_rows,
)

_UNSENT = (
    f"state IN ('{DeliveryState.PENDING.value}', '{DeliveryState.FAILED.value}') "
    f"AND NOT {called_off()}"
)
"""SQL: a delivery not sent and not called off (pending, or failed and left for a retry)."""

MADE_BY_OTHERS_ONLY = (
    "FROM instances i WHERE i.study_instance_uid = ? AND NOT EXISTS (SELECT 1 FROM jobs j "
    "WHERE j.sop_instance_uid = i.sop_instance_uid AND j.models = ? AND j.content = i.content) "
    "AND EXISTS (SELECT 1 FROM jobs j WHERE j.sop_instance_uid = i.sop_instance_uid AND "
    "j.content = i.content AND j.state != ?)"
)
"""SQL, the instances ``i`` of a study (?) whose content has a job by other model versions but
none by these (?), replaced content (?: :attr:`JobState.REPLACED`) left out."""

MAX_INTERRUPTIONS = 3
"""Stops of the node while a worker held a job, after which the job fails at the next start."""
GIVEN_UP = "given up: "
"""How the error of a job failed while its worker still ran it (:meth:`Jobs.give_up`) begins."""


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Jobs.recover` did after a restart."""

    resumed: int
    """Jobs a dead worker held, back in the queue."""
    given_up: tuple[str, ...]
    """SOP Instance UIDs of the jobs failed instead: the node stopped on each too often."""


@dataclass(frozen=True)
class JobRow:
    """One line of ``lus-pacs status``."""

    id: int
    sop_instance_uid: str
    state: JobState
    error: str | None
    deliveries: tuple[DeliveryRow, ...]
    record: str | None = None
    """The cine's record (JSON) once processed."""


def _legacy(known: str, received: str) -> bool:
    """Whether ``known`` is a digest of an older node's kind (of the bytes, no prefix) and
    ``received`` of this one's (:data:`~lus_pacs.ingest.scp.CONTENT_DIGEST_PREFIX`)."""
    return received.startswith(_DIGEST_PREFIX) and not known.startswith(_DIGEST_PREFIX)


_DIGEST_PREFIX = "c-"
"""The listener's digest prefix (the queue does not import the listener)."""


class Jobs:
    """Recording received instances, and the processing queue."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_instance(
        self, instance: Instance, models: str, on_change: str = "reprocess"
    ) -> Received:
        """Record a stored instance and queue its job, unless the same content was received
        before (:class:`Received` says which). An instance received again with other content
        (``instance.content``) is, with ``on_change`` "reprocess", recorded anew: its earlier
        jobs are marked replaced and a job for the new content is queued; with "refuse" nothing
        is changed."""
        now = time.time()
        with self._db.transaction() as db:
            prior = db.execute(
                "SELECT content, study_instance_uid, path FROM instances "
                "WHERE sop_instance_uid = ?",
                (instance.sop_instance_uid,),
            ).fetchone()
            known = prior[0] if prior is not None else ""
            changed = bool(known and instance.content and known != instance.content)
            if changed and on_change == "refuse" and _legacy(known, instance.content):
                # Stored by a node that digested the bytes as received: the two digests cannot
                # be compared. Under "refuse" (the site keeps what it has) the instance is
                # taken as the one known and its digest brought up to date; refusing it would
                # refuse every later copy of it, for good.
                db.execute(
                    "UPDATE jobs SET content = ? WHERE sop_instance_uid = ? AND content = ?",
                    (instance.content, instance.sop_instance_uid, known),
                )
                known, changed = instance.content, False
            if changed and on_change == "refuse":
                return Received.REFUSED
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sop_instance_uid) DO UPDATE SET path = excluded.path, "
                "received_at = excluded.received_at, content = excluded.content, "
                "sop_class_uid = excluded.sop_class_uid, "
                "study_instance_uid = excluded.study_instance_uid, "
                "series_instance_uid = excluded.series_instance_uid, "
                "calling_ae = excluded.calling_ae",
                (
                    instance.sop_instance_uid,
                    instance.sop_class_uid,
                    instance.study_instance_uid,
                    instance.series_instance_uid,
                    instance.calling_ae,
                    str(instance.path),
                    now,
                    instance.content,
                ),
            )
            # Jobs of an older node, whose content was not recorded, are this content's.
            db.execute(
                "UPDATE jobs SET content = ? WHERE sop_instance_uid = ? AND content = ''",
                (known or instance.content, instance.sop_instance_uid),
            )
            db.execute(
                "INSERT INTO studies (study_instance_uid, last_received_at) VALUES (?, ?) "
                "ON CONFLICT (study_instance_uid) "
                "DO UPDATE SET last_received_at = excluded.last_received_at, complete = 0, "
                "summarised = 0, pruned = 0",
                (instance.study_instance_uid, now),
            )
            if changed and prior[1] != instance.study_instance_uid:
                # Sent again under another study (the scanner's worklist corrected): the study
                # it left is summarised again, without it; its first file, in the folder of
                # the study it left, goes when the study it joined is pruned (nothing else
                # names it any more: it stayed for good).
                db.execute(
                    "INSERT OR IGNORE INTO left_files VALUES (?, ?)",
                    (instance.study_instance_uid, prior[2]),
                )
                db.execute(
                    "UPDATE studies SET last_received_at = ?, complete = 0, summarised = 0, "
                    "pruned = 0 WHERE study_instance_uid = ?",
                    (now, prior[1]),
                )
            if changed:
                # A file received again (A -> B -> A: the first copy, the same bytes at the
                # same path) is an instance's own again, no study's left file to remove.
                db.execute("DELETE FROM left_files WHERE path = ?", (str(instance.path),))
                # Results of the earlier content not yet delivered are not sent any more (those
                # failed too: their job is replaced, no retry sends them, and counted as failed
                # they held an operator's alert for good).
                db.execute(
                    f"UPDATE deliveries SET state = ?, error = ? WHERE {_UNSENT} AND job_id IN "
                    "(SELECT id FROM jobs WHERE sop_instance_uid = ? AND content != ?)",
                    (
                        DeliveryState.FAILED,
                        f"{CALLED_OFF}its instance was received again with other content",
                        instance.sop_instance_uid,
                        instance.content,
                    ),
                )
                # So are the summaries of its study (and of the study it left) not yet sent,
                # those that failed too (lus-pacs retry would send them): they hold the earlier
                # content's findings, maybe under another patient. The studies are summarised
                # again.
                db.execute(
                    f"UPDATE summary_deliveries SET state = ?, error = ? WHERE {_UNSENT} AND "
                    "summary_id IN (SELECT id FROM summaries WHERE study_instance_uid IN (?, ?))",
                    (
                        DeliveryState.FAILED,
                        f"{CALLED_OFF}a cine of its study was received again with other content",
                        prior[1],
                        instance.study_instance_uid,
                    ),
                )
                db.execute(
                    "UPDATE jobs SET state = ?, updated_at = ? WHERE sop_instance_uid = ? "
                    "AND content != ? AND state != ?",
                    (
                        JobState.REPLACED,
                        now,
                        instance.sop_instance_uid,
                        instance.content,
                        JobState.REPLACED,
                    ),
                )
            first = not db.execute(
                "SELECT 1 FROM jobs WHERE sop_instance_uid = ? AND content != ?",
                (instance.sop_instance_uid, instance.content),
            ).fetchone()
            # A content received before and since replaced (A, B, then A again) is current again;
            # one whose processing failed (its file unreadable for a moment: a mount glitch, no
            # file handles left) is tried again when it is sent again, rather than answered as
            # known and left out of its study for good. Its deliveries, if it made results, are
            # lus-pacs retry's; so is a cine given up for hanging its worker or for killing the
            # node (each resend would hang one more worker, or kill the node three more times).
            cursor = db.execute(
                "INSERT INTO jobs (sop_instance_uid, models, state, updated_at, content, revision) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at, error = NULL, interrupted = 0 "
                "WHERE jobs.state = ? OR (jobs.state = ? AND COALESCE(jobs.interrupted, 0) < ? "
                "AND (jobs.error IS NULL OR substr(jobs.error, 1, ?) != ?) AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.job_id = jobs.id))",
                (
                    instance.sop_instance_uid,
                    models,
                    JobState.QUEUED,
                    now,
                    instance.content,
                    "" if first else instance.content,
                    JobState.REPLACED,
                    JobState.FAILED,
                    MAX_INTERRUPTIONS,
                    len(GIVEN_UP),
                    GIVEN_UP,
                ),
            )
            if cursor.rowcount != 1:
                return Received.KNOWN
            return Received.REPLACED if changed else Received.NEW

    def recover(self, max_interruptions: int = MAX_INTERRUPTIONS) -> Recovery:
        """After a restart: jobs a dead worker held go back to the queue, but one the node
        stopped on ``max_interruptions`` times fails (a cine whose processing kills the node,
        by memory or a crash in a library, would otherwise kill it at every start; ``lus-pacs
        retry`` tries it again)."""
        now = time.time()
        with self._db.transaction() as db:
            # Only the jobs a worker had started on: one claimed and waiting for the pixel
            # budget (beside a long cine that took the node down) did nothing to it.
            db.execute(
                "UPDATE jobs SET interrupted = interrupted + 1 WHERE state = ? AND started = 1",
                (JobState.PROCESSING,),
            )
            given_up = [
                r[0]
                for r in db.execute(
                    "SELECT sop_instance_uid FROM jobs WHERE state = ? AND interrupted >= ? "
                    "ORDER BY id",
                    (JobState.PROCESSING, max_interruptions),
                )
            ]
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE state = ? "
                "AND interrupted >= ?",
                (
                    JobState.FAILED,
                    f"the node stopped while processing it {max_interruptions} times (killed "
                    "for memory, or a crash): given up; lus-pacs retry tries it again",
                    now,
                    JobState.PROCESSING,
                    max_interruptions,
                ),
            )
            cursor = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, now, JobState.PROCESSING),
            )
            return Recovery(cursor.rowcount, tuple(given_up))

    def queue_missing(self, study_uid: str, models: str) -> int:
        """Queue a job for ``models`` for each of the study's instances that has none (it was
        made by other model versions: before an upgrade or a site's calibration) and whose
        file is still there (retention may have removed it); the number queued. A study
        summarised again (a late cine) would otherwise cover only its cines made by the
        current versions, and score the exam on part of its cines unsaid."""
        now = time.time()
        with self._db.transaction() as db:
            candidates = db.execute(
                "SELECT i.sop_instance_uid, i.path, i.content, "
                "(SELECT j.revision FROM jobs j WHERE j.sop_instance_uid = i.sop_instance_uid "
                f"AND j.content = i.content ORDER BY j.id DESC LIMIT 1) {MADE_BY_OTHERS_ONLY}",
                (study_uid, models, JobState.REPLACED),
            ).fetchall()
            queued = [
                (sop, models, JobState.QUEUED, now, content, revision)
                for sop, path, content, revision in candidates
                if Path(path).is_file()  # pruned: its earlier record stays the study's word
            ]
            db.executemany(
                "INSERT INTO jobs (sop_instance_uid, models, state, updated_at, content, "
                "revision) VALUES (?, ?, ?, ?, ?, ?)",
                queued,
            )
            return len(queued)

    def release_held(self) -> int:
        """Jobs in progress back to the queue, not counted as interrupted: the node is
        stopping on purpose and its workers did not finish in time (a long cine). Only a stop
        the node did not see (killed for memory, a crash) counts towards giving a cine up."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, time.time(), JobState.PROCESSING),
            )
            return cursor.rowcount

    def adopt(self, models: str) -> int:
        """After an upgrade (or a changed segmentation setup): queued jobs of other model
        versions are made by ``models``, the versions that will process them, so that their
        records count in their studies' summaries (which read only the current versions'). A
        queued content that has a job of ``models`` already is left to that job (revived when
        it was replaced), and of several queued for one content (``retry`` queues failed jobs
        of any versions) the first is kept. Returns how many were taken over."""
        now = time.time()
        other = "k.models != ? AND k.state = ? AND k.sop_instance_uid = jobs.sop_instance_uid "
        other += "AND k.content = jobs.content"
        with self._db.transaction() as db:
            db.execute(
                f"UPDATE jobs SET state = ?, updated_at = ? WHERE models = ? AND state = ? "
                f"AND EXISTS (SELECT 1 FROM jobs k WHERE {other})",
                (JobState.QUEUED, now, models, JobState.REPLACED, models, JobState.QUEUED),
            )
            db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ? AND models != ? "
                "AND (EXISTS (SELECT 1 FROM jobs k WHERE k.models = ? AND "
                "k.sop_instance_uid = jobs.sop_instance_uid AND k.content = jobs.content) "
                "OR id != (SELECT MIN(k.id) FROM jobs k WHERE k.state = ? AND "
                "k.sop_instance_uid = jobs.sop_instance_uid AND k.content = jobs.content))",
                (JobState.REPLACED, now, JobState.QUEUED, models, models, JobState.QUEUED),
            )
            cursor = db.execute(
                "UPDATE jobs SET models = ?, updated_at = ? WHERE state = ? AND models != ?",
                (models, now, JobState.QUEUED, models),
            )
            return cursor.rowcount

    def requeue(self, job: Job) -> bool:
        """A job a worker could not finish for a cause outside the cine (a full disk) goes back
        to the queue, unless another claim has it since. False when the store could not be
        written (locked, its disk full): the caller tries again later, and :meth:`recover` does
        it on the next start."""
        try:
            with self._db.transaction() as db:
                db.execute(
                    "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state = ? "
                    "AND claims = ?",
                    (JobState.QUEUED, time.time(), job.id, JobState.PROCESSING, job.claim),
                )
        except sqlite3.Error:
            return False
        return True

    def claim(self, models: str | None = None) -> Job | None:
        """The oldest queued job, now ``processing``; None when the queue is empty. With
        ``models`` (the versions that will process it), queued jobs of other versions are
        first :meth:`adopt`-ed: ``lus-pacs retry`` puts failed jobs back as they were, and a
        running node of newer versions would otherwise file its record under the old ones,
        where its study's summary does not look."""
        while True:
            with self._db.transaction() as db:
                row = db.execute(
                    "SELECT j.id, j.models, j.state, j.error, j.revision, j.claims, i.* "
                    "FROM jobs j "
                    "JOIN instances i USING (sop_instance_uid) WHERE j.state = ? "
                    "ORDER BY j.id LIMIT 1",
                    (JobState.QUEUED,),
                ).fetchone()
                if row is None:
                    return None
                if models is None or row["models"] == models:
                    db.execute(
                        "UPDATE jobs SET state = ?, updated_at = ?, claims = claims + 1, "
                        "started = 0 WHERE id = ?",
                        (JobState.PROCESSING, time.time(), row["id"]),
                    )
                    break
            self.adopt(models)
        return Job(
            row["id"],
            _instance(row),
            row["models"],
            JobState.PROCESSING,
            None,
            row["revision"],
            row["claims"] + 1,
        )

    def finish(
        self,
        job_id: int,
        record: str,
        outputs: Sequence[Output],
        destinations: Sequence[str],
        claim: int | None = None,
    ) -> bool:
        """The job's result files are on disk: record them and queue one delivery each. False
        when the job was given up while it ran (:meth:`give_up`), or taken by another worker
        since ``claim`` (:attr:`Job.claim`; received again A, B, A, or given up and retried):
        nothing is recorded, and the files are the caller's to remove."""
        now = time.time()
        with self._db.transaction() as db:
            state, claims = db.execute(
                "SELECT state, claims FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if state == JobState.FAILED or (claim is not None and claims != claim):
                return False
            db.executemany(
                "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?)",
                [(job_id, o.kind, o.sop_instance_uid, str(o.path)) for o in outputs],
            )
            if state == JobState.REPLACED:  # received again with other content meanwhile
                db.execute("UPDATE jobs SET record = ? WHERE id = ?", (record, job_id))
                return True
            # A job made again (its content received anew after other content, A, B, then A)
            # has new result objects: its earlier deliveries start over.
            db.executemany(
                "INSERT INTO deliveries (job_id, destination, state, next_attempt_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (job_id, destination) DO UPDATE SET "
                "state = excluded.state, attempts = 0, error = NULL, "
                "next_attempt_at = excluded.next_attempt_at",
                [(job_id, d, DeliveryState.PENDING, now) for d in destinations],
            )
            state = JobState.ENCODED if destinations else JobState.SENT
            db.execute(
                "UPDATE jobs SET state = ?, record = ?, error = NULL, updated_at = ? WHERE id = ?",
                (state, record, now, job_id),
            )
        return True

    def unrecorded(self, paths: Sequence[Path]) -> list[Path]:
        """Those of ``paths`` that no job's outputs name."""
        db = self._db.connection()
        return [
            p
            for p in paths
            if db.execute("SELECT 1 FROM outputs WHERE path = ?", (str(p),)).fetchone() is None
        ]

    def start(self, job: Job) -> None:
        """Its worker starts on it now (the pixel budget granted): from here a stop of the
        node counts against it (:meth:`recover`)."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE jobs SET started = 1 WHERE id = ? AND state = ? AND claims = ?",
                (job.id, JobState.PROCESSING, job.claim),
            )

    def fail(self, job: Job, reason: str) -> bool:
        """The job failed (a reason the record keeps), if this claim of it is still in
        progress: a job given up while it ran keeps the reason it was given up for, and one
        another worker took since is that worker's. False when it was not this claim's."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ? AND state = ? "
                "AND claims = ?",
                (
                    JobState.FAILED,
                    reason,
                    time.time(),
                    job.id,
                    JobState.PROCESSING,
                    job.claim,
                ),
            )
            return cursor.rowcount == 1

    def give_up(self, job: Job, reason: str) -> bool:
        """A job in progress fails now, while its worker still runs it (a cine that hangs
        its worker): whatever that worker makes of it later is not recorded (:meth:`finish`),
        and no restart queues it again. False when this claim of it was no longer in
        progress."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ? AND state = ? "
                "AND claims = ?",
                (
                    JobState.FAILED,
                    f"{GIVEN_UP}{reason}",
                    time.time(),
                    job.id,
                    JobState.PROCESSING,
                    job.claim,
                ),
            )
            return cursor.rowcount == 1

    def oldest_queued_s(self, now: float | None = None) -> float:
        """Seconds the oldest queued job has waited (0 when none): a queue that grows old
        while cines arrive has stalled."""
        (oldest,) = (
            self._db.connection()
            .execute("SELECT MIN(updated_at) FROM jobs WHERE state = ?", (JobState.QUEUED,))
            .fetchone()
        )
        return 0.0 if oldest is None else max(0.0, (time.time() if now is None else now) - oldest)

    def counts(self) -> dict[JobState, int]:
        rows = self._db.connection().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {JobState(r[0]): int(r[1]) for r in rows}

    def rows(self, state: JobState | None = None) -> list[JobRow]:
        """Every job (or those in ``state``) with its deliveries, in the order received."""
        db = self._db.connection()
        sql = "SELECT id, sop_instance_uid, state, error, record FROM jobs"
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (state,)
        out = []
        for r in db.execute(sql + " ORDER BY id", args).fetchall():
            deliveries = delivery_rows(db, r["id"], summary=False)
            out.append(
                JobRow(
                    r["id"],
                    r["sop_instance_uid"],
                    JobState(r["state"]),
                    r["error"],
                    deliveries,
                    r["record"],
                )
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
        content=row["content"],
    )
