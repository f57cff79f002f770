"""The node's Prometheus metrics and health, served over HTTP beside the DICOM listener (the
node's other network endpoint): ``/metrics`` and ``/healthz``.

Per-stage latency histograms (read, decode, each model family, encode), jobs by state and the
queue depth (read from the job store when scraped), instances received by what the store made
of them, cines processed and failed, result sets sent and failed by destination, and the
audit trail's lines by event and outcome (connections refused, associations rejected...). Every
metric is in the node's own registry, so that two nodes in one process do not share counts.

``/healthz`` answers 200 with ``{"status": "ok", "checks": {...}}`` while the node works and 503
with ``"status": "unhealthy"`` when a check fails (what the container healthcheck and a load
balancer ask).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lus_pacs.domain import JobState
from lus_pacs.ingest.audit import AuditEvent

STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: a stage of one cine takes from milliseconds (decode) to minutes (segmentation of
every frame on a CPU)."""


class _Jobs(Collector):
    """Jobs by state and the queue depth, as the job store has them at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[JobState, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        jobs = GaugeMetricFamily(
            "lus_pacs_jobs", "Jobs in the job store by state", labels=["state"]
        )
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "lus_pacs_queue_depth",
            "Cines received and waiting to be processed",
            value=counts.get(JobState.QUEUED, 0),
        )


class _Deliveries(Collector):
    """Deliveries by destination and state, and the age of the oldest queued job, as the job
    store has them at scrape time."""

    def __init__(
        self,
        counts: Callable[[], Mapping[tuple[str, str], int]],
        oldest_queued_s: Callable[[], float],
        series: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._counts, self._oldest = counts, oldest_queued_s
        self._series = tuple(series)

    def collect(self) -> Iterator[Metric]:
        deliveries = GaugeMetricFamily(
            "lus_pacs_deliveries",
            "Deliveries of results and study summaries in the job store, by destination and "
            "state (pending, sent, failed: failed ones wait for lus-pacs retry; called_off: "
            "superseded before they were sent, never sent)",
            labels=["destination", "state"],
        )
        # Every (destination, state) of ``series`` (each configured destination's states), 0
        # where none: a series that vanished when its failures were retried read as stale.
        counts = dict.fromkeys(self._series, 0)
        counts.update({(d, str(s)): n for (d, s), n in self._counts().items()})
        for (destination, state), n in sorted(counts.items()):
            deliveries.add_metric([destination, state], n)
        yield deliveries
        yield GaugeMetricFamily(
            "lus_pacs_oldest_queued_seconds",
            "Seconds the oldest cine waiting to be processed has waited (0: none waits)",
            value=self._oldest(),
        )


class NodeMetrics:
    """The metrics of one node; ``jobs`` reads the job store's counts by state."""

    def __init__(
        self,
        jobs: Callable[[], Mapping[JobState, int]],
        health: Callable[[], tuple[bool, Mapping[str, object]]] | None = None,
        deliveries: Callable[[], Mapping[tuple[str, str], int]] | None = None,
        oldest_queued_s: Callable[[], float] | None = None,
        disk_free: Callable[[], int | None] | None = None,
        delivery_series: Iterable[tuple[str, str]] = (),
        certificate_expiry: float | None = None,
    ) -> None:
        self._health = health
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "lus_pacs_stage_seconds",
            "Seconds one stage took for one cine: read, decode, each model family, encode",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.received = Counter(
            "lus_pacs_instances_received",
            "Instances stored by the listener, by what the job store made of them",
            ["outcome"],
            registry=self.registry,
        )
        self.processed = Counter(
            "lus_pacs_cines_processed",
            "Cines processed, by outcome (done, or failed with a reason)",
            ["outcome"],
            registry=self.registry,
        )
        self.sent = Counter(
            "lus_pacs_results_sent",
            "Result sets (a cine's objects, or a study summary) delivered, by destination",
            ["destination"],
            registry=self.registry,
        )
        self.audited = Counter(
            "lus_pacs_audit_events",
            "Lines of the audit trail by event and outcome: associations accepted or rejected, "
            "connections refused, instances received or refused, results sent or failed",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.send_failed = Counter(
            "lus_pacs_results_failed",
            "Failed delivery attempts, by destination",
            ["destination"],
            registry=self.registry,
        )
        if disk_free is not None:
            gauge = Gauge(
                "lus_pacs_disk_free_bytes",
                "Free bytes of the file system holding the node's data (alert well before "
                "min_free_bytes, where the listener starts refusing instances)",
                registry=self.registry,
            )
            # Unknown (the file system cannot be asked) is NaN, not 0: 0 fires "disk full".
            gauge.set_function(lambda: float("nan") if (free := disk_free()) is None else free)
        if certificate_expiry is not None:
            Gauge(
                "lus_pacs_tls_certificate_expiry_timestamp_seconds",
                "When the listener's TLS certificate expires (alert some weeks before: renewing "
                "it needs a restart)",
                registry=self.registry,
            ).set(certificate_expiry)
        self.registry.register(_Jobs(jobs))
        if deliveries is not None and oldest_queued_s is not None:
            self.registry.register(_Deliveries(deliveries, oldest_queued_s, delivery_series))
        self._server: WSGIServer | None = None

    def observe(self, timings_ms: Mapping[str, float]) -> None:
        """One cine's stage timings (the record's ``timings_ms``)."""
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)

    def count_audited(self, event: AuditEvent, outcome: str) -> None:
        """One line of the audit trail (:class:`~lus_pacs.ingest.audit.AuditLog`'s observer)."""
        self.audited.labels(event.value, outcome).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` and ``/healthz`` on ``host``:``port`` (0: any free port) in a
        background thread; returns the bound port."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/healthz":
                return metrics(environ, start_response)
            ok, checks = self._health() if self._health else (True, {})
            body = json.dumps({"status": "ok" if ok else "unhealthy", "checks": checks})
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [body.encode()]

        server = make_server(host, port, app, _Server, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


MAX_CLIENTS = 16
"""Requests served at once on the metrics port; a connection beyond them is closed at once."""


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request, at most :data:`MAX_CLIENTS` at once: each connection that sent
    part of a request and stopped held a thread for good, so anyone reaching the port could
    pile up threads and memory."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _QuietHandler(WSGIRequestHandler):
    """No access line per scrape on stderr; a client silent for ``timeout`` seconds is
    dropped."""

    timeout = 10.0

    def log_message(self, format: str, *args: Any) -> None:
        pass
