"""The running node: the DICOM listener, the processing workers, one exporter per destination,
the study watcher.

The listener only stores and queues. The models are loaded once and the workers (``workers`` in
the settings) process jobs in order; each destination's exporter delivers its result files with
retries and exponential backoff, so a hung PACS delays only its own results. All state is in the
job store (studies awaiting their summary included), so killing the process at any point loses
nothing that was acknowledged and a restart sends what was pending exactly once. Every loop
outlives errors of the disk or the job store and resumes when the cause is gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import IO

import pydicom

from lus_pacs.credentials import authorisation
from lus_pacs.domain import Instance, Job, JobState, OutputKind, Received
from lus_pacs.durable import durable_file, remove_partial
from lus_pacs.encode.files import result_identity
from lus_pacs.errors import ConfigError, ExportError, LusPacsError, StageError, describe
from lus_pacs.export.dimse import store as c_store
from lus_pacs.export.stow import stow
from lus_pacs.imaging.metadata import budget_pixels
from lus_pacs.inference.threads import release_free_memory
from lus_pacs.ingest.audit import AuditEvent, AuditLog
from lus_pacs.ingest.metrics import NodeMetrics
from lus_pacs.ingest.scp import Listener, check_exposure, free_bytes, start_listener
from lus_pacs.pipeline import (
    Encoder,
    Models,
    encode_summary,
    process_file,
    warm_up,
    write_outputs,
)
from lus_pacs.queue.budget import Hold, PixelBudget
from lus_pacs.queue.deliveries import CALLED_OFF_STATE, Delivery, DeliveryState
from lus_pacs.queue.jobs import MAX_INTERRUPTIONS
from lus_pacs.queue.store import JobStore
from lus_pacs.records import CineRecord, StudySummary, to_json
from lus_pacs.retention import DAY_S, SUMMARY_NAME, prune, restore_aside
from lus_pacs.settings import DicomDestination, Settings, WebDestination
from lus_pacs.tls import certificate_expiry

log = logging.getLogger(__name__)

_IDLE_S = 0.5
_RESUME_S = 10.0
"""Seconds a loop of the node waits after a failure of the disk or the job store."""
_PRUNE_EVERY_S = 3600.0
"""How often the node applies ``retention_days``."""
STOP_GRACE_S = 5.0
"""Seconds a stop waits for cines about to finish before those in progress go back to the
queue; then up to ``STOP_WAIT_S`` more for the threads to end."""
STOP_WAIT_S = 25.0
FAILING_S = 2 * _RESUME_S + 5
"""A loop that raised this recently is failing: one that keeps failing raises again about
``_RESUME_S`` after each restart, so it stays failing; one that recovered is healthy again
within this."""


class Node:
    """Start with :meth:`start`, stop with :meth:`stop`; ``port`` is the bound DICOM port."""

    def __init__(self, settings: Settings, models: Models | None = None) -> None:
        check_exposure(settings)  # before the models load: the fix is in the settings
        self._store_lock = hold_store(settings.store_path)  # before the store is opened
        self.settings = settings
        self.store = JobStore(settings.store_path)
        self.models = models if models is not None else Models.load(settings)
        tls = settings.tls
        self._certificate_expiry = (
            certificate_expiry(tls.certificate) if tls and tls.certificate else None
        )
        """When the listener's TLS certificate expires (epoch seconds), None without one."""
        self.metrics = NodeMetrics(
            self.store.jobs.counts,
            self.health,
            deliveries=self.store.deliveries.counts,
            oldest_queued_s=self.store.jobs.oldest_queued_s,
            disk_free=partial(free_bytes, settings),
            delivery_series=[
                (name, state)
                for name in settings.destination_names
                for state in (*(s.value for s in DeliveryState), CALLED_OFF_STATE)
            ],
            certificate_expiry=self._certificate_expiry,
        )
        self.audit = AuditLog(
            settings.audit_path,
            settings.audit_max_bytes,
            settings.audit_backups,
            observe=self.metrics.count_audited,
        )
        self.metrics_port: int | None = None
        """The bound port of ``/metrics`` once started, None when the settings serve none."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed_at: dict[str, float] = {}
        """When each loop last raised (thread name -> monotonic seconds)."""
        self._held: dict[str, dict[int, Job]] = {}
        """Per worker (thread name): the jobs it gave up and could not put back in the queue
        (yet). Its own: another worker putting one back could race a third that claimed it."""
        self._ready = {name: threading.Event() for name in settings.destination_names}
        """Per destination: results were queued for it (its exporter need not wait to poll)."""
        self._threads: list[threading.Thread] = []
        self._listener: Listener | None = None
        self._budget = PixelBudget(settings.concurrent_pixels)
        """What the workers' cines hold decoded at once (two long cines do not add up)."""
        self._encoder: Encoder | None = None
        """The processes that make the result objects (``encoders``), once started."""
        self._running: dict[str, tuple[Job, float, Hold]] = {}
        """Per worker: the job it is processing, since when (monotonic seconds), and the pixels
        it holds against the budget (one entry: the watchdog releases the hold of the job it
        gave up, never that of the next job its worker took)."""
        self._unavailable: dict[str, float] = {}
        """Destinations held unavailable (their deliveries waiting), since when (epoch s)."""
        self._overdue: set[str] = set()
        """Workers still on a cine given up for running past ``max_cine_s``."""
        self._pruned_at = float("-inf")
        """When retention last ran (monotonic seconds): at start, then every _PRUNE_EVERY_S;
        not again at once when the study loop starts again after an error."""
        self._summary_failed_at: dict[str, float] = {}
        """Per study: when its summary last failed (monotonic seconds); tried again after
        ``_RESUME_S``, the other studies meanwhile."""

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the node is not started")
        return self._listener.port

    def start(self) -> None:
        self._start_encoder()
        self._warm_up()
        for folder in (self.settings.incoming_dir, self.settings.results_dir):
            if restored := restore_aside(folder):
                log.warning("Put back %d file(s) a prune left aside when it stopped", restored)
            removed, freed = remove_partial(folder)
            if removed:
                log.warning(
                    "Removed %d file(s) half written when the node last stopped (%d bytes) from %s",
                    removed,
                    freed,
                    folder,
                )
        recovered = self.store.jobs.recover()
        if recovered.resumed:
            log.info("Resuming %d job(s) interrupted by the last stop", recovered.resumed)
        for uid in recovered.given_up:
            log.error(
                "%s: the node stopped while processing it %d times; failed (lus-pacs retry "
                "tries it again)",
                uid,
                MAX_INTERRUPTIONS,
            )
        unknown = self.store.deliveries.fail_unknown(
            self.settings.destination_names,
            "destination {destination!r} is not in the settings (renamed or removed): give it "
            "back that name, then lus-pacs retry sends its results",
        )
        for destination, count in unknown.items():
            log.error(
                "%d result set(s) waiting for destination %r, which is not in the settings "
                "(renamed or removed): failed (lus-pacs status lists them; give the destination "
                "that name again, then lus-pacs retry)",
                count,
                destination,
            )
        adopted = self.store.jobs.adopt(self.models.key)
        if adopted:
            log.info(
                "%d job(s) queued before the models changed are made by %s",
                adopted,
                self.models.key,
            )
        try:
            self._listener = start_listener(
                self.settings,
                record=self._record,
                on_stored=self._wake.set,
                on_study_complete=self._study_released,
                audit=self.audit,
            )
        except OSError as exc:
            raise ConfigError(
                _cannot_listen("DICOM", self.settings.port, self.settings, exc)
            ) from exc
        self._check_certificate()
        self._check_credentials()
        if self.settings.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(
                    self.settings.host, self.settings.metrics_port
                )
            except OSError as exc:
                raise ConfigError(
                    _cannot_listen("metrics", self.settings.metrics_port, self.settings, exc)
                ) from exc
            log.info("Metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)
        loops: list[tuple[str, Callable[[], None]]] = [
            (f"worker-{i + 1}", self._process_loop) for i in range(self.settings.workers)
        ]
        loops += [
            (f"export-{name}", partial(self._export_loop, name))
            for name in self.settings.destination_names
        ]
        loops.append(("studies", self._study_loop))
        for name, target in loops:
            thread = threading.Thread(
                target=_outliving(target, self._stop, self._failed_at), name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "%s listening on %s:%d, models %s, destinations %s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            self.models.key,
            list(self.settings.destination_names) or "none (results folder only)",
        )

    def _start_encoder(self) -> None:
        """The encoding processes (:class:`~lus_pacs.pipeline.Encoder`); where they cannot
        start, the workers make the result objects themselves."""
        if not self.settings.encoders:
            return
        encoder = None
        try:
            encoder = Encoder(self.settings.encoders)
            encoder.start()
        except Exception as exc:  # the node works without them, only slower
            log.error(
                "The encoding processes could not start (%s); the workers make the result "
                "objects themselves",
                describe(exc) or type(exc).__name__,
            )
            if encoder is not None:  # processes stuck in their start are killed
                encoder.close()
            return
        self._encoder = encoder

    def _warm_up(self) -> None:
        """The models run once on a simulated cine before the node listens, so that its first
        cine is processed as fast as the next ones (:func:`~lus_pacs.pipeline.warm_up`)."""
        started = time.monotonic()
        try:
            warm_up(self.models, self.settings, self._encoder)
        except Exception as exc:  # the node still stores what it is sent; each cine's failure
            # is recorded as it would be without the warm-up
            log.error(
                "The models could not process a simulated cine (%s); the node starts anyway "
                "and records each cine that fails",
                exc,
                exc_info=True,
            )
            return
        log.info("Models warmed up on a simulated cine in %.1f s", time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._results_queued()
        if self._listener is not None:
            self._listener.stop()
        self.metrics.stop()
        # A worker finishes a cine it is about to finish; an exporter blocked on a hung
        # destination is left (its delivery is still pending in the store and is made again
        # after a restart).
        self._join(STOP_GRACE_S)
        # One node per store: a job still in progress is one of this node's workers, not done
        # in time. Back in the queue uncounted, or three restarts during a long cine would
        # fail it as if it had killed the node three times; and back now, before a supervisor
        # that stops the node kills it (podman stop waits 10 s): a kill while the job is still
        # in progress counted. A worker that ends it before the node is gone still records
        # it (its claim is the latest: one node per store).
        if held := self.store.jobs.release_held():
            log.warning("Stopping with %d cine(s) in progress: queued again", held)
        self._join(STOP_WAIT_S)
        if self._encoder is not None:
            self._encoder.close()
        self.audit.close()
        self._store_lock.close()

    def _join(self, seconds: float) -> None:
        """Wait for the node's threads, ``seconds`` in all (an exporter 5 at most)."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            left = max(0.0, deadline - time.monotonic())
            thread.join(timeout=min(left, 5.0) if thread.name.startswith("export-") else left)

    def _check_credentials(self) -> None:
        """Log each DICOMweb destination whose credential cannot be read now (a variable not
        set in this environment, a file not mounted): its deliveries would fail for a day, one
        "unavailable" each retry, with nothing at start to say why."""
        for destination in self.settings.web_destinations:
            try:
                authorisation(destination)
            except ConfigError as exc:
                log.error(
                    "Results for %s cannot be sent until its credential can be read: %s",
                    destination.name,
                    exc,
                )

    def _check_certificate(self) -> None:
        """Log an expired listener certificate (no scanner can associate: each handshake
        fails) or one that expires within :data:`CERTIFICATE_WARNING_DAYS`."""
        expiry = self._certificate_expiry
        if expiry is None:
            return
        days = (expiry - time.time()) / 86400
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expiry))
        path = self.settings.tls.certificate if self.settings.tls else None
        if days <= 0:
            log.error(
                "The listener's TLS certificate %s expired on %s: no scanner can associate. "
                "Renew it and restart the node",
                path,
                when,
            )
        elif days < CERTIFICATE_WARNING_DAYS:
            log.warning(
                "The listener's TLS certificate %s expires on %s (in %.0f days): renew it and "
                "restart the node before then",
                path,
                when,
                days,
            )

    def health(self) -> tuple[bool, dict[str, object]]:
        """Whether the node is working, and what was checked (``/healthz``): the listener is
        up, every loop thread is alive and none failed in the last :data:`FAILING_S` (a loop
        that keeps failing, on a full disk say, is restarted every ``_RESUME_S`` and would look
        alive), no worker is hung on a cine given up (``overdue``), and the job store
        answers."""
        threads = {t.name: t.is_alive() for t in self._threads}
        now = time.monotonic()
        failing = sorted(n for n, at in list(self._failed_at.items()) if now - at < FAILING_S)
        overdue = sorted(self._overdue)
        checks: dict[str, object] = {
            "listener": self._listener is not None,
            "threads": threads,
            "failing": failing,
            "overdue": overdue,
        }
        free = free_bytes(self.settings)
        disk_ok = free is None or free >= self.settings.min_free_bytes  # 0: no reserve kept
        if free is not None:
            checks["disk_free_bytes"] = free
        try:
            checks["queued"] = int(self.store.jobs.counts().get(JobState.QUEUED, 0))
            store_ok = True
        except Exception as exc:  # the store is the node's memory: unhealthy without it
            checks["job_store_error"] = str(exc)
            store_ok = False
        checks["job_store"] = store_ok
        checks["disk"] = disk_ok  # below min_free_bytes the listener refuses instances
        # Told, not counted against health: a restart would not bring a PACS back.
        checks["unavailable_destinations"] = {
            name: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
            for name, since in sorted(self._unavailable.items())
        }
        certificate_ok = True
        if self._certificate_expiry is not None:
            certificate_ok = self._certificate_expiry > time.time()  # else every handshake fails
            checks["tls_certificate_expires"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._certificate_expiry)
            )
            checks["tls_certificate"] = certificate_ok
        ok = (
            self._listener is not None
            and all(threads.values())
            and store_ok
            and disk_ok
            and not failing
            and not overdue
            and certificate_ok
        )
        return ok and not self._stop.is_set(), checks

    def _record(self, instance: Instance) -> Received:
        received = self.store.jobs.record_instance(
            instance, self.models.key, on_change=self.settings.changed_instance
        )
        self.metrics.received.labels(received.value).inc()
        return received

    def _study_released(self, studies: list[str]) -> None:
        try:
            self.store.studies.complete(studies)
        except Exception:  # the quiet period completes them instead
            log.exception("Could not mark studies %s complete", studies)

    # Processing

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            self._put_back_held()
            job = self.store.jobs.claim(self.models.key)
            if job is None:
                self._wake.wait(_IDLE_S)
                self._wake.clear()
                continue
            try:
                self._process(job)
            except BaseException:  # the disk, not the cine: the job waits in the queue
                if not self.store.jobs.requeue(job):
                    self._held.setdefault(threading.current_thread().name, {})[job.id] = job
                raise

    def _put_back_held(self) -> None:
        """Jobs whose return to the queue failed (the store was locked or its disk full when
        their worker gave them up) go back now; until then no worker would take them again
        before a restart."""
        held = self._held.get(threading.current_thread().name, {})
        for job in list(held.values()):
            if self.store.jobs.requeue(job):
                del held[job.id]
                log.info("Job %d back in the queue", job.id)

    def _process(self, job: Job) -> None:
        pixels = stored_pixels(job.instance.path)
        asked = time.monotonic()
        with self._budget.hold(pixels) as held:
            if self._stop.is_set():  # waited for a long cine past the stop: next start
                self.store.jobs.requeue(job)
                return
            self.store.jobs.start(job)
            waited = time.monotonic() - asked
            log.info(
                "Processing %s (%.1f M pixels%s)",
                job.instance.sop_instance_uid,
                pixels / 1e6,
                f", after {waited:.1f} s for the pixel budget" if waited >= 0.05 else "",
            )
            worker = threading.current_thread().name
            self._running[worker] = (job, time.monotonic(), held)
            try:
                self._process_cine(job)
            finally:
                del self._running[worker]
                if worker in self._overdue:
                    self._overdue.discard(worker)
                    log.warning("%s is free again", worker)
            if self._budget.is_long(pixels):  # its leftovers back before the next long cine
                release_free_memory()

    def _process_cine(self, job: Job) -> None:
        uid = job.instance.sop_instance_uid
        out_dir = self.settings.results_dir / job.instance.study_instance_uid
        try:
            record, outputs = process_file(
                job.instance.path,
                self.models,
                self.settings,
                out_dir,
                revision=job.revision,
                encoder=self._encoder,
            )
        except LusPacsError as exc:
            if isinstance(exc, StageError) and exc.stage == "write":
                raise  # the disk, not the cine: the job is tried again
            log.error("Failed %s: %s", uid, exc)
            self._fail(job, str(exc))
            return
        except Exception as exc:  # one bad cine must not stop the worker
            log.exception("Failed %s: unexpected error", uid)
            self._fail(job, f"unexpected error: {exc!r}")
            return
        if not self.store.jobs.finish(
            job.id, record.dumps(), outputs, list(self.settings.destination_names), job.claim
        ):
            # Recorded nowhere, nothing would send or prune them; the same files of another
            # worker's claim (the same UIDs, the same paths) are recorded, and kept.
            for path in self.store.jobs.unrecorded([o.path for o in outputs]):
                path.unlink(missing_ok=True)
            log.warning(
                "%s finished after it was given up or taken by another worker; its results are "
                "not kept",
                uid,
            )
            return
        self._results_queued()
        self.metrics.observe(record.timings_ms)
        self.metrics.processed.labels("done").inc()
        b_lines = to_json(record.b_lines) if record.b_lines else {}
        log.info("Processed %s (zone %s): %s", uid, record.source.zone, b_lines)

    def _give_up_overdue(self) -> None:
        """Fail each cine processed for longer than ``max_cine_s``: its worker has hung. The
        worker thread cannot be stopped; it is reported (``/healthz``) until it returns."""
        now = time.monotonic()
        limit = self.settings.max_cine_s
        for worker, (job, started, held) in list(self._running.items()):
            if worker in self._overdue or now - started <= limit:
                continue
            self._overdue.add(worker)
            reason = (
                f"processing took longer than max_cine_s ({limit:g} s); lus-pacs "
                "retry tries it again"
            )
            if self.store.jobs.give_up(job, reason):
                self.metrics.processed.labels("failed").inc()
                # Counted no more: every cine that did not fit beside it waited for it, the
                # whole node with them, until a restart (its thread may still hold its frames:
                # the budget is a throttle, not a measure of memory).
                held.release()
                log.error(
                    "%s: %s. %s stays busy with it until it returns or the node restarts",
                    job.instance.sop_instance_uid,
                    reason,
                    worker,
                )

    def _fail(self, job: Job, reason: str) -> None:
        if self.store.jobs.fail(job, reason):  # not one given up and counted already
            self.metrics.processed.labels("failed").inc()

    # Delivering

    def _results_queued(self) -> None:
        for ready in self._ready.values():
            ready.set()

    def _export_loop(self, name: str) -> None:
        destination = self.settings.web_destination(name) or self.settings.destination(name)
        ready = self._ready[name]
        outages = 0  # attempts in a row that found the destination unavailable
        while not self._stop.is_set():
            ready.clear()
            due = self.store.deliveries.due(destination=name)
            if not due:
                ready.wait(_IDLE_S)  # woken as soon as results are queued, or polls again
                continue
            for delivery in due:
                if self._stop.is_set():
                    return
                outcome = self._deliver(delivery, destination)
                if outcome is None:  # called off: the destination was not asked
                    continue
                if not outcome:
                    outages = 0
                    self._unavailable.pop(name, None)
                    continue
                self._unavailable.setdefault(name, time.time())
                # The destination itself failed (down, or refusing this node's credentials):
                # the other deliveries would fail alike, each one more login refused or one
                # more connection timeout. All wait; then one tries, the longest waiting.
                hold = backoff_s(outages, self.settings.retry_base_s, self.settings.retry_max_s)
                outages += 1
                log.warning(
                    "%s is unavailable: its %d other due deliveries wait %.0f s, then one tries",
                    destination.name,
                    len(due) - 1,
                    hold,
                )
                self._stop.wait(hold)
                break

    def _deliver(
        self, delivery: Delivery, destination: DicomDestination | WebDestination
    ) -> bool | None:
        """Send one delivery and record the outcome; True when the destination as a whole did
        not take it (:attr:`~lus_pacs.errors.ExportError.unavailable`), None when the delivery
        was called off or none of its kinds goes there, and the destination was not asked (it
        tells nothing of it: a destination held unavailable was counted back)."""
        what = "study summary" if delivery.summary else "job"
        if not self.store.deliveries.still_due(delivery):
            log.info(
                "Delivery of %s %d to %s was called off; not sent",
                what,
                delivery.job_id,
                destination.name,
            )
            return None
        # Only the kinds that go there (the destination's output_kinds), audited as such.
        delivery = replace(
            delivery, outputs=tuple(o for o in delivery.outputs if destination.takes(o.kind))
        )
        paths = [o.path for o in delivery.outputs]
        if not paths:
            self.store.deliveries.delivered(
                delivery.job_id, delivery.destination, summary=delivery.summary
            )
            self._audit_delivery(delivery, "not sent", "none of its kinds goes there")
            log.info("None of %s %d goes to %s", what, delivery.job_id, destination.name)
            return None  # the destination was not asked: it tells nothing of it
        try:
            if isinstance(destination, WebDestination):
                stow(paths, destination)
            else:
                c_store(paths, destination, calling_ae=self.settings.ae_title)
        except Exception as exc:  # an attempt that failed, however: counted, and tried again
            if isinstance(exc, ExportError):
                reason = str(exc)
            else:  # a fault of the exporter or its libraries, not of the destination
                log.exception("Delivery of %s %d: unexpected error", what, delivery.job_id)
                # Its type and message, not its repr: a codec error's repr quotes the whole
                # text it failed on, which may be a credential.
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
            final = isinstance(exc, ExportError) and exc.final
            retry_at = None if final else self._retry_at(delivery.attempts)
            self.store.deliveries.failed(
                delivery.job_id, delivery.destination, reason, retry_at, summary=delivery.summary
            )
            self._audit_delivery(delivery, "failed" if retry_at else "given up", reason)
            self.metrics.send_failed.labels(destination.name).inc()
            log.warning(
                "Delivery of %s %d to %s failed (attempt %d): %s%s",
                what,
                delivery.job_id,
                destination.name,
                delivery.attempts + 1,
                reason,
                "; not tried again, marked failed"
                if final
                else ""
                if retry_at
                else "; retry budget spent, marked failed",
            )
            return isinstance(exc, ExportError) and exc.unavailable
        self.store.deliveries.delivered(
            delivery.job_id, delivery.destination, summary=delivery.summary
        )
        self._audit_delivery(delivery, "sent")
        self.metrics.sent.labels(destination.name).inc()
        log.info("Delivered %s %d to %s", what, delivery.job_id, destination.name)
        return False

    def _audit_delivery(self, delivery: Delivery, outcome: str, reason: str | None = None) -> None:
        self.audit.write(
            AuditEvent.RESULT,
            outcome,
            destination=delivery.destination,
            what="study summary" if delivery.summary else "cine results",
            job=delivery.job_id,
            attempt=delivery.attempts + 1,
            sop_instance_uids=[o.sop_instance_uid for o in delivery.outputs],
            reason=reason,
        )

    def _retry_at(self, attempts: int) -> float | None:
        """When to try again after ``attempts + 1`` failures; None when the budget is spent."""
        if attempts >= self.settings.retry_budget:
            return None
        return time.time() + backoff_s(
            attempts, self.settings.retry_base_s, self.settings.retry_max_s
        )

    # Studies

    def _study_loop(self) -> None:
        while not self._stop.wait(_IDLE_S):
            self._give_up_overdue()
            since = time.monotonic() - self._pruned_at
            if self.settings.retention_days and since >= _PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                self._prune(self.settings.retention_days)
            self.store.studies.complete_quiet(self.settings.study_quiet_s)
            self._summarise_done()

    def _summarise_done(self) -> None:
        """Summarise every study done and not summarised yet; one with cines made by other
        model versions (before an upgrade or a site's calibration) has them made again first,
        then is summarised whole."""
        now = time.monotonic()
        for study, received_at in self.store.studies.awaiting_summary():
            if now - self._summary_failed_at.get(study, float("-inf")) < _RESUME_S:
                continue
            try:
                self._summarise_one(study, received_at)
            except Exception:  # the disk, the store, or this study alone: the others go on
                self._summary_failed_at[study] = self._failed_at["studies"] = time.monotonic()
                log.exception(
                    "Study %s could not be summarised; tried again in %.0f s", study, _RESUME_S
                )
            else:
                self._summary_failed_at.pop(study, None)

    def _summarise_one(self, study: str, received_at: float) -> None:
        if queued := self.store.jobs.queue_missing(study, self.models.key):
            log.info(
                "Study %s: %d cine(s) made by other model versions queued for %s",
                study,
                queued,
                self.models.key,
            )
            self._wake.set()
            return
        self._summarise(study, received_at)
        if not self.store.studies.summarised(study, received_at):
            log.info("Study %s received more while it was summarised; again", study)

    def _prune(self, days: float) -> None:
        done = prune(self.store, days * DAY_S, results_dir=self.settings.results_dir)
        if done.studies or done.files:
            log.info(
                "Retention (%g days): %d studies' files removed, %d files, %.1f MB",
                days,
                done.studies,
                done.files,
                done.bytes / 1e6,
            )

    def _summarise(self, study: str, received_at: float) -> None:
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
        failed = self.store.studies.failed(study, self.models.key)
        if failed:
            log.warning(
                "Study %s: summarised without %d cine(s) that could not be processed: %s",
                study,
                len(failed),
                ", ".join(failed),
            )
        summary = StudySummary.of(study, records, failed)
        path = summary_path(self.settings, study)
        if OutputKind.STUDY_SR in self.settings.output_kinds:
            self._send_summary(study, summary, path.parent, received_at)
        with durable_file(path) as f:
            f.write(json.dumps(to_json(summary), indent=1).encode())
        log.info("Study %s complete: %s", study, summary.dumps())

    def _send_summary(
        self, study: str, summary: StudySummary, folder: Path, received_at: float
    ) -> None:
        if older := self.store.studies.made_by_others_only(study, self.models.key):
            # A late cine of a study retention pruned, after a model update: the cines made
            # before it cannot be made again, and a summary of the late one alone would give
            # its score as the exam's total.
            log.error(
                "Study %s: the summary SR cannot be made: %d of its cine(s) were made by other "
                "model versions and their files removed (retention); its summary is written "
                "without it",
                study,
                len(older),
            )
            return
        paths = self.store.studies.processed_paths(study, self.models.key)
        if removed := [p for p in paths if not p.exists()]:
            # A late cine of a study retention pruned: the SR would need the earlier cines'
            # headers. Raising would hold the study loop on this study for good.
            log.error(
                "Study %s: the summary SR cannot be made: the files of %d of its %d cine(s) "
                "were removed (retention); its summary is written without it",
                study,
                len(removed),
                len(paths),
            )
            return
        try:
            sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
            series = result_identity(study, self.models.key, OutputKind.STUDY_SR).series_uid
            previous = self.store.studies.summary_uids(study, series)
            summary_sr = encode_summary(summary, sources, self.models.key, previous)
        except (OSError, sqlite3.Error):
            raise  # the disk or the store, for now: the study stays awaiting its summary
        except Exception as exc:  # the sources' headers are foreign input, whatever they hold
            # Logged, and the study summarised without its SR: raising would stop the study
            # loop on this study again and again, and every study after it with it.
            log.error("Study %s: the summary SR could not be made: %s", study, describe(exc))
            return
        # A failed write (a full disk) raises: the study stays awaiting its summary.
        (output,) = write_outputs([summary_sr], folder)
        destinations = list(self.settings.destination_names)
        if self.store.studies.record_summary(
            study, summary.dumps(), output, destinations, series, received_at
        ):
            self._results_queued()
            log.info("Study %s: summary SR %s queued", study, output.sop_instance_uid)
        elif not self.store.studies.summary_known(output.sop_instance_uid):
            # A cine came (other content, a late one) while this summary was made from what
            # the study held before: not sent; the study is summarised again.
            output.path.unlink(missing_ok=True)
            log.info("Study %s changed while its summary was made; not queued", study)


def _outliving(
    loop: Callable[[], None], stop: threading.Event, failed_at: dict[str, float]
) -> Callable[[], None]:
    """``loop`` run until ``stop``, started again ``_RESUME_S`` after any error it raises: a
    full disk or an unavailable job store must not end a thread of the node for good. When it
    last raised goes in ``failed_at`` (by thread name, monotonic seconds), for the health
    check: a loop that keeps failing is alive but does no work."""

    def run() -> None:
        while not stop.is_set():
            try:
                loop()
            except Exception:
                name = threading.current_thread().name
                failed_at[name] = time.monotonic()
                log.exception("%s failed; it starts again in %.0f s", name, _RESUME_S)
                stop.wait(_RESUME_S)

    return run


def check_ports(settings: Settings) -> None:
    """Refuse at once, before the models load (tens of seconds), when the DICOM or the metrics
    port cannot be bound (another node or program listens on it, an unknown host).

    Raises
    ------
    ConfigError
        Naming the port, the address and why.
    """
    for what, port in (("DICOM", settings.port), ("metrics", settings.metrics_port)):
        if not port:  # None, or 0: any free port
            continue
        try:
            family, kind, proto, address = _bound_as_servers_do(settings.host, port)
            with socket.socket(family, kind, proto) as probe:
                # As the servers bind: a port left in TIME_WAIT by the last run is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            raise ConfigError(_cannot_listen(what, port, settings, exc)) from exc


def _bound_as_servers_do(host: str, port: int) -> tuple[int, int, int, tuple[str, int]]:
    """The address the listeners bind for ``host``: "" as any, a name as its IPv4 address
    (pynetdicom and the metrics server listen on IPv4; "localhost" may list ::1 first)."""
    found = socket.getaddrinfo(
        host or None, port, socket.AF_INET, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = found[0]
    return family, kind, proto, (str(address[0]), int(address[1]))


def _cannot_listen(what: str, port: int | None, settings: Settings, exc: OSError) -> str:
    return (
        f"cannot listen for {what} on {settings.host}:{port}: {exc} (another node or program "
        "on that port? set port or metrics_port)"
    )


def summary_path(settings: Settings, study: str) -> Path:
    return settings.results_dir / study / SUMMARY_NAME


def stored_pixels(path: Path) -> int:
    """:func:`~lus_pacs.imaging.metadata.budget_pixels` of the stored instance at ``path``;
    0 when its header cannot be read: processing then fails on it with the reason."""
    try:
        return budget_pixels(pydicom.dcmread(path, stop_before_pixels=True), path.stat().st_size)
    except Exception:  # a damaged header: the cine's own failure, reported where it is read
        return 0


CERTIFICATE_WARNING_DAYS = 30
"""A listener certificate expiring sooner is warned of at start."""


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """The wait before the next try after ``attempts + 1`` failures: doubling from
    ``base_s``, at most ``max_s``, for any number of attempts (a float's exponent ends at
    2**1023: a budget of thousands of tries would otherwise fail its own bookkeeping)."""
    return min(max_s, base_s * 2.0 ** min(attempts, 64))


def hold_store(store_path: Path) -> IO[bytes]:
    """An exclusive lock on the job store for as long as the node runs (the kernel drops it
    when the process ends, however it ends). A second node started on the same store (an
    operator checking, a service restart overlapping the old process) would put the first
    one's cines in progress back in the queue (:meth:`~lus_pacs.queue.jobs.Jobs.recover`)
    and make and send them twice; ``lus-pacs status`` and ``retry`` need no lock."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    path = store_path.with_name(store_path.name + ".lock")
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"another node is running on the job store {store_path} (it holds {path.name}): "
            "stop it first, or give this node a data_dir of its own"
        ) from None
    return handle
