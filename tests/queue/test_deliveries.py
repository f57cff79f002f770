"""Deliveries retry, then fail visibly, and can be retried."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from lus_pacs.domain import JobState, Output
from lus_pacs.queue.deliveries import DeliveryState
from lus_pacs.queue.store import JobStore
from tests.queue.conftest import instance


def test_deliveries_retry_then_fail_and_can_be_retried(store: JobStore, tmp_path: Path) -> None:
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim()
    assert job is not None
    out = Output("sr", "9.9.9", tmp_path / "sr.dcm")
    store.jobs.finish(job.id, "{}", [out], ["pacs"])
    (due,) = store.deliveries.due()
    assert due.outputs == (out,)
    store.deliveries.failed(job.id, "pacs", "refused", retry_at=time.time() + 60)
    assert store.deliveries.due() == []  # backing off
    assert len(store.deliveries.due(now=time.time() + 61)) == 1
    store.deliveries.failed(job.id, "pacs", "refused again", retry_at=None)
    (row,) = store.jobs.rows()
    assert row.state is JobState.FAILED
    assert row.deliveries == (("pacs", DeliveryState.FAILED, 2, "refused again"),)
    assert store.deliveries.retry_failed() == 1
    (due,) = store.deliveries.due()
    assert due.attempts == 0
    store.deliveries.delivered(job.id, "pacs")
    assert store.jobs.counts() == {JobState.SENT: 1}


def test_deliveries_are_counted_by_destination_and_state_and_the_queue_by_its_age(
    store: JobStore,
) -> None:
    """What /metrics shows an operator: results failing for one destination, a queue that
    has stopped moving."""
    assert store.jobs.oldest_queued_s() == 0.0
    store.jobs.record_instance(instance(1), "m@1")
    store.jobs.record_instance(instance(2), "m@1")
    queued_at = time.time()
    assert 100 <= store.jobs.oldest_queued_s(now=queued_at + 100) < 101
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [], ["pacs", "archive"])
    for delivery in store.deliveries.due():
        if delivery.destination == "pacs":
            store.deliveries.delivered(delivery.job_id, delivery.destination)
        else:
            store.deliveries.failed(delivery.job_id, delivery.destination, "refused", None)
    assert store.deliveries.counts() == {("pacs", "sent"): 1, ("archive", "failed"): 1}
    assert 100 <= store.jobs.oldest_queued_s(now=queued_at + 100) < 101  # instance 2 waits


def test_a_delivery_called_off_after_it_was_listed_is_not_due_and_stays_called_off(
    store: JobStore, tmp_path: Path
) -> None:
    """The exporter sends from a list it took earlier: a cine received again with other content
    (a corrected worklist moving it to another study) calls its old results off meanwhile."""
    store.jobs.record_instance(replace(instance(1), content="first"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [Output("sr", "9.9.1", tmp_path / "sr.dcm")], ["pacs"])
    (listed,) = store.deliveries.due()
    assert store.deliveries.still_due(listed)
    store.jobs.record_instance(replace(instance(1, "1.2.4"), content="corrected"), "m@1")
    assert not store.deliveries.still_due(listed)
    store.deliveries.delivered(listed.job_id, "pacs")  # a send that was already under way
    (row,) = [r for r in store.jobs.rows() if r.id == listed.job_id]
    ((_, state, _, reason),) = row.deliveries
    assert state is DeliveryState.FAILED
    assert reason is not None
    assert "received again with other content" in reason
