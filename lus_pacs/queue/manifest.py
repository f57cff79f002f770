"""The manifest of a re-processing run: what was fetched, made and sent, per model versions.

SQLite (WAL) in the run's output folder, one committed row update per finished cine, so that
Ctrl-C or a crash loses at most the cines in flight, and running the same command again skips
what is done with the same model versions and re-does what changed (a new model version is a
new key, so its cines are not done).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from lus_pacs.records import CineRecord, StudySummary

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT NOT NULL,
    models TEXT NOT NULL,
    source TEXT NOT NULL,
    instances TEXT NOT NULL,
    summary TEXT,
    summary_sent INTEGER NOT NULL DEFAULT 0,
    summary_uids TEXT DEFAULT '[]',
    PRIMARY KEY (study_instance_uid, models)
);
CREATE TABLE IF NOT EXISTS items (
    sop_instance_uid TEXT NOT NULL,
    models TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT,
    files TEXT,
    error TEXT,
    sent INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sop_instance_uid, models)
);
CREATE INDEX IF NOT EXISTS items_by_study ON items(study_instance_uid, models, state);
CREATE TABLE IF NOT EXISTS problems (
    subject TEXT NOT NULL,
    models TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    error TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (subject, models)
);
"""


class ItemState(StrEnum):
    DONE = "done"
    FAILED = "failed"


class Manifest:
    """One run's durable state; used from the driver thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(studies)")}
        if "summary_uids" not in columns:  # a manifest of an earlier release: not recorded
            self._db.execute("ALTER TABLE studies ADD COLUMN summary_uids TEXT")
            self._db.execute("UPDATE studies SET summary_uids = '[]' WHERE summary IS NULL")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Studies

    def record_study(
        self,
        study_uid: str,
        models: str,
        source: str,
        instances: Sequence[str],
        *,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        """The study's image instances as fetched (the set to finish before it is done) and,
        in the same transaction, its problems of now (subject, reason) in place of those it
        had (:meth:`problem`): fetched, its earlier problems are over."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM problems WHERE study_instance_uid = ? AND models = ?",
                (study_uid, models),
            )
            now = time.time()
            db.executemany(
                "INSERT INTO problems VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "error = excluded.error, updated_at = excluded.updated_at, "
                "study_instance_uid = excluded.study_instance_uid",
                [(subject, models, study_uid, error, now) for subject, error in problems],
            )
            db.execute(
                "INSERT INTO studies (study_instance_uid, models, source, instances) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET instances = excluded.instances, "
                "source = excluded.source",
                (study_uid, models, source, json.dumps(sorted(instances))),
            )

    def study_instances(self, study_uid: str, models: str) -> list[str] | None:
        """The study's instances as last fetched; None when it was never fetched."""
        row = self._db.execute(
            "SELECT instances FROM studies WHERE study_instance_uid = ? AND models = ?",
            (study_uid, models),
        ).fetchone()
        return None if row is None else list(json.loads(row[0]))

    def study_finished(
        self,
        study_uid: str,
        models: str,
        *,
        sending: bool,
        retried: Sequence[str] | None = (),
    ) -> bool:
        """Fetched, every instance done (and sent) or failed for good (:meth:`failed_for_good`
        with ``retried``; None: a failed cine is never through), its summary made (and sent),
        and no problem of it open (:meth:`problem`)."""
        row = self._db.execute(
            "SELECT instances, summary, summary_sent FROM studies "
            "WHERE study_instance_uid = ? AND models = ?",
            (study_uid, models),
        ).fetchone()
        if row is None:
            return False
        problem = self._db.execute(
            "SELECT 1 FROM problems WHERE study_instance_uid = ? AND models = ?",
            (study_uid, models),
        ).fetchone()
        if problem is not None:  # a file not read yet: fetched again
            return False
        instances = json.loads(row["instances"])
        done = self.done(models, study_uid, sent=sending)
        if row["summary"] is None:
            # No summary: not made yet, or nothing to summarise (every cine failed for good).
            if done or not instances:
                return False
        elif sending and not row["summary_sent"]:
            return False
        through = done
        if retried is not None:
            through |= self.failed_for_good(models, study_uid, retried)
        return all(uid in through for uid in instances)

    def failed_for_good(self, models: str, study_uid: str, retried: Sequence[str]) -> set[str]:
        """SOP Instance UIDs of the study's cines that failed for a reason a new run would
        meet again (unreadable, over a limit, refused by the models): a run does not process
        them again (else their study would be fetched again, and its summary sent again, at
        every run). Failures whose reason is one of ``retried`` (a worker that died beside
        them) are not among them: those are tried again."""
        marks = ", ".join("?" * len(retried))
        sql = (
            "SELECT sop_instance_uid FROM items WHERE models = ? AND study_instance_uid = ? "
            "AND state = ?"
        )
        if retried:
            sql += f" AND coalesce(error, '') NOT IN ({marks})"
        rows = self._db.execute(sql, (models, study_uid, ItemState.FAILED, *retried))
        return {r[0] for r in rows}

    def record_summary(
        self,
        study_uid: str,
        models: str,
        summary: StudySummary,
        sr_uid: str | None = None,
        before: Sequence[str] | None = None,
    ) -> None:
        """The study's summary and the SOP Instance UID of its SR, if one was made, after the
        study's earlier SRs (``before``; by default those recorded); one the same as the last
        keeps its sent mark (its SR, the same object, is not sent again)."""
        with self._tx() as db:
            made = list(
                before if before is not None else self.summary_uids(study_uid, models) or []
            )
            if sr_uid is not None and made[-1:] != [sr_uid]:
                made.append(sr_uid)
            db.execute(
                "UPDATE studies SET summary_sent = (summary IS ? AND summary_sent), summary = ?, "
                "summary_uids = ? WHERE study_instance_uid = ? AND models = ?",
                (summary.dumps(), summary.dumps(), json.dumps(made), study_uid, models),
            )

    def summary_uids(self, study_uid: str, models: str) -> list[str] | None:
        """The SOP Instance UIDs of the study's summary SRs made so far, oldest first; None
        when a run of an earlier release summarised it (which recorded none)."""
        row = self._db.execute(
            "SELECT summary_uids FROM studies WHERE study_instance_uid = ? AND models = ?",
            (study_uid, models),
        ).fetchone()
        if row is None:
            return []
        return None if row[0] is None else list(json.loads(row[0]))

    def summary_is_sent(self, study_uid: str, models: str) -> bool:
        row = self._db.execute(
            "SELECT summary_sent FROM studies WHERE study_instance_uid = ? AND models = ?",
            (study_uid, models),
        ).fetchone()
        return bool(row and row[0])

    def summary_sent(self, study_uid: str, models: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET summary_sent = 1 WHERE study_instance_uid = ? AND models = ?",
                (study_uid, models),
            )

    def summaries(self, models: str) -> list[StudySummary]:
        rows = self._db.execute(
            "SELECT summary FROM studies WHERE models = ? AND summary IS NOT NULL "
            "ORDER BY study_instance_uid",
            (models,),
        )
        return [StudySummary.loads(r[0]) for r in rows]

    # Cines

    def finish(
        self, sop_uid: str, models: str, study_uid: str, record: CineRecord, files: list[str]
    ) -> None:
        """One cine done: its record and result file names, committed."""
        self._set(sop_uid, models, study_uid, ItemState.DONE, record, files, None)

    def fail(self, sop_uid: str, models: str, study_uid: str, error: str) -> None:
        self._set(sop_uid, models, study_uid, ItemState.FAILED, None, None, error)

    def _set(
        self,
        sop_uid: str,
        models: str,
        study_uid: str,
        state: ItemState,
        record: CineRecord | None,
        files: list[str] | None,
        error: str | None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT DO UPDATE SET "
                "state = excluded.state, record = excluded.record, files = excluded.files, "
                "error = excluded.error, sent = 0, updated_at = excluded.updated_at",
                (
                    sop_uid,
                    models,
                    study_uid,
                    state,
                    None if record is None else record.dumps(),
                    None if files is None else json.dumps(files),
                    error,
                    time.time(),
                ),
            )

    def study_of(self, sop_uid: str, models: str) -> str | None:
        """The study a cine was processed in (done or failed), None when it never was."""
        row = self._db.execute(
            "SELECT study_instance_uid FROM items WHERE sop_instance_uid = ? AND models = ?",
            (sop_uid, models),
        ).fetchone()
        return None if row is None else str(row[0])

    def mark_sent(self, sop_uid: str, models: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE items SET sent = 1 WHERE sop_instance_uid = ? AND models = ?",
                (sop_uid, models),
            )

    def done(self, models: str, study_uid: str, *, sent: bool = False) -> set[str]:
        """SOP Instance UIDs of the study done with these model versions (and sent, with
        ``sent``); one study at a time, so a long archive is not re-read per study."""
        sql = (
            "SELECT sop_instance_uid FROM items WHERE models = ? AND study_instance_uid = ? "
            "AND state = ?"
        )
        if sent:
            sql += " AND sent = 1"
        return {r[0] for r in self._db.execute(sql, (models, study_uid, ItemState.DONE))}

    def unsent(self, models: str) -> list[tuple[str, str, list[str]]]:
        """(SOP Instance UID, Study Instance UID, result file names) of done cines not yet
        sent."""
        rows = self._db.execute(
            "SELECT sop_instance_uid, study_instance_uid, files FROM items WHERE models = ? "
            "AND state = ? AND sent = 0 ORDER BY study_instance_uid, sop_instance_uid",
            (models, ItemState.DONE),
        )
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def records(
        self, models: str, part_types: Mapping[str, type], study_uid: str | None = None
    ) -> list[CineRecord]:
        """Records of the done cines, by study then SOP Instance UID: the same order whatever
        order the workers finished in; ``part_types`` reads the families' parts
        (:meth:`lus_pacs.families.registry.Registry.record_types`)."""
        sql = "SELECT record FROM items WHERE models = ? AND state = ?"
        args: tuple[str, ...] = (models, ItemState.DONE)
        if study_uid is not None:
            sql += " AND study_instance_uid = ?"
            args = (*args, study_uid)
        rows = self._db.execute(sql + " ORDER BY study_instance_uid, sop_instance_uid", args)
        return [CineRecord.loads(r[0], part_types) for r in rows]

    # What is not a cine

    def problem(self, subject: str, models: str, study_uid: str, error: str) -> None:
        """Something of study ``study_uid`` that did not become cines to process (the study,
        which could not be fetched; a file that could not be read): named, with the reason,
        until a later run gets past it (:meth:`solved`). Until then the study is not finished:
        the next run fetches it again."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO problems VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "error = excluded.error, updated_at = excluded.updated_at, "
                "study_instance_uid = excluded.study_instance_uid",
                (subject, models, study_uid, error, time.time()),
            )

    def solved(self, study_uid: str, models: str) -> None:
        """The study's problems are over: it was fetched (what it still has is noted again as
        its files are read)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM problems WHERE study_instance_uid = ? AND models = ?",
                (study_uid, models),
            )

    def failed_cines(self, models: str, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> reason, for the study's cines that failed (this run or an
        earlier one)."""
        rows = self._db.execute(
            "SELECT sop_instance_uid, error FROM items WHERE models = ? AND state = ? "
            "AND study_instance_uid = ? ORDER BY sop_instance_uid",
            (models, ItemState.FAILED, study_uid),
        )
        return {r[0]: r[1] or "failed" for r in rows}

    def failures(self, models: str) -> list[tuple[str, str]]:
        """(what, why) of every failed cine (by its SOP Instance UID), then of every problem
        (by its subject)."""
        rows = self._db.execute(
            "SELECT sop_instance_uid, error FROM items WHERE models = ? AND state = ? "
            "ORDER BY sop_instance_uid",
            (models, ItemState.FAILED),
        )
        problems = self._db.execute(
            "SELECT subject, error FROM problems WHERE models = ? ORDER BY subject", (models,)
        )
        return [(r[0], r[1]) for r in rows] + [(r[0], r[1]) for r in problems]
