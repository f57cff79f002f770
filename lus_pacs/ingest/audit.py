"""The node's audit trail: one JSON object per line, appended, for every association (accepted
or rejected, and why), every instance received or refused, and every result delivered or not.

A line holds ``time`` (UTC, ISO 8601 with microseconds), ``event`` (:class:`AuditEvent`),
``outcome`` and the facts of the event (calling AE title, address, SOP Instance UID, patient ID,
study, destination, status, reason). The file is rotated at ``max_bytes`` with ``backups`` older
files kept (``audit.jsonl.1`` is the newest of them); lines are never rewritten. Writing is
thread-safe; a failure to write is logged and never stops the node.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from logging.handlers import RotatingFileHandler
from pathlib import Path

log = logging.getLogger(__name__)


class AuditEvent(StrEnum):
    """What an audit line is about."""

    ASSOCIATION = "association"
    """An association request: accepted or rejected (with the reason)."""
    CONNECTION = "connection"
    """A connection closed before any association (a peer over its association limit)."""
    INSTANCE = "instance"
    """A C-STORE: received, received again, ignored or refused (with the status)."""
    RESULT = "result"
    """A delivery of a cine's results or a study summary: sent, failed (to be retried) or
    given up."""


class AuditLog:
    """Appends audit lines to ``path`` (its folder made), rotating it by size.

    Parameters
    ----------
    path:
        The JSON-lines file.
    max_bytes:
        Size at which the file is rotated.
    backups:
        Rotated files kept.
    observe:
        Called with each line's event and outcome once it is written (the node counts them
        for its metrics).
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 50 * 1024**2,
        backups: int = 10,
        observe: Callable[[AuditEvent, str], None] | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._observe = observe
        self._handler = _AuditFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()

    def write(self, event: AuditEvent, outcome: str, **facts: object) -> None:
        """One line: the time, ``event``, ``outcome`` and ``facts`` (None values left out)."""
        line = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "event": event.value,
            "outcome": outcome,
            **{k: v for k, v in facts.items() if v is not None},
        }
        record = logging.LogRecord(
            "lus_pacs.audit", logging.INFO, __file__, 0, json.dumps(line, default=str), None, None
        )
        try:
            with self._lock:
                self._handler.emit(record)
                self._handler.flush()
        except Exception:  # the audit trail must never stop the node
            log.exception("Could not write the audit line %s", line)
            return
        if self._observe is not None:
            try:
                self._observe(event, outcome)
            except Exception:  # nor must counting it
                log.exception("Could not count the audit line %s", line)

    def close(self) -> None:
        with self._lock:
            self._handler.close()


class _AuditFile(RotatingFileHandler):
    """The rotating file, with two differences from logging's: a rotation that fails (a
    backup's name taken, permissions changed) leaves the lines in the current file, over its
    size, rather than losing them (tried again a minute later); and a write that fails raises
    to :meth:`AuditLog.write` (logging's handler prints it and goes on, so the line was lost
    and counted as written)."""

    _RETRY_S = 60.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rotation_failed_at: float | None = None

    def shouldRollover(self, record: logging.LogRecord) -> int:  # noqa: N802 (logging's name)
        failed = self._rotation_failed_at
        if failed is not None and time.monotonic() - failed < self._RETRY_S:
            return 0
        return super().shouldRollover(record)

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        try:
            super().doRollover()
            self._rotation_failed_at = None
        except OSError as exc:
            if self._rotation_failed_at is None:
                log.error(
                    "Could not rotate the audit trail %s (%s); it grows", self.baseFilename, exc
                )
            self._rotation_failed_at = time.monotonic()
            if self.stream is None:  # closed by the rotation: the lines go on in it
                self.stream = self._open()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        raise  # noqa: PLE0704 (called in the handler's except clause: its error goes up)
