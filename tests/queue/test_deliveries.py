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


def test_a_send_ending_after_its_content_came_back_leaves_the_job_to_be_made_again(
    store: JobStore, tmp_path: Path
) -> None:
    """A, B, then A again while A's first results were on their way: when that send ended
    (sent, or failed to be tried later) the job of A, queued again, was marked failed by it:
    never made or sent again without a retry by hand."""
    for ending in ("sent", "failed"):
        uid = f"1.2.3.{1 if ending == 'sent' else 2}"
        first = replace(instance(1 if ending == "sent" else 2), content="aa")
        store.jobs.record_instance(first, "m@1")
        job = store.jobs.claim()
        assert job is not None
        store.jobs.finish(job.id, "{}", [Output("sr", "9.9.1", tmp_path / "sr.dcm")], ["pacs"])
        (taken,) = store.deliveries.due()  # the exporter's, on its way
        store.jobs.record_instance(replace(first, content="bb"), "m@1")
        store.jobs.record_instance(first, "m@1")  # A again
        if ending == "sent":
            store.deliveries.delivered(taken.job_id, "pacs")
        else:
            store.deliveries.failed(taken.job_id, "pacs", "timeout", time.time() + 60)
        (row,) = [r for r in store.jobs.rows() if r.id == job.id]
        assert row.sop_instance_uid == uid
        assert row.state is JobState.QUEUED, ending
        again = store.jobs.claim()
        assert again is not None
        assert again.id == job.id
        store.jobs.finish(again.id, "{}", [], [])


def test_a_retry_while_its_study_is_summarised_summarises_it_again(store: JobStore) -> None:
    """lus-pacs retry while the study loop made the summary: the retried cine's study was
    marked summarised by the loop's end, and never summarised with that cine."""
    for n in (1, 2):
        store.jobs.record_instance(instance(n), "m@1")
    done = store.jobs.claim()
    assert done is not None
    store.jobs.finish(done.id, '{"cine": 1}', [], [])
    failed = store.jobs.claim()
    assert failed is not None
    store.jobs.fail(failed, "out of memory")
    store.studies.complete(["1.2.3"])
    ((study, received_at),) = store.studies.awaiting_summary()  # the loop starts a summary
    assert store.deliveries.retry_failed() == 1
    assert not store.studies.summarised(study, received_at)  # the loop's end
    again = store.jobs.claim()
    assert again is not None
    store.jobs.finish(again.id, '{"cine": 2}', [], [])
    assert [s for s, _ in store.studies.awaiting_summary()] == [study]


def test_a_summary_not_yet_sent_is_called_off_when_a_cine_of_its_study_moves(
    store: JobStore, tmp_path: Path
) -> None:
    """A study summarised while the PACS was down, then one of its cines sent again under
    another study (a corrected worklist): its own results were called off, but the pending
    summary SR, holding its findings under the first patient's study, was still sent (and
    put back by lus-pacs retry once called off)."""
    for n in (1, 2):
        store.jobs.record_instance(replace(instance(n, "1.1"), content="a"), "m@1")
    for n in (1, 2):
        job = store.jobs.claim()
        assert job is not None
        out = [Output("sr", f"9.{n}", tmp_path / f"{n}.dcm")]
        store.jobs.finish(job.id, f'{{"cine": {n}}}', out, ["pacs"])
    store.studies.complete(["1.1"])
    ((study, received_at),) = store.studies.awaiting_summary()
    summary = Output("study-sr", "8.8", tmp_path / "summary.dcm")
    store.studies.record_summary(study, '{"cines": 2}', summary, ["pacs"])
    assert store.studies.summarised(study, received_at)
    store.jobs.record_instance(replace(instance(1, "2.2"), content="b"), "m@1")
    due = store.deliveries.due()
    assert [(d.summary, d.job_id) for d in due] == [(False, 2)]  # cine 2's results only
    store.deliveries.retry_failed()
    assert [(d.summary, d.job_id) for d in store.deliveries.due()] == [(False, 2)]


def _summarised(
    store: JobStore, tmp_path: Path, study: str, n: int, destinations: list[str]
) -> int:
    """The study's summary number ``n`` recorded for ``destinations``: its id."""
    summary = Output("study-sr", f"8.{n}", tmp_path / f"summary-{n}.dcm")
    assert store.studies.record_summary(study, f'{{"n": {n}}}', summary, destinations)
    return next(d.job_id for d in store.deliveries.due() if d.summary)


def test_a_failed_summary_is_called_off_when_a_cine_of_its_study_moves(
    store: JobStore, tmp_path: Path
) -> None:
    """A summary whose retry budget ran out (the PACS down a day) was left failed when a cine
    of its study moved to another study: lus-pacs retry then sent it, the first patient's
    study with the moved cine's findings."""
    store.jobs.record_instance(replace(instance(1, "1.1"), content="a"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, '{"cine": 1}', [], [])
    summary_id = _summarised(store, tmp_path, "1.1", 1, ["pacs"])
    store.deliveries.failed(summary_id, "pacs", "cannot connect", retry_at=None, summary=True)
    store.jobs.record_instance(replace(instance(1, "2.2"), content="b"), "m@1")
    store.deliveries.retry_failed()
    assert [d for d in store.deliveries.due() if d.summary] == []
    # Never sent, never retried: not among the failed ones an operator's alert waits on.
    assert store.deliveries.counts() == {("pacs", "called_off"): 1}


def test_retry_puts_back_a_failed_delivery_of_a_job_another_destination_still_waits_for(
    store: JobStore, tmp_path: Path
) -> None:
    """The PACS given up while the archive still retried: the job was not failed, so
    lus-pacs retry said "0 queued again" and the PACS's delivery stayed failed for good."""
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [Output("sr", "9.1", tmp_path / "1.dcm")], ["pacs", "archive"])
    store.deliveries.failed(job.id, "pacs", "status 0xA700", retry_at=None)
    store.deliveries.failed(job.id, "archive", "cannot connect", retry_at=time.time() + 3600)
    assert store.deliveries.retry_failed(["pacs", "archive"]) == 1
    (again,) = store.deliveries.due()
    assert (again.destination, again.attempts) == ("pacs", 0)
    assert store.deliveries.retry_failed(["archive"]) == 0  # only known destinations'


def test_a_summary_called_off_then_current_again_is_sent(store: JobStore, tmp_path: Path) -> None:
    """A, B, A with the PACS down: the third summary is the first object again (same UID),
    which the store knew, so nothing was queued and no summary ever reached the PACS."""
    store.jobs.record_instance(replace(instance(1, "1.1"), content="a"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, '{"cine": 1}', [], [])
    first = Output("study-sr", "8.1", tmp_path / "summary-1.dcm")
    assert store.studies.record_summary("1.1", '{"n": 1}', first, ["pacs"])
    store.jobs.record_instance(replace(instance(1, "1.1"), content="b"), "m@1")  # calls it off
    assert [d for d in store.deliveries.due() if d.summary] == []
    assert store.studies.summary_uids("1.1", "") == []  # no PACS holds it
    assert store.studies.record_summary("1.1", '{"n": 1}', first, ["pacs"])  # current again
    (again,) = [d for d in store.deliveries.due() if d.summary]
    assert (again.outputs, again.attempts) == ((first,), 0)
    assert not store.studies.record_summary("1.1", '{"n": 1}', first, ["pacs"])  # once


def test_a_summary_sent_somewhere_before_it_was_called_off_is_named_by_the_next(
    store: JobStore, tmp_path: Path
) -> None:
    """Sent to the PACS, called off for the archive: it was left out of the study's summaries,
    so the next was numbered 1 again and named no predecessor, two "first" summaries in PACS."""
    store.jobs.record_instance(replace(instance(1, "1.1"), content="a"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, '{"cine": 1}', [], [])
    summary_id = _summarised(store, tmp_path, "1.1", 1, ["pacs", "archive"])
    store.deliveries.delivered(summary_id, "pacs", summary=True)
    store.jobs.record_instance(replace(instance(1, "1.1"), content="b"), "m@1")
    assert store.studies.summary_uids("1.1", "") == ["8.1"]


def test_a_failed_delivery_of_content_received_again_is_called_off(
    store: JobStore, tmp_path: Path
) -> None:
    """Its job replaced, no retry would send it; counted as failed it held an alert for good."""
    store.jobs.record_instance(replace(instance(1), content="a"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [Output("sr", "9.1", tmp_path / "1.dcm")], ["pacs"])
    store.deliveries.failed(job.id, "pacs", "status 0xA700", retry_at=None)
    store.jobs.record_instance(replace(instance(1), content="b"), "m@1")
    assert store.deliveries.counts() == {("pacs", "called_off"): 1}
