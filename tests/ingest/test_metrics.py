"""The metrics server's /healthz on loopback: what a container healthcheck reads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

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
