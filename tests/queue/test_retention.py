"""Retention: the files of studies done and quiet go, their rows stay; a study with something
left to do, or a file newer than the cut-off, keeps its files."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lus_pacs import retention
from lus_pacs.domain import JobState, Output, Received
from lus_pacs.queue.store import JobStore
from lus_pacs.retention import Pruned, prune
from tests.queue.conftest import instance
from tests.tools import run_cli


def _received(store: JobStore, root: Path, n: int, study: str, content: str = "aa") -> Path:
    path = root / "incoming" / study / f"1.2.3.{n}-{content}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"cine" * 100)
    arrived = replace(instance(n, study), path=path, content=content)
    assert store.jobs.record_instance(arrived, "m@1") in (Received.NEW, Received.REPLACED)
    return path


def _processed(store: JobStore, root: Path, deliver: bool = True) -> Path:
    job = store.jobs.claim()
    assert job is not None
    out = root / "results" / job.instance.study_instance_uid / f"sr-{job.id}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"result" * 10)
    store.jobs.finish(job.id, "{}", [Output("sr", f"9.9.{job.id}", out)], ["pacs"])
    (delivery,) = store.deliveries.due()
    if deliver:
        store.deliveries.delivered(delivery.job_id, delivery.destination)
    else:
        store.deliveries.failed(delivery.job_id, delivery.destination, "refused", None)
    return out


def _summarised(store: JobStore, root: Path, study: str) -> Path:
    store.studies.complete([study])
    ((uid, at),) = [a for a in store.studies.awaiting_summary() if a[0] == study]
    path = root / "results" / study / "summary-sr.dcm"
    path.write_bytes(b"summary")
    assert store.studies.record_summary(uid, "{}", Output("study-sr", f"8.{uid}", path), ["pacs"])
    (delivery,) = store.deliveries.due()
    store.deliveries.delivered(delivery.job_id, delivery.destination, summary=True)
    assert store.studies.summarised(uid, at)
    return path


def test_a_study_done_and_quiet_loses_its_files_and_keeps_its_rows(
    store: JobStore, tmp_path: Path
) -> None:
    files = [_received(store, tmp_path, 1, "1.2.3"), _processed(store, tmp_path)]
    files.append(_summarised(store, tmp_path, "1.2.3"))
    replaced = tmp_path / "incoming" / "1.2.3" / "1.2.3.1-old.dcm"  # an earlier content's file
    replaced.write_bytes(b"old")
    # The node's summary (not recorded in the store: it stayed, findings and folder).
    files.append(tmp_path / "results" / "1.2.3" / retention.SUMMARY_NAME)
    files[-1].write_text("{}")
    results = tmp_path / "results"
    assert prune(store, 3600, results_dir=results).studies == 0  # not quiet for an hour yet
    done = prune(store, 0, now=time.time() + 10, results_dir=results)
    assert (done.studies, done.files) == (1, 5)
    assert not any(p.exists() for p in [*files, replaced])
    assert list((tmp_path / "incoming" / "1.2.3").iterdir()) == []  # kept: a late cine's
    assert (tmp_path / "results" / "1.2.3").exists() is False
    assert store.studies.records("1.2.3") == ["{}"]  # the store still knows what was made
    assert store.jobs.counts() == {JobState.SENT: 1}
    assert prune(store, 0, now=time.time() + 10).studies == 0  # once


def test_a_study_with_something_left_to_do_keeps_its_files(store: JobStore, tmp_path: Path) -> None:
    kept = [_received(store, tmp_path, 1, "1.2.4"), _processed(store, tmp_path, deliver=False)]
    store.studies.complete(["1.2.4"])
    for uid, at in store.studies.awaiting_summary():
        store.studies.summarised(uid, at)
    assert prune(store, 0, now=time.time() + 10).studies == 0  # its delivery failed: retry
    assert all(p.exists() for p in kept)


def test_a_file_that_arrives_while_its_study_is_pruned_is_kept(
    store: JobStore, tmp_path: Path
) -> None:
    _received(store, tmp_path, 1, "1.2.5")
    _processed(store, tmp_path)
    _summarised(store, tmp_path, "1.2.5")
    late = tmp_path / "incoming" / "1.2.5" / "1.2.3.1-bb.dcm"  # other content, just arrived
    late.write_bytes(b"late")
    os.utime(late, (time.time() + 60, time.time() + 60))
    done = prune(store, 0, now=time.time() + 10)
    assert (done.studies, done.files) == (0, 3)  # not noted pruned: looked at again
    assert late.exists()
    # Recorded, it makes the study not done again: pruned again once it is.
    _received(store, tmp_path, 1, "1.2.5", content="bb")
    assert store.studies.prunable(time.time() + 10) == []


def test_prune_from_the_command_line(store: JobStore, tmp_path: Path) -> None:
    source = _received(store, tmp_path, 1, "1.2.6")
    _processed(store, tmp_path)
    _summarised(store, tmp_path, "1.2.6")
    config = tmp_path / "lus-pacs.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    assert store.path == tmp_path / "jobs.sqlite"  # the store of these settings
    kept = run_cli("prune", "--older-than", "1", "--config", str(config))
    assert "0 studies pruned: 0 files" in kept.stdout
    assert source.exists()
    time.sleep(0.05)  # quiet for longer than zero days
    pruned = run_cli("prune", "--older-than", "0", "--config", str(config))
    assert "1 studies pruned: 3 files" in pruned.stdout
    assert not source.exists()


def test_a_study_summarised_after_the_cut_off_waits_for_the_next_prune(
    store: JobStore, tmp_path: Path
) -> None:
    """Its results and summary are newer than the cut-off though its last instance is older
    (processing after a backlog, a retry): pruned then, their files were skipped and the study
    noted pruned for good."""
    files = [_received(store, tmp_path, 1, "1.2.7")]
    time.sleep(0.05)
    cut_off = time.time()
    time.sleep(0.05)
    files += [_processed(store, tmp_path), _summarised(store, tmp_path, "1.2.7")]
    assert prune(store, 0, now=cut_off) == Pruned(0, 0, 0)
    assert all(p.exists() for p in files)
    assert prune(store, 0, now=time.time() + 10).studies == 1
    assert not any(p.exists() for p in files)


def test_the_file_removed_is_the_one_judged_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune checked a file's age at its path, then removed the path: an instance received
    again in between (renamed over the path, a fresh acknowledged copy) was the one removed."""
    old = tmp_path / "1.2.3.1-aa.dcm"
    old.write_bytes(b"old copy")
    os.utime(old, (time.time() - 100, time.time() - 100))
    real_rename = os.rename

    def received_again_meanwhile(src: str | Path, dst: str | Path) -> None:
        real_rename(src, dst)  # the old copy moved aside ...
        fresh = tmp_path / "fresh.tmp"
        fresh.write_bytes(b"fresh copy")
        real_rename(fresh, old)  # ... and the listener's fresh copy renamed into place

    monkeypatch.setattr(retention.os, "rename", received_again_meanwhile)
    assert retention.remove_if_older(old, time.time() - 50) == len(b"old copy")
    monkeypatch.undo()
    assert old.read_bytes() == b"fresh copy"
    assert retention.remove_if_older(old, time.time() - 50) is None  # newer: stays
    assert old.read_bytes() == b"fresh copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    assert retention.remove_if_older(tmp_path / "gone.dcm", time.time()) == 0


def test_a_study_whose_first_summary_was_called_off_is_pruned(
    store: JobStore, tmp_path: Path
) -> None:
    """A summary SR waiting for a PACS that was down, then a cine of the study corrected (same
    UID, new content): the first summary's delivery is called off, never retried, and the
    study was never pruned (every file kept for good, until the disk filled)."""
    first = _received(store, tmp_path, 1, "1.2.3")
    result = _processed(store, tmp_path)
    store.studies.complete(["1.2.3"])
    ((study, _),) = store.studies.awaiting_summary()
    old_summary = tmp_path / "results" / "1.2.3" / "summary-1.dcm"
    old_summary.write_bytes(b"summary")
    assert store.studies.record_summary(
        study, "{}", Output("study-sr", "8.1", old_summary), ["pacs"]
    )  # pending: the PACS is down
    corrected = _received(store, tmp_path, 1, "1.2.3", content="bb")
    assert not [d for d in store.deliveries.due() if d.summary]  # called off
    new_result = _processed(store, tmp_path)
    new_summary = _summarised(store, tmp_path, "1.2.3")
    later = time.time() + 3600
    assert store.studies.prunable(later) == ["1.2.3"]
    assert prune(store, 0, now=later).studies == 1
    for path in (first, corrected, result, new_result, old_summary, new_summary):
        assert not path.exists(), path


def test_a_studys_earlier_summaries_are_those_of_its_series_and_sent_or_waiting(
    store: JobStore, tmp_path: Path
) -> None:
    """The predecessors a new summary names: summaries of the same series (one set of model
    versions; another's sit in another series), and not one called off before it was sent,
    which no PACS holds."""
    _received(store, tmp_path, 1, "1.2.3")
    _processed(store, tmp_path)
    store.studies.complete(["1.2.3"])
    first = Output("study-sr", "8.1", tmp_path / "s1.dcm")
    assert store.studies.record_summary("1.2.3", "{}", first, ["pacs"], "9.1")
    other = Output("study-sr", "8.2", tmp_path / "s2.dcm")
    assert store.studies.record_summary("1.2.3", "{}", other, ["pacs"], "9.2")  # other models
    assert store.studies.summary_uids("1.2.3", "9.1") == ["8.1"]
    _received(store, tmp_path, 1, "1.2.3", content="bb")  # 8.1 and 8.2 called off, unsent
    assert store.studies.summary_uids("1.2.3", "9.1") == []


def test_a_cine_sent_again_under_another_study_leaves_no_file_behind(
    store: JobStore, tmp_path: Path
) -> None:
    """A cine re-sent under the corrected study (a worklist mistake) is filed under the new
    study; its first copy, in the folder of the study it left, was named by nothing and stayed
    for good (a patient's image under the wrong study). It goes with the study it joined."""
    first = _received(store, tmp_path, 1, "1.2.5", content="aa")
    again = _received(store, tmp_path, 1, "1.2.6", content="bb")
    _processed(store, tmp_path)
    _summarised(store, tmp_path, "1.2.6")
    store.studies.complete(["1.2.5"])  # the study it left, summarised again (without it)
    for uid, at in store.studies.awaiting_summary():
        store.studies.summarised(uid, at)
    prune(store, 0, now=time.time() + 10)
    assert not again.exists()
    assert not first.exists()


def test_a_file_retention_cannot_remove_keeps_its_study_and_the_others_go(
    store: JobStore, tmp_path: Path
) -> None:
    """An error other than "not found" (permissions, a read-only mount; here a folder where
    the file was) left prune and stopped the node's study loop, which pruned first again at
    each restart: no study was summarised any more."""
    stuck = _received(store, tmp_path, 1, "1.2.7")
    _processed(store, tmp_path)
    _summarised(store, tmp_path, "1.2.7")
    other = _received(store, tmp_path, 2, "1.2.8")
    _processed(store, tmp_path)
    _summarised(store, tmp_path, "1.2.8")
    stuck.unlink()
    (stuck / "inside").mkdir(parents=True)  # cannot be unlinked as a file
    old = time.time() - 3600
    os.utime(stuck, (old, old))
    done = prune(store, 0, now=time.time() + 10)
    assert done.studies == 1
    assert not other.exists()
    assert stuck.is_dir()  # put back, kept for the next prune


def test_a_cine_sent_back_to_its_first_study_keeps_its_file(
    store: JobStore, tmp_path: Path
) -> None:
    """A -> B -> A: the cine sent back under its first study, byte for byte, is stored at the
    path of its first copy, which B had recorded as a file it left: pruning B removed A's
    current cine."""
    first = _received(store, tmp_path, 1, "1.2.9", content="aa")
    _received(store, tmp_path, 1, "1.3.0", content="bb")
    back = _received(store, tmp_path, 1, "1.2.9", content="aa")
    assert back == first
    store.studies.complete(["1.3.0"])
    for uid, at in store.studies.awaiting_summary():
        store.studies.summarised(uid, at)
    prune(store, 0, now=time.time() + 10)
    assert back.exists()
