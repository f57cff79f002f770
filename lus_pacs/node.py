"""The running node: the DICOM listener, one processing worker, one exporter, the study watcher.

The listener only stores and queues. The worker loads the models once and processes jobs in
order; the exporter delivers result files with retries and exponential backoff. All state is in
the job store, so killing the process at any point loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from functools import partial
from pathlib import Path

import pydicom

from lus_pacs.domain import OutputKind
from lus_pacs.durable import durable_file
from lus_pacs.errors import ExportError, LusPacsError, StageError
from lus_pacs.export.dimse import store as c_store
from lus_pacs.ingest.scp import Listener, start_listener
from lus_pacs.pipeline import Models, encode_summary, process_file, write_outputs
from lus_pacs.queue.store import JobStore
from lus_pacs.records import CineRecord, StudySummary, to_json
from lus_pacs.settings import Settings

log = logging.getLogger(__name__)

_IDLE_S = 0.5
_RESUME_S = 10.0
"""Seconds the worker waits after a failure of the disk or the job store."""


class Node:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` is the bound DICOM port."""

    def __init__(self, settings: Settings, models: Models | None = None) -> None:
        self.settings = settings
        self.store = JobStore(settings.store_path)
        self.models = models if models is not None else Models.load(settings)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._released: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener: Listener | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the node is not started")
        return self._listener.port

    def start(self) -> None:
        recovered = self.store.jobs.recover()
        if recovered:
            log.info("Resuming %d job(s) interrupted by the last stop", recovered)
        self._listener = start_listener(
            self.settings,
            record=partial(self.store.jobs.record_instance, models=self.models.key),
            on_stored=self._wake.set,
            on_study_complete=self._study_released,
        )
        for target in (self._process_loop, self._export_loop, self._study_loop):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "%s listening on %s:%d, models %s, destinations %s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            self.models.key,
            [d.name for d in self.settings.destinations] or "none (results folder only)",
        )

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        for thread in self._threads:
            thread.join(timeout=30)

    def _study_released(self, studies: list[str]) -> None:
        self.store.studies.complete(studies)
        with self._lock:
            self._released.extend(studies)

    # Processing

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._process_next()
            # The disk or the job store failed (a full disk): the worker must outlive it. The job
            # it held goes back to the queue, and it carries on when the cause is gone.
            except Exception:
                log.exception("The worker could not finish a job; again in %.0f s", _RESUME_S)
                self._stop.wait(_RESUME_S)
                try:
                    self.store.jobs.recover()
                except Exception:
                    log.exception("The job store is still unavailable")

    def _process_next(self) -> None:
        job = self.store.jobs.claim()
        if job is None:
            self._wake.wait(_IDLE_S)
            self._wake.clear()
            return
        uid = job.instance.sop_instance_uid
        out_dir = self.settings.results_dir / job.instance.study_instance_uid
        try:
            record, outputs = process_file(job.instance.path, self.models, self.settings, out_dir)
        except StageError as exc:
            if exc.stage == "write":
                raise  # the disk, not the cine: the job is tried again
            log.error("Failed %s: %s", uid, exc)
            self.store.jobs.fail(job.id, str(exc))
            return
        except LusPacsError as exc:
            log.error("Failed %s: %s", uid, exc)
            self.store.jobs.fail(job.id, str(exc))
            return
        except Exception as exc:  # one bad cine must not stop the worker
            log.exception("Failed %s: unexpected error", uid)
            self.store.jobs.fail(job.id, f"unexpected error: {exc!r}")
            return
        self.store.jobs.finish(
            job.id, record.dumps(), outputs, [d.name for d in self.settings.destinations]
        )
        b_lines = to_json(record.b_lines) if record.b_lines else {}
        log.info("Processed %s (zone %s): %s", uid, record.source.zone, b_lines)

    # Delivering

    def _export_loop(self) -> None:
        while not self._stop.is_set():
            due = self.store.deliveries.due()
            if not due:
                self._stop.wait(_IDLE_S)
                continue
            for delivery in due:
                destination = self.settings.destination(delivery.destination)
                try:
                    c_store(
                        [o.path for o in delivery.outputs],
                        destination,
                        calling_ae=self.settings.ae_title,
                    )
                except ExportError as exc:
                    retry_at = self._retry_at(delivery.attempts)
                    self.store.deliveries.failed(
                        delivery.job_id,
                        delivery.destination,
                        str(exc),
                        retry_at,
                        summary=delivery.summary,
                    )
                    log.warning(
                        "Delivery of %s %d to %s failed (attempt %d): %s%s",
                        "study summary" if delivery.summary else "job",
                        delivery.job_id,
                        destination.name,
                        delivery.attempts + 1,
                        exc,
                        "" if retry_at else "; retry budget spent, marked failed",
                    )
                    continue
                self.store.deliveries.delivered(
                    delivery.job_id, delivery.destination, summary=delivery.summary
                )
                log.info(
                    "Delivered %s %d to %s",
                    "study summary" if delivery.summary else "job",
                    delivery.job_id,
                    destination.name,
                )

    def _retry_at(self, attempts: int) -> float | None:
        """When to try again after ``attempts + 1`` failures; None when the budget is spent."""
        if attempts >= self.settings.retry_budget:
            return None
        delay = min(self.settings.retry_max_s, self.settings.retry_base_s * 2**attempts)
        return time.time() + delay

    # Studies

    def _study_loop(self) -> None:
        pending: set[str] = set()
        while not self._stop.wait(_IDLE_S):
            with self._lock:
                pending.update(self._released)
                self._released.clear()
            pending.update(self.store.studies.complete_quiet(self.settings.study_quiet_s))
            for study in sorted(pending):
                if self.store.studies.done(study):
                    self._summarise(study)
                    pending.discard(study)

    def _summarise(self, study: str) -> None:
        """The study's summary SR, when configured, queued for every destination (once per
        distinct summary); then the summary as JSON in the study's results folder, the sign
        that the study is done."""
        types = self.models.registry.record_types()
        records = [
            CineRecord.loads(r, types) for r in self.store.studies.records(study, self.models.key)
        ]
        if not records:
            log.warning("Study %s complete, but none of its cines was processed", study)
            return
        summary = StudySummary.of(study, records)
        path = summary_path(self.settings, study)
        if OutputKind.STUDY_SR in self.settings.output_kinds:
            self._send_summary(study, summary, path.parent)
        with durable_file(path) as f:
            f.write(json.dumps(to_json(summary), indent=1).encode())
        log.info("Study %s complete: %s", study, summary.dumps())

    def _send_summary(self, study: str, summary: StudySummary, folder: Path) -> None:
        try:
            sources = [
                pydicom.dcmread(p, stop_before_pixels=True)
                for p in self.store.studies.processed_paths(study, self.models.key)
            ]
            (output,) = write_outputs([encode_summary(summary, sources, self.models.key)], folder)
        except (OSError, ValueError, LusPacsError) as exc:
            log.error("Study %s: the summary SR could not be made: %s", study, exc)
            return
        destinations = [d.name for d in self.settings.destinations]
        if self.store.studies.record_summary(study, summary.dumps(), output, destinations):
            log.info("Study %s: summary SR %s queued", study, output.sop_instance_uid)


def summary_path(settings: Settings, study: str) -> Path:
    return settings.results_dir / study / "study-summary.json"
