"""Deliveries: each result file set on its way to each destination, with retries.

A cine's results are delivered per job (table ``deliveries``), a study summary per summary
(table ``summary_deliveries``); both retry the same way. A job is ``sent`` once every
destination has its results, and ``failed`` when one ran out of retries.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lus_pacs.domain import JobState, Output
from lus_pacs.queue.database import Database


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


CALLED_OFF = "not sent: "
"""How the reason of a delivery called off begins (its results superseded): failed for good,
never put back by :meth:`Deliveries.retry_failed`."""

CALLED_OFF_STATE = "called_off"
"""How :meth:`Deliveries.counts` (and the metrics) name a delivery called off."""


def called_off(alias: str = "") -> str:
    """SQL: whether the delivery row (of table ``alias``, where the query names one) was
    called off: failed with a reason that begins :data:`CALLED_OFF`. Never NULL, so that its
    NOT keeps the rows without a reason."""
    a = f"{alias}." if alias else ""
    return (
        f"({a}state = '{DeliveryState.FAILED.value}' AND "
        f"substr(coalesce({a}error, ''), 1, {len(CALLED_OFF)}) = '{CALLED_OFF}')"
    )


DeliveryRow = tuple[str, DeliveryState, int, str | None]
"""(destination, state, attempts, last error) of one delivery, for ``lus-pacs status``."""


@dataclass(frozen=True)
class Delivery:
    job_id: int
    """The job whose outputs these are or, with ``summary``, the study summary's id."""
    destination: str
    attempts: int
    outputs: tuple[Output, ...]
    summary: bool = False
    """A study summary (made when the study is complete) rather than a cine's results."""


class Deliveries:
    """Due deliveries, and the outcome of each attempt."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def due(self, now: float | None = None, destination: str | None = None) -> list[Delivery]:
        """Pending deliveries (to ``destination``, or to any) whose next attempt is due, oldest
        first: cines' results, then study summaries."""
        now = time.time() if now is None else now
        db = self._db.connection()
        due: list[Delivery] = []
        where = "state = ? AND next_attempt_at <= ?"
        args: tuple[object, ...] = (DeliveryState.PENDING, now)
        if destination is not None:
            where += " AND destination = ?"
            args = (*args, destination)
        for summary in (False, True):
            table, owner = _tables(summary)
            rows = db.execute(
                f"SELECT {owner}, destination, attempts FROM {table} "
                f"WHERE {where} ORDER BY next_attempt_at, {owner}",
                args,
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
        rows = self._db.connection().execute(
            "SELECT kind, sop_instance_uid, path FROM outputs WHERE job_id = ? ORDER BY kind",
            (job_id,),
        )
        return tuple(Output(r["kind"], r["sop_instance_uid"], Path(r["path"])) for r in rows)

    def _summary_output(self, summary_id: int) -> tuple[Output, ...]:
        r = (
            self._db.connection()
            .execute(
                "SELECT kind, sop_instance_uid, path FROM summaries WHERE id = ?", (summary_id,)
            )
            .fetchone()
        )
        return (Output(r["kind"], r["sop_instance_uid"], Path(r["path"])),)

    def still_due(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is still pending. One called off since it was listed (its
        instance came again with other content, maybe under another patient's study) is not
        to be sent: the exporter's list can be hours old behind a slow destination."""
        table, owner = _tables(delivery.summary)
        row = (
            self._db.connection()
            .execute(
                f"SELECT state FROM {table} WHERE {owner} = ? AND destination = ?",
                (delivery.job_id, delivery.destination),
            )
            .fetchone()
        )
        return row is not None and row["state"] == DeliveryState.PENDING

    def delivered(self, job_id: int, destination: str, *, summary: bool = False) -> None:
        """Mark a pending delivery sent; one called off meanwhile keeps its state and reason."""
        table, owner = _tables(summary)
        with self._db.transaction() as db:
            db.execute(
                f"UPDATE {table} SET state = ?, error = NULL "
                f"WHERE {owner} = ? AND destination = ? AND state = ?",
                (DeliveryState.SENT, job_id, destination, DeliveryState.PENDING),
            )
            if not summary:
                _settle(db, job_id)

    def failed(
        self,
        job_id: int,
        destination: str,
        reason: str,
        retry_at: float | None,
        *,
        summary: bool = False,
    ) -> None:
        """Count a failed attempt; ``retry_at`` None means the retry budget is spent. A delivery
        no longer pending (called off while it was tried: its instance came again with other
        content) keeps its state and the reason it was called off."""
        table, owner = _tables(summary)
        with self._db.transaction() as db:
            if retry_at is None:
                db.execute(
                    f"UPDATE {table} SET state = ?, attempts = attempts + 1, error = ? "
                    f"WHERE {owner} = ? AND destination = ? AND state = ?",
                    (DeliveryState.FAILED, reason, job_id, destination, DeliveryState.PENDING),
                )
            else:
                db.execute(
                    f"UPDATE {table} SET attempts = attempts + 1, error = ?, "
                    f"next_attempt_at = ? WHERE {owner} = ? AND destination = ? AND state = ?",
                    (reason, retry_at, job_id, destination, DeliveryState.PENDING),
                )
            if not summary:
                _settle(db, job_id)

    def fail_unknown(self, destinations: Sequence[str], reason: str) -> dict[str, int]:
        """Fail every pending delivery to a destination not in ``destinations`` (renamed or
        removed from the settings: no exporter would ever send it, and its job would stay
        undelivered, unnoticed, for good), with ``reason`` naming the destination
        (``{destination}`` in it). Returns how many per destination."""
        known = list(destinations)
        marks = ", ".join("?" * len(known))
        failed: dict[str, int] = {}
        with self._db.transaction() as db:
            for summary in (False, True):
                table, owner = _tables(summary)
                rows = db.execute(
                    f"SELECT {owner}, destination FROM {table} WHERE state = ? "
                    f"AND destination NOT IN ({marks})",
                    (DeliveryState.PENDING, *known),
                ).fetchall()
                for owner_id, destination in rows:
                    db.execute(
                        f"UPDATE {table} SET state = ?, error = ? WHERE {owner} = ? "
                        "AND destination = ?",
                        (
                            DeliveryState.FAILED,
                            reason.format(destination=destination),
                            owner_id,
                            destination,
                        ),
                    )
                    if not summary:
                        _settle(db, owner_id)
                    failed[destination] = failed.get(destination, 0) + 1
        return failed

    def counts(self) -> dict[tuple[str, str], int]:
        """Deliveries (cines' results and study summaries together) by destination and state:
        what an operator alerts on (results failing or piling up for one destination). Those
        called off (their results superseded, never sent and never retried) are
        :data:`CALLED_OFF_STATE`, not failed: an alert on failed ones could never clear."""
        rows = self._db.connection().execute(
            f"SELECT destination, CASE WHEN {called_off()} THEN ? ELSE state END AS shown, "
            "COUNT(*) FROM (SELECT destination, state, error FROM deliveries UNION ALL SELECT "
            "destination, state, error FROM summary_deliveries) GROUP BY destination, shown",
            (CALLED_OFF_STATE,),
        )
        return {(r[0], str(r[1])): int(r[2]) for r in rows}

    def retry_failed(self, destinations: Sequence[str] | None = None) -> int:
        """Failed deliveries get a fresh retry budget and failed jobs are processed again (their
        studies' summaries are made again once they are, now counting them). With
        ``destinations`` (the settings' names), deliveries to other destinations stay failed:
        no exporter would send them, and they would wait as pending for good (a job failed
        only so stays failed). Returns the number of jobs and study summaries put back."""
        now = time.time()
        known = list(destinations) if destinations is not None else None
        only_known = "" if known is None else f" AND destination IN ({', '.join('?' * len(known))})"
        with self._db.transaction() as db:
            failed = [
                r[0] for r in db.execute("SELECT id FROM jobs WHERE state = ?", (JobState.FAILED,))
            ]
            put_back = 0
            for job_id in failed:
                undelivered = db.execute(
                    "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ? "
                    f"WHERE job_id = ? AND state = ?{only_known}",
                    (DeliveryState.PENDING, now, job_id, DeliveryState.FAILED, *(known or ())),
                ).rowcount
                stranded = db.execute(
                    "SELECT count(*) FROM deliveries WHERE job_id = ? AND state = ?",
                    (job_id, DeliveryState.FAILED),
                ).fetchone()[0]
                if stranded and not undelivered:
                    continue  # made, and failed to a destination gone from the settings
                put_back += 1
                state = JobState.ENCODED if undelivered or stranded else JobState.QUEUED
                db.execute(
                    "UPDATE jobs SET state = ?, error = NULL, updated_at = ?, interrupted = 0 "
                    "WHERE id = ?",
                    (state, now, job_id),
                )
                if state == JobState.QUEUED:  # its study is summarised again once it is made
                    # As if received again: a summary under way meanwhile does not mark the
                    # study summarised without it (StudyStore.summarised compares this time).
                    db.execute(
                        "UPDATE studies SET summarised = 0, last_received_at = ? "
                        "WHERE study_instance_uid = (SELECT study_instance_uid FROM instances i "
                        "JOIN jobs j USING (sop_instance_uid) WHERE j.id = ?)",
                        (now, job_id),
                    )
            # A delivery that failed while another of its job is still pending (the archive
            # retrying, the PACS given up): the job is not failed, and its failed delivery
            # would stay failed for good.
            retried = (
                f"state = ? AND NOT {called_off()}{only_known} AND job_id IN "
                "(SELECT id FROM jobs WHERE state = ?)"
            )
            retried_args = (DeliveryState.FAILED, *(known or ()), JobState.ENCODED)
            put_back += db.execute(
                f"SELECT COUNT(DISTINCT job_id) FROM deliveries WHERE {retried}", retried_args
            ).fetchone()[0]
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ? "
                f"WHERE {retried}",
                (DeliveryState.PENDING, now, *retried_args),
            )
            summaries = db.execute(
                "UPDATE summary_deliveries SET state = ?, attempts = 0, next_attempt_at = ? "
                f"WHERE state = ? AND NOT {called_off()}{only_known}",
                (DeliveryState.PENDING, now, DeliveryState.FAILED, *(known or ())),
            ).rowcount
            return put_back + summaries


def delivery_rows(
    db: sqlite3.Connection, owner_id: int, *, summary: bool
) -> tuple[DeliveryRow, ...]:
    """Each delivery of a job or, with ``summary``, of a study summary."""
    table, owner = _tables(summary)
    rows = db.execute(
        f"SELECT destination, state, attempts, error FROM {table} "
        f"WHERE {owner} = ? ORDER BY destination",
        (owner_id,),
    )
    return tuple(
        (d["destination"], DeliveryState(d["state"]), int(d["attempts"]), d["error"]) for d in rows
    )


def _settle(db: sqlite3.Connection, job_id: int) -> None:
    """The job's state once its deliveries have all ended: sent, or failed. Only a job whose
    results are on their way (encoded) moves: a replaced one stays replaced (a delivery may end
    after its instance came again with other content: its record must not come back into its
    study's summary beside the new content's), and one queued or in progress again (received
    A, B, then A while A's first results were being sent) is made again, not failed by the
    end of its earlier send."""
    states = {r[0] for r in db.execute("SELECT state FROM deliveries WHERE job_id = ?", (job_id,))}
    if states == {DeliveryState.SENT}:
        state, error = JobState.SENT, None
    elif DeliveryState.FAILED in states and DeliveryState.PENDING not in states:
        state, error = JobState.FAILED, "delivery failed: see lus-pacs status"
    else:
        return
    db.execute(
        "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ? AND state = ?",
        (state, error, time.time(), job_id, JobState.ENCODED),
    )


def _tables(summary: bool) -> tuple[str, str]:
    """The delivery table and its owner column, for a cine's results or a study summary."""
    return ("summary_deliveries", "summary_id") if summary else ("deliveries", "job_id")
