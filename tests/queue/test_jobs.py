"""Jobs: made once per instance and model versions, and a crash while processing loses none."""

from __future__ import annotations

from pathlib import Path

from lus_pacs.domain import JobState
from lus_pacs.queue.store import JobStore
from tests.queue.conftest import instance


def test_a_job_is_made_once_per_instance_and_model_versions(store: JobStore) -> None:
    assert store.jobs.record_instance(instance(1), "b_lines@0.1.0")
    assert not store.jobs.record_instance(instance(1), "b_lines@0.1.0")  # sent twice
    assert store.jobs.record_instance(instance(1), "b_lines@0.2.0")  # a new model version
    assert store.jobs.counts() == {JobState.QUEUED: 2}


def test_a_crash_while_processing_puts_the_job_back(store: JobStore, tmp_path: Path) -> None:
    store.jobs.record_instance(instance(1), "m@1")
    job = store.jobs.claim()
    assert job is not None
    assert job.instance.path == Path("1.dcm")
    assert store.jobs.claim() is None
    store.close()
    restarted = JobStore(tmp_path / "jobs.sqlite")  # the process died holding the job
    assert restarted.jobs.recover() == 1
    again = restarted.jobs.claim()
    assert again is not None
    assert again.id == job.id
