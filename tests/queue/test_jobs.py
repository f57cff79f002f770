"""Jobs: made once per instance content and model versions; other content under a known UID
replaces the earlier jobs or is refused; a crash while processing loses none."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from lus_pacs.domain import Instance, JobState, Output, Received
from lus_pacs.queue.deliveries import DeliveryState
from lus_pacs.queue.store import JobStore
from tests.queue.conftest import instance


def test_a_job_is_made_once_per_instance_and_model_versions(store: JobStore) -> None:
    assert store.jobs.record_instance(instance(1), "b_lines@0.1.0") is Received.NEW
    assert store.jobs.record_instance(instance(1), "b_lines@0.1.0") is Received.KNOWN  # twice
    assert store.jobs.record_instance(instance(1), "b_lines@0.2.0") is Received.NEW  # new models
    assert store.jobs.counts() == {JobState.QUEUED: 2}


def test_a_crash_while_processing_puts_the_job_back(store: JobStore, tmp_path: Path) -> None:
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim()
    assert job is not None
    assert job.instance.path == Path("1.dcm")
    assert store.jobs.claim() is None
    store.close()
    restarted = JobStore(tmp_path / "jobs.sqlite")  # the process died holding the job
    assert restarted.jobs.recover().resumed == 1
    again = restarted.jobs.claim()
    assert again is not None
    assert again.id == job.id


def test_a_job_that_could_not_be_put_back_says_so_and_can_be_later(
    store: JobStore, tmp_path: Path
) -> None:
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim()
    assert job is not None
    other = sqlite3.connect(tmp_path / "jobs.sqlite")  # the store's writes fail meanwhile
    other.execute(
        "CREATE TRIGGER full BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    other.commit()
    assert store.jobs.requeue(job) is False
    assert store.jobs.counts() == {JobState.PROCESSING: 1}
    other.execute("DROP TRIGGER full")
    other.commit()
    other.close()
    assert store.jobs.requeue(job) is True
    again = store.jobs.claim()
    assert again is not None
    assert again.id == job.id


def _content(n: int, content: str) -> Instance:
    return replace(instance(n), content=content, path=Path(f"{n}-{content}.dcm"))


def test_other_content_under_a_known_uid_replaces_its_jobs_or_is_refused(
    store: JobStore,
) -> None:
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.NEW
    job = store.jobs.claim()
    assert job is not None
    assert job.revision == ""  # the first content: the UIDs it always had
    store.jobs.finish(job.id, '{"v": "aa"}', [], ["pacs"])
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.KNOWN
    # Refused: nothing changes.
    refused = store.jobs.record_instance(_content(1, "bb"), "m@1", on_change="refuse")
    assert refused is Received.REFUSED
    assert store.jobs.counts() == {JobState.ENCODED: 1}
    # Reprocessed: the earlier job is replaced, its pending delivery not sent, a new job queued.
    assert store.jobs.record_instance(_content(1, "bb"), "m@1") is Received.REPLACED
    assert store.jobs.counts() == {JobState.REPLACED: 1, JobState.QUEUED: 1}
    assert store.deliveries.due() == []
    (old, new) = store.jobs.rows()
    assert old.deliveries[0][1] == DeliveryState.FAILED
    assert "other content" in (old.deliveries[0][3] or "")
    again = store.jobs.claim()
    assert again is not None
    assert (again.id, again.revision, again.instance.path) == (new.id, "bb", Path("1-bb.dcm"))
    store.jobs.finish(again.id, '{"v": "bb"}', [], [])
    assert store.studies.records() == ['{"v": "bb"}']  # the replaced record is not counted
    # Back to the first content: its job is current again, and this one replaced.
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.REPLACED
    assert store.jobs.counts() == {JobState.REPLACED: 1, JobState.QUEUED: 1}


def test_a_job_replaced_while_it_was_processed_sends_nothing(store: JobStore) -> None:
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.record_instance(_content(1, "bb"), "m@1")
    store.jobs.finish(job.id, "{}", [], ["pacs"])
    store.jobs.fail(job, "late")
    assert store.jobs.counts() == {JobState.REPLACED: 1, JobState.QUEUED: 1}
    assert store.deliveries.due() == []


def test_a_delivery_ending_after_its_job_was_replaced_leaves_it_replaced(
    store: JobStore,
) -> None:
    """The exporter took the old results before the new content came and ends after: the
    old job stays replaced, so that its record stays out of the study's summary."""
    for ending in ("sent", "failed", "given up"):
        uid = {"sent": 1, "failed": 2, "given up": 3}[ending]
        store.jobs.record_instance(_content(uid, "aa"), "m@1")
        job = store.jobs.claim()
        assert job is not None
        store.jobs.finish(job.id, '{"v": "aa"}', [], ["pacs", "archive"])
        (taken, *_) = store.deliveries.due()  # the exporter takes one: in flight
        store.jobs.record_instance(_content(uid, "bb"), "m@1")  # the new content arrives
        if ending == "sent":
            store.deliveries.delivered(taken.job_id, taken.destination)
        else:
            retry_at = 1e12 if ending == "failed" else None
            store.deliveries.failed(taken.job_id, taken.destination, "refused", retry_at)
        (old,) = [r for r in store.jobs.rows() if r.id == job.id]
        assert old.state is JobState.REPLACED, ending
        called_off = {d[0]: d for d in old.deliveries}[taken.destination]
        if ending != "sent":  # called off for the new content, not counted as a failure
            assert called_off[1] == DeliveryState.FAILED
            assert "other content" in (called_off[3] or "")
        new = store.jobs.claim()
        assert new is not None
        store.jobs.finish(new.id, '{"v": "bb"}', [], [])
    assert store.studies.records() == ['{"v": "bb"}'] * 3
    assert store.deliveries.retry_failed() == 0  # nothing of the old content is sent again


def test_jobs_queued_before_the_models_changed_are_made_by_the_new_ones(
    store: JobStore,
) -> None:
    """A node restarted on new bundles processes what was queued with them: the records must
    carry their key, or the study summary (which reads the current key's) leaves them out."""
    store.jobs.record_instance(_content(1, "aa"), "m@1")  # queued before the upgrade
    store.jobs.record_instance(_content(2, "aa"), "m@1")
    store.jobs.record_instance(_content(2, "aa"), "m@2")  # sent again since: queued anew
    store.jobs.record_instance(_content(3, "aa"), "m@1")
    done = store.jobs.claim()
    assert done is not None
    store.jobs.finish(done.id, '{"v": 1}', [], [])  # made by m@1 before the upgrade
    assert store.jobs.adopt("m@2") == 1  # instance 3's; instance 2 has its m@2 job
    states = {(r.sop_instance_uid, r.state) for r in store.jobs.rows()}
    assert states == {
        ("1.2.3.1", JobState.SENT),  # made by m@1: its record stays m@1's
        ("1.2.3.2", JobState.REPLACED),  # the m@2 job of the same content does it
        ("1.2.3.2", JobState.QUEUED),
        ("1.2.3.3", JobState.QUEUED),
    }
    for _ in range(2):
        job = store.jobs.claim()
        assert job is not None
        store.jobs.finish(job.id, f'{{"v": "{job.instance.sop_instance_uid}"}}', [], [])
    assert sorted(store.studies.records(models="m@2")) == ['{"v": "1.2.3.2"}', '{"v": "1.2.3.3"}']
    assert store.jobs.adopt("m@2") == 0


def test_failed_jobs_of_two_older_versions_queued_again_are_made_once(store: JobStore) -> None:
    """retry queues the failed jobs of every version: at the next start both would take the
    current key, which the store's uniqueness refuses (the node could not start)."""
    for models in ("m@1", "m@2"):
        store.jobs.record_instance(_content(1, "aa"), models)
        job = store.jobs.claim()
        assert job is not None
        store.jobs.fail(job, "unreadable")
    assert store.deliveries.retry_failed() == 2
    assert store.jobs.adopt("m@3") == 1
    assert store.jobs.counts() == {JobState.QUEUED: 1, JobState.REPLACED: 1}
    assert store.jobs.adopt("m@3") == 0


def test_content_received_again_after_other_content_is_sent_again(store: JobStore) -> None:
    """A, B, then A again: A's job is made again, with new result objects, and its earlier
    delivery (sent, or called off for B) starts over; before, it stayed as it was and the new
    results were never sent."""
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    first = store.jobs.claim()
    assert first is not None
    store.jobs.finish(first.id, "{}", [], ["pacs"])
    (delivery,) = store.deliveries.due()
    store.deliveries.delivered(delivery.job_id, delivery.destination)
    store.jobs.record_instance(_content(1, "bb"), "m@1")
    store.jobs.record_instance(_content(1, "aa"), "m@1")  # A again: its job is current again
    again = store.jobs.claim()
    assert again is not None
    assert again.id == first.id
    store.jobs.finish(again.id, '{"made": "again"}', [], ["pacs"])
    assert [d.job_id for d in store.deliveries.due()] == [first.id]


def test_jobs_of_an_older_store_are_kept_and_take_the_content_first_received(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT NOT NULL, "
        "study_instance_uid TEXT NOT NULL, series_instance_uid TEXT NOT NULL, "
        "calling_ae TEXT NOT NULL, path TEXT NOT NULL, received_at REAL NOT NULL);"
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, sop_instance_uid TEXT NOT NULL "
        "REFERENCES instances(sop_instance_uid), models TEXT NOT NULL, state TEXT NOT NULL, "
        "error TEXT, record TEXT, updated_at REAL NOT NULL, UNIQUE (sop_instance_uid, models));"
        "INSERT INTO instances VALUES ('1.2.3.1', '1.2', '1.2.3', '1.2.3.9', 'SCU', '1.dcm', 0);"
        "INSERT INTO jobs VALUES (7, '1.2.3.1', 'm@1', 'sent', NULL, '{}', 0);"
    )
    old.commit()
    old.close()
    store = JobStore(path)
    assert store.jobs.counts() == {JobState.SENT: 1}
    # Received again after the upgrade: the same instance, not processed twice.
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.KNOWN
    assert store.jobs.record_instance(_content(1, "bb"), "m@1") is Received.REPLACED
    assert [r.id for r in store.jobs.rows(JobState.REPLACED)] == [7]


def test_a_failed_job_retried_while_a_newer_node_runs_is_made_and_counted_by_its_versions(
    store: JobStore,
) -> None:
    """``lus-pacs retry`` puts a failed job back as it was; the running node (upgraded since,
    so it adopted at its start) makes it with its own versions, and its study's summary,
    which reads only those, counts it."""
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim("m@1")
    assert job is not None
    store.jobs.fail(job, "a fault fixed in m@2")
    assert store.deliveries.retry_failed() == 1
    again = store.jobs.claim("m@2")
    assert again is not None
    assert (again.id, again.models) == (job.id, "m@2")
    store.jobs.finish(again.id, '{"v": 2}', [], [])
    assert store.studies.records("1.2.3", models="m@2") == ['{"v": 2}']


def test_a_job_the_node_stops_on_three_times_fails_and_retry_gives_it_three_more(
    store: JobStore, tmp_path: Path
) -> None:
    """A cine whose processing kills the node (the out-of-memory killer, a crash in a
    decoder): before, each start put it back, the node took it and died again, for good."""
    store.jobs.record_instance(instance(1), "m@1")
    store.jobs.record_instance(instance(2), "m@1")
    for stop in range(1, 4):
        held = store.jobs.claim()
        assert held is not None
        assert held.instance.sop_instance_uid == "1.2.3.1"  # the first in the queue, again
        store.jobs.start(held)  # the pixel budget granted, its worker on it
        waiting = store.jobs.claim()  # the other worker's, waiting for the budget
        assert waiting is not None
        store.close()
        store = JobStore(tmp_path / "jobs.sqlite")  # the node died holding it
        recovered = store.jobs.recover()
        assert recovered.resumed == (2 if stop < 3 else 1)
    # Only the one that started is failed; the one waiting for the budget beside it had not
    # started and is queued again.
    assert recovered.given_up == ("1.2.3.1",)
    (failed,) = store.jobs.rows(JobState.FAILED)
    assert "stopped while processing it 3 times" in (failed.error or "")
    following = store.jobs.claim()  # the next cine is made
    assert following is not None
    store.jobs.finish(following.id, "{}", [], [])
    assert store.deliveries.retry_failed() == 1
    again = store.jobs.claim()
    assert again is not None
    assert again.instance.sop_instance_uid == "1.2.3.1"
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite")
    assert store.jobs.recover().resumed == 1  # retry gave it its three again


def test_an_instance_stored_before_the_digest_changed_is_not_refused_for_good(
    store: JobStore,
) -> None:
    """Digests of the bytes (a node before 2026-12-07) cannot be compared with digests of what
    an instance says: under "refuse" every later copy of an instance received before was
    refused with 0xC111, for good."""
    store.jobs.record_instance(replace(instance(1), content="0f1e2d"), "m@1", "refuse")
    sent_again = replace(instance(1), content="c-aaaa")
    assert store.jobs.record_instance(sent_again, "m@1", "refuse") is Received.KNOWN
    assert store.jobs.record_instance(sent_again, "m@1", "refuse") is Received.KNOWN
    changed = replace(instance(1), content="c-bbbb")
    assert store.jobs.record_instance(changed, "m@1", "refuse") is Received.REFUSED
    assert len(store.jobs.rows()) == 1
    # Under "reprocess" a copy of the old kind is taken as other content, once.
    store.jobs.record_instance(replace(instance(2), content="0a0b0c"), "m@1")
    again = replace(instance(2), content="c-cccc")
    assert store.jobs.record_instance(again, "m@1") is Received.REPLACED
    assert store.jobs.record_instance(again, "m@1") is Received.KNOWN


def test_only_the_latest_claim_of_a_job_records_its_outcome(store: JobStore) -> None:
    """Two ways a job is taken again while its first worker still runs it: received A, B, A
    (A's job current again), or given up as overdue and retried. Both workers finished: the
    second finish put the delivery the first had made back to pending (sent twice), or the
    stale worker's failure failed the retried job and its good results were thrown away."""
    out = [Output("sr", "9.9.9", Path("sr.dcm"))]
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    first = store.jobs.claim("m@1")
    assert first is not None
    store.jobs.record_instance(_content(1, "bb"), "m@1")
    store.jobs.record_instance(_content(1, "aa"), "m@1")  # A again: its job queued again
    second = store.jobs.claim("m@1")
    assert second is not None
    assert (second.id, second.claim) == (first.id, first.claim + 1)
    assert store.jobs.finish(second.id, "{}", out, ["pacs"], second.claim)
    (delivery,) = store.deliveries.due()
    store.deliveries.delivered(delivery.job_id, "pacs")
    assert not store.jobs.finish(first.id, "{}", out, ["pacs"], first.claim)  # the stale one
    assert not store.jobs.fail(first, "late")  # said so: the node counts no failure for it
    assert store.deliveries.due() == []
    assert [r.state for r in store.jobs.rows()] == [JobState.SENT, JobState.REPLACED]

    store.jobs.record_instance(_content(2, "cc"), "m@1")
    hung = store.jobs.claim("m@1")
    assert hung is not None
    assert store.jobs.give_up(hung, "max_cine_s")
    assert store.deliveries.retry_failed() == 1  # lus-pacs retry, the node running
    retried = store.jobs.claim("m@1")
    assert retried is not None
    assert not store.jobs.fail(hung, "the hung worker's late error")  # counted when given up
    assert not store.jobs.give_up(hung, "max_cine_s")
    assert store.jobs.finish(retried.id, "{}", [], ["pacs"], retried.claim)
    assert store.jobs.rows()[-1].state is JobState.ENCODED


def test_a_cine_sent_again_after_its_processing_failed_is_processed_again(
    store: JobStore,
) -> None:
    """Its stored file unreadable for a moment (a mount glitch), the job failed at read; the
    scanner sent the cine again and was told it was known: the job stayed failed and the
    study's summary left it out until someone ran lus-pacs retry."""
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.fail(job, "1.dcm: read failed: [Errno 2] No such file or directory")
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.NEW
    again = store.jobs.claim()
    assert again is not None
    assert again.id == job.id
    assert again.error is None
    # One that made results whose delivery failed is not processed again by a resend: its
    # results are there, and lus-pacs retry sends them.
    store.jobs.finish(again.id, "{}", [], ["pacs"], again.claim)
    (delivery,) = store.deliveries.due()
    for _ in range(20):
        store.deliveries.failed(delivery.job_id, delivery.destination, "refused", None)
    assert store.jobs.counts() == {JobState.FAILED: 1}
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.KNOWN
    assert store.jobs.claim() is None


def test_a_cine_given_up_is_not_queued_again_by_a_resend(store: JobStore, tmp_path: Path) -> None:
    """Given up for hanging its worker, or for killing the node three times: a resend queued
    it again (a review), so each resend hung one more worker, or allowed three more crashes.
    Those are lus-pacs retry's."""
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    assert store.jobs.give_up(job, "processing took longer than max_cine_s (1 s)")
    assert store.jobs.record_instance(_content(1, "aa"), "m@1") is Received.KNOWN
    store.jobs.record_instance(_content(2, "bb"), "m@1")
    for _ in range(3):  # the node dies on it three times
        started = store.jobs.claim()
        assert started is not None
        store.jobs.start(started)
        store.close()
        store = JobStore(tmp_path / "jobs.sqlite")
        store.jobs.recover()
    assert store.jobs.counts() == {JobState.FAILED: 2}
    assert store.jobs.record_instance(_content(2, "bb"), "m@1") is Received.KNOWN
    assert store.jobs.claim() is None


def test_retry_leaves_deliveries_to_a_destination_gone_from_the_settings_failed(
    store: JobStore,
) -> None:
    """Put back to pending, a delivery to a destination renamed or removed since was sent by
    no exporter: "pending" for good, the failure hidden and the study never pruned."""
    store.jobs.record_instance(_content(1, "aa"), "m@1")
    job = store.jobs.claim("m@1")
    assert job is not None
    out = [Output("sr", "9.9.1", Path("sr.dcm"))]
    assert store.jobs.finish(job.id, "{}", out, ["old-pacs", "pacs"], job.claim)
    for delivery in store.deliveries.due():
        store.deliveries.failed(delivery.job_id, delivery.destination, "down", None)
    assert store.deliveries.retry_failed(["pacs", "archive"]) == 1
    states = {d[0]: d[1] for d in store.jobs.rows()[0].deliveries}
    assert states == {"old-pacs": DeliveryState.FAILED, "pacs": DeliveryState.PENDING}
    store.deliveries.delivered(job.id, "pacs")
    assert store.jobs.rows()[0].state is JobState.FAILED  # still named: old-pacs
    assert store.deliveries.retry_failed(["pacs"]) == 0  # nothing it could send
