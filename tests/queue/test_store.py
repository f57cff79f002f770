"""The job store: states survive a restart, results are made once per instance and model
versions, deliveries retry and fail visibly."""

from __future__ import annotations

import time
from pathlib import Path

from lus_pacs.queue.store import DeliveryState, Instance, JobState, JobStore, Output


def _instance(n: int, study: str = "1.2.3") -> Instance:
    return Instance(
        f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.3.1", study, "1.2.3.9", "SCU", Path(f"{n}.dcm")
    )


def test_a_job_is_made_once_per_instance_and_model_versions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    assert store.record_instance(_instance(1), "b_lines@0.1.0")
    assert not store.record_instance(_instance(1), "b_lines@0.1.0")  # sent twice
    assert store.record_instance(_instance(1), "b_lines@0.2.0")  # a new model version
    assert store.counts() == {JobState.QUEUED: 2}


def test_a_crash_while_processing_puts_the_job_back(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.record_instance(_instance(1), "m@1")
    job = store.claim_job()
    assert job is not None
    assert job.instance.path == Path("1.dcm")
    assert store.claim_job() is None
    store.close()
    restarted = JobStore(tmp_path / "jobs.sqlite")  # the process died holding the job
    assert restarted.recover() == 1
    again = restarted.claim_job()
    assert again is not None
    assert again.id == job.id


def test_deliveries_retry_then_fail_and_can_be_retried(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.record_instance(_instance(1), "m@1")
    job = store.claim_job()
    assert job is not None
    out = Output("sr", "9.9.9", tmp_path / "sr.dcm")
    store.finish_job(job.id, "{}", [out], ["pacs"])
    (due,) = store.due_deliveries()
    assert due.outputs == (out,)
    store.delivery_failed(job.id, "pacs", "refused", retry_at=time.time() + 60)
    assert store.due_deliveries() == []  # backing off
    assert len(store.due_deliveries(now=time.time() + 61)) == 1
    store.delivery_failed(job.id, "pacs", "refused again", retry_at=None)
    (row,) = store.jobs()
    assert row.state is JobState.FAILED
    assert row.deliveries == (("pacs", DeliveryState.FAILED, 2, "refused again"),)
    assert store.retry_failed() == 1
    (due,) = store.due_deliveries()
    assert due.attempts == 0
    store.delivered(job.id, "pacs")
    assert store.counts() == {JobState.SENT: 1}


def test_a_study_is_done_when_complete_and_nothing_waits(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.record_instance(_instance(1, "7.7"), "m@1")
    assert not store.study_done("7.7")
    store.complete_studies(["7.7"])
    assert not store.study_done("7.7")  # its job is still queued
    job = store.claim_job()
    assert job is not None
    store.finish_job(job.id, '{"x": 1}', [], [])
    assert store.study_done("7.7")
    assert store.records("7.7") == ['{"x": 1}']
    assert store.counts() == {JobState.SENT: 1}
    store.record_instance(_instance(2, "8.8"), "m@1")
    assert store.quiet_studies(quiet_s=3600) == []
    assert store.quiet_studies(quiet_s=0) == ["8.8"]


def test_a_study_summary_is_queued_once_and_retried_like_a_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    summary = Output("study-sr", "8.8.8", tmp_path / "study-sr.dcm")
    assert store.record_summary("7.7", "{}", summary, ["pacs", "archive"])
    assert not store.record_summary("7.7", "{}", summary, ["pacs", "archive"])  # same summary
    due = store.due_deliveries()
    assert sorted(d.destination for d in due) == ["archive", "pacs"]
    assert all(d.summary and d.outputs == (summary,) for d in due)
    summary_id = due[0].job_id
    store.delivered(summary_id, "pacs", summary=True)
    store.delivery_failed(summary_id, "archive", "refused", retry_at=None, summary=True)
    assert store.due_deliveries() == []
    assert store.counts() == {}  # no job was touched
    (row,) = store.summaries()
    assert row.study_instance_uid == "7.7"
    assert {d: s for d, s, _, _ in row.deliveries} == {
        "archive": DeliveryState.FAILED,
        "pacs": DeliveryState.SENT,
    }
    assert store.retry_failed() == 1
    (again,) = store.due_deliveries()
    assert (again.destination, again.attempts, again.summary) == ("archive", 0, True)
    later = Output("study-sr", "8.8.9", tmp_path / "study-sr-2.dcm")  # the study grew
    assert store.record_summary("7.7", "{}", later, ["pacs"])


def test_a_study_summary_counts_each_cine_once_per_model_versions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    for models in ("m@1", "m@2"):  # the same cine before and after a model update
        store.record_instance(_instance(1, "7.7"), models)
        job = store.claim_job()
        assert job is not None
        store.finish_job(job.id, f'{{"models": "{models}"}}', [], [])
    assert len(store.records("7.7")) == 2
    assert store.records("7.7", "m@2") == ['{"models": "m@2"}']
    assert store.processed_paths("7.7", "m@2") == [Path("1.dcm")]
