"""Studies: done when complete and nothing waits; one summary per distinct summary object,
delivered and retried like a cine's results."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lus_pacs.domain import JobState, Output, Received
from lus_pacs.queue.deliveries import DeliveryState
from lus_pacs.queue.store import JobStore
from tests.queue.conftest import instance


def test_a_study_is_done_when_complete_and_nothing_waits(store: JobStore) -> None:
    store.jobs.record_instance(instance(1, "7.7"), "m@1")
    assert not store.studies.done("7.7")
    store.studies.complete(["7.7"])
    assert not store.studies.done("7.7")  # its job is still queued
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, '{"x": 1}', [], [])
    assert store.studies.done("7.7")
    assert store.studies.records("7.7") == ['{"x": 1}']
    assert store.jobs.counts() == {JobState.SENT: 1}
    store.jobs.record_instance(instance(2, "8.8"), "m@1")
    assert store.studies.complete_quiet(quiet_s=3600) == []
    assert store.studies.complete_quiet(quiet_s=0) == ["8.8"]


def test_a_study_summary_is_queued_once_and_retried_like_a_job(
    store: JobStore, tmp_path: Path
) -> None:
    summary = Output("study-sr", "8.8.8", tmp_path / "study-sr.dcm")
    assert store.studies.record_summary("7.7", "{}", summary, ["pacs", "archive"])
    assert not store.studies.record_summary("7.7", "{}", summary, ["pacs", "archive"])  # same
    due = store.deliveries.due()
    assert sorted(d.destination for d in due) == ["archive", "pacs"]
    assert all(d.summary and d.outputs == (summary,) for d in due)
    summary_id = due[0].job_id
    store.deliveries.delivered(summary_id, "pacs", summary=True)
    store.deliveries.failed(summary_id, "archive", "refused", retry_at=None, summary=True)
    assert store.deliveries.due() == []
    assert store.jobs.counts() == {}  # no job was touched
    (row,) = store.studies.summaries()
    assert row.study_instance_uid == "7.7"
    assert {d: s for d, s, _, _ in row.deliveries} == {
        "archive": DeliveryState.FAILED,
        "pacs": DeliveryState.SENT,
    }
    assert store.deliveries.retry_failed() == 1
    (again,) = store.deliveries.due()
    assert (again.destination, again.attempts, again.summary) == ("archive", 0, True)
    later = Output("study-sr", "8.8.9", tmp_path / "study-sr-2.dcm")  # the study grew
    assert store.studies.record_summary("7.7", "{}", later, ["pacs"])


def test_a_study_summary_counts_each_cine_once_per_model_versions(store: JobStore) -> None:
    for models in ("m@1", "m@2"):  # the same cine before and after a model update
        store.jobs.record_instance(instance(1, "7.7"), models)
        job = store.jobs.claim()
        assert job is not None
        store.jobs.finish(job.id, f'{{"models": "{models}"}}', [], [])
    assert len(store.studies.records("7.7")) == 2
    assert store.studies.records("7.7", "m@2") == ['{"models": "m@2"}']
    assert store.studies.processed_paths("7.7", "m@2") == [Path("1.dcm")]


def test_a_done_study_awaits_its_summary_across_a_restart_until_one_is_made(
    store: JobStore,
) -> None:
    store.jobs.record_instance(instance(1, "7.7"), "m@1")
    store.studies.complete(["7.7"])
    assert store.studies.awaiting_summary() == []  # its job is still queued
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [], [])
    reopened = JobStore(store.path)  # a restart: nothing is kept in memory
    ((study, received_at),) = reopened.studies.awaiting_summary()
    assert study == "7.7"
    store.jobs.record_instance(instance(2, "7.7"), "m@1")  # arrives while it is summarised
    assert not reopened.studies.summarised(study, received_at)
    assert reopened.studies.awaiting_summary() == []  # reopened: not complete, one job queued
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [], [])
    store.studies.complete(["7.7"])
    ((_, received_at),) = reopened.studies.awaiting_summary()
    assert reopened.studies.summarised("7.7", received_at)
    assert reopened.studies.awaiting_summary() == []
    assert reopened.studies.done("7.7")


def test_a_cine_sent_again_under_another_study_moves_there_and_its_old_study_is_summarised_again(
    store: JobStore,
) -> None:
    """The scanner's worklist was corrected and the cine sent again, same SOP Instance UID:
    before, it stayed filed under the first patient's study (whose next summary counted it)
    and the corrected study waited for a summary of nothing."""
    moved = replace(instance(1, "1.1"), content="a")
    store.jobs.record_instance(moved, "m@1")
    store.jobs.record_instance(instance(2, "1.1"), "m@1")
    for n in (1, 2):
        job = store.jobs.claim()
        assert job is not None
        store.jobs.finish(job.id, f'{{"cine": {n}}}', [], [])
    store.studies.complete(["1.1"])
    ((study, received),) = store.studies.awaiting_summary()
    assert store.studies.summarised(study, received)
    again = replace(
        moved, study_instance_uid="2.2", series_instance_uid="2.2.9", path=Path("1b"), content="b"
    )
    assert store.jobs.record_instance(again, "m@1") == Received.REPLACED
    job = store.jobs.claim()
    assert job is not None
    assert job.instance.study_instance_uid == "2.2"
    store.jobs.finish(job.id, '{"cine": "1 again"}', [], [])
    assert store.studies.records("2.2") == ['{"cine": "1 again"}']
    assert store.studies.records("1.1") == ['{"cine": 2}']
    assert store.studies.processed_paths("1.1", "m@1") == [Path("2.dcm")]
    assert sorted(store.studies.complete_quiet(quiet_s=0)) == ["1.1", "2.2"]
    assert sorted(uid for uid, _ in store.studies.awaiting_summary()) == ["1.1", "2.2"]


def test_a_cine_that_retry_makes_after_its_study_was_summarised_is_summarised_again(
    store: JobStore,
) -> None:
    """One cine of the exam failed (a passing fault) and the summary went out without it;
    ``lus-pacs retry`` makes it, and before, the summary was never made again."""
    for n in (1, 2):
        store.jobs.record_instance(instance(n, "7.7"), "m@1")
    first = store.jobs.claim()
    second = store.jobs.claim()
    assert first is not None
    assert second is not None
    store.jobs.finish(first.id, '{"cine": 1}', [], [])
    store.jobs.fail(second, "unexpected error: MemoryError()")
    store.studies.complete(["7.7"])
    ((study, received),) = store.studies.awaiting_summary()
    assert store.studies.summarised(study, received)
    assert store.deliveries.retry_failed() == 1
    assert store.studies.awaiting_summary() == []  # not before the cine is made
    again = store.jobs.claim()
    assert again is not None
    store.jobs.finish(again.id, '{"cine": 2}', [], [])
    assert [uid for uid, _ in store.studies.awaiting_summary()] == ["7.7"]
    assert sorted(store.studies.records("7.7")) == ['{"cine": 1}', '{"cine": 2}']


def test_a_study_names_its_cines_that_failed_and_not_those_replaced_since(
    store: JobStore,
) -> None:
    store.jobs.record_instance(instance(1, "7.7"), "m@1")
    store.jobs.record_instance(replace(instance(2, "7.7"), content="a"), "m@1")
    for reason in ("R1.dcm: not a readable DICOM file", "R2.dcm: cut short"):
        job = store.jobs.claim()
        assert job is not None
        store.jobs.fail(job, reason)
    assert store.studies.failed("7.7", "m@1") == {
        "1.2.3.1": "R1.dcm: not a readable DICOM file",
        "1.2.3.2": "R2.dcm: cut short",
    }
    assert store.studies.failed("7.7", "m@2") == {}
    store.jobs.record_instance(replace(instance(2, "7.7"), content="b"), "m@1")  # sent again
    assert list(store.studies.failed("7.7", "m@1")) == ["1.2.3.1"]


def test_a_cine_failed_only_at_delivery_is_summarised_not_named_unprocessed(
    store: JobStore, tmp_path: Path
) -> None:
    """Its retry budget spent, a delivered-nowhere cine was both scored and counted among
    the cines "not processed" (LUS091) of its study's next summary."""
    store.jobs.record_instance(instance(1, "7.7"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, '{"x": 1}', [Output("sr", "9.9.1", tmp_path / "sr.dcm")], ["pacs"])
    store.deliveries.failed(job.id, "pacs", "PACS down", retry_at=None)
    assert store.jobs.rows()[0].state is JobState.FAILED
    assert store.studies.records("7.7", "m@1") == ['{"x": 1}']
    assert store.studies.failed("7.7", "m@1") == {}


def test_cines_made_by_other_model_versions_are_queued_again_before_a_summary(
    store: JobStore, tmp_path: Path
) -> None:
    """After an upgrade or a site's calibration (another models key), a late cine reopened
    its study, whose new summary covered only that cine: an exam of total 7 was sent as total
    0 of 3, without a word about the others."""
    for n in (1, 2, 4):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(b"cine")
        store.jobs.record_instance(replace(instance(n, "7.7"), path=path, content=f"c{n}"), "m@1")
        job = store.jobs.claim("m@1")
        assert job is not None
        store.jobs.finish(job.id, f'{{"n": {n}}}', [], [])
    (tmp_path / "4.dcm").unlink()  # removed by retention: not made again (it would fail)
    store.jobs.record_instance(replace(instance(3, "7.7"), content="c3"), "m@2")  # late
    assert store.jobs.queue_missing("7.7", "m@2") == 2
    assert store.jobs.queue_missing("7.7", "m@2") == 0  # once
    queued = [r for r in store.jobs.rows() if r.state is JobState.QUEUED]
    assert sorted(r.sop_instance_uid for r in queued) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    store.jobs.record_instance(replace(instance(1, "7.7"), content="c1b"), "m@2")  # replaced
    assert store.jobs.queue_missing("8.8", "m@2") == 0  # another study: nothing


def test_a_summary_begun_before_a_cine_came_again_is_not_queued(
    store: JobStore, tmp_path: Path
) -> None:
    """A cine received again with other content (a corrected patient) calls off the study's
    summaries recorded; one being made at that moment, from the old content, was recorded a
    moment later, queued and sent."""
    store.jobs.record_instance(replace(instance(1, "7.7"), content="aa"), "m@1")
    job = store.jobs.claim()
    assert job is not None
    store.jobs.finish(job.id, "{}", [], [])
    store.studies.complete(["7.7"])
    ((study, begun),) = store.studies.awaiting_summary()
    # ... the summary is being made from the records and headers of now, when:
    store.jobs.record_instance(replace(instance(1, "7.7"), content="bb"), "m@1")
    stale = Output("study-sr", "8.8.1", tmp_path / "stale.dcm")
    assert not store.studies.record_summary(study, "{}", stale, ["pacs"], received_at=begun)
    assert store.deliveries.due() == []
    assert not store.studies.summary_known("8.8.1")
    job = store.jobs.claim()  # the new content made, the study summarised again
    assert job is not None
    store.jobs.finish(job.id, "{}", [], [])
    store.studies.complete(["7.7"])
    ((_, now),) = store.studies.awaiting_summary()
    fresh = Output("study-sr", "8.8.2", tmp_path / "fresh.dcm")
    assert store.studies.record_summary(study, "{}", fresh, ["pacs"], received_at=now)
    assert [d.outputs for d in store.deliveries.due()] == [(fresh,)]
