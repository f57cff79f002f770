"""The metrics server's /healthz on loopback: what a container healthcheck reads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import prometheus_client
import pytest

from lus_pacs.domain import JobState
from lus_pacs.ingest.metrics import NodeMetrics


@pytest.mark.parametrize(("healthy", "status"), [(True, 200), (False, 503)])
def test_healthz_says_what_the_checks_say(healthy: bool, status: int) -> None:
    checks = {"job_store": healthy, "threads": {"worker-1": True}}
    metrics = NodeMetrics(lambda: {JobState.QUEUED: 2}, lambda: (healthy, checks))
    port = metrics.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as answer:
                code, body = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            code, body = error.code, error.read()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
            scraped = answer.read().decode()
    finally:
        metrics.stop()
    assert code == status
    doc = json.loads(body)
    assert doc == {"status": "ok" if healthy else "unhealthy", "checks": checks}
    assert "lus_pacs_queue_depth 2.0" in scraped  # /metrics is still served beside it


def test_silent_clients_are_dropped_and_cannot_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that sent part of a request and stopped held a thread for good: anyone
    reaching the port could pile up threads and memory."""
    import socket
    import time

    from lus_pacs.ingest import metrics as metrics_module

    monkeypatch.setattr(metrics_module._QuietHandler, "timeout", 0.5)
    monkeypatch.setattr(metrics_module, "MAX_CLIENTS", 2)
    metrics = NodeMetrics(lambda: {}, lambda: (True, {}))
    port = metrics.serve("127.0.0.1", 0)
    silent = []
    try:
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET /metr")
            silent.append(connection)
        # The third found no free place and was closed at once.
        assert silent[2].recv(1) == b""
        time.sleep(1.0)
        # The first two were dropped after their silence; the port serves again.
        assert all(c.recv(100) == b"" for c in silent[:2])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        for connection in silent:
            connection.close()
        metrics.stop()


def test_the_delivery_gauges_read_zero_rather_than_vanish() -> None:
    """A destination whose failed deliveries were all retried lost its failed series (stale on
    a dashboard) instead of reading 0; a disk that cannot be asked read 0 bytes free."""
    series = [("pacs", state) for state in ("pending", "sent", "failed")]
    metrics = NodeMetrics(
        lambda: {},
        deliveries=lambda: {("pacs", "sent"): 3},
        oldest_queued_s=lambda: 0.0,
        disk_free=lambda: None,
        delivery_series=series,
    )
    scraped = prometheus_client.generate_latest(metrics.registry).decode()
    assert 'lus_pacs_deliveries{destination="pacs",state="failed"} 0.0' in scraped
    assert 'lus_pacs_deliveries{destination="pacs",state="sent"} 3.0' in scraped
    assert "lus_pacs_disk_free_bytes NaN" in scraped
