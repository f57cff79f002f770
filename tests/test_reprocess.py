"""``lus-pacs reprocess`` against real archives on loopback: a folder, Orthanc by C-FIND/C-MOVE
and by DICOMweb, sending back to Orthanc; interrupted and resumed; local and Ray engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from lus_pacs.domain import OutputKind
from lus_pacs.errors import ArchiveError, LusPacsError, StageError, UnreadableImageError
from lus_pacs.ingest.archive import ArchiveStudy
from lus_pacs.ingest.archive.folder import FolderSource
from lus_pacs.pipeline import Models, process_bytes
from lus_pacs.queue.manifest import Manifest
from lus_pacs.reprocess.engine import Outcome, WorkItem
from lus_pacs.reprocess.run import Run, RunCounts
from lus_pacs.settings import DicomDestination, Settings
from tests.node_process import lus_pacs, wait_for
from tests.orthanc import OrthancHandle, free_ports, running_orthanc

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None, reason="Orthanc not installed (make install adds it)"
)

MODELS = "b_lines,severity"
"""Segmentation's Monte-Carlo dropout costs seconds a frame: these runs compare records."""
MOVE_AE = "LUSPACS"
CINES = 7
"""One simulated exam of six zones and pydicom's real cine: every engine and source, few cines."""


@pytest.fixture(scope="module")
def archive(synth_exams: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first simulated exam and pydicom's real 120-frame cine, as one folder."""
    folder = tmp_path_factory.mktemp("archive")
    first = sorted(synth_exams.glob("SIM-*"))[0]
    shutil.copytree(first, folder / "synth" / first.name, ignore=shutil.ignore_patterns("*.json"))
    real = Path(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    (folder / "real").mkdir()
    shutil.copy(real, folder / "real" / real.name)
    return folder


@pytest.fixture(scope="module")
def offline(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What ``lus-pacs process`` makes of the same files: the reference records."""
    out = tmp_path_factory.mktemp("offline")
    config = out / "lus-pacs.toml"
    config.write_text(f"models = {json.dumps(MODELS.split(','))}\n")
    result = lus_pacs("process", str(archive), "--out", str(out), "--config", str(config))
    assert result.returncode == 0, result.stderr
    return _records(out / "summary.jsonl")


@pytest.fixture(scope="module")
def move_port() -> int:
    (port,) = free_ports(1)
    return port


@pytest.fixture(scope="module")
def orthanc(
    archive: Path, move_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrthancHandle]:
    """Orthanc holding the archive, knowing us as a C-MOVE destination."""
    folder = tmp_path_factory.mktemp("pacs")
    with running_orthanc(
        folder, modalities={"lus-pacs": (MOVE_AE, "127.0.0.1", move_port)}
    ) as pacs:
        for path in sorted(archive.rglob("*.dcm")):
            pacs.upload(path)
        yield pacs


class LocalRun(NamedTuple):
    out: Path
    result: subprocess.CompletedProcess[str]


def _records(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record.pop("timings_ms", None)
    return sorted(records, key=lambda r: r["source"]["sop_instance_uid"])


def _reprocess(source: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return lus_pacs(
        "reprocess", source, "--out", str(out), "--models", MODELS, "--no-progress", *args
    )


@pytest.fixture(scope="module")
def local_run(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    """``reprocess`` of the archive folder by the local engine with two workers."""
    out = tmp_path_factory.mktemp("local") / "out"
    return LocalRun(out, _reprocess(str(archive), out, "--engine", "local", "--workers", "2"))


def test_a_folder_gives_the_records_of_process(
    local_run: LocalRun, offline: list[dict[str, Any]]
) -> None:
    out, result = local_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert _records(out / "summary.jsonl") == offline
    studies = [json.loads(x) for x in (out / "studies.jsonl").read_text().splitlines()]
    assert len(studies) == 2
    exams = sorted((out / "exams").glob("*.csv"))
    assert len(exams) == 2
    rows = [line.split(",") for line in exams[0].read_text().splitlines()]
    assert rows[0] == ["zone", "cines", "lus_score", "b_lines", "consolidation"]
    assert rows[-1][0] == "total"
    assert (out / "report.png").stat().st_size > 10_000
    assert "cines/min" in result.stdout
    assert f"{CINES} processed" in result.stdout


def test_pacs_by_c_find_and_c_move_gives_the_records_of_process(
    orthanc: OrthancHandle, offline: list[dict[str, Any]], move_port: int, tmp_path: Path
) -> None:
    source = f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    result = _reprocess(
        source,
        tmp_path / "out",
        "--retrieve",
        "move",
        "--move-port",
        str(move_port),
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _records(tmp_path / "out" / "summary.jsonl") == offline
    assert not list((tmp_path / "out" / "fetched").rglob("*.dcm"))  # cleaned up when done


def test_dicomweb_gives_the_records_of_process_and_sending_lands_in_the_studies(
    orthanc: OrthancHandle, offline: list[dict[str, Any]], tmp_path: Path
) -> None:
    before = orthanc.count()
    destination = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    result = _reprocess(
        f"{orthanc.url}/dicom-web", tmp_path / "out", "--send", destination, "--workers", "2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = _records(tmp_path / "out" / "summary.jsonl")
    assert records == offline
    outputs = sum(len(r["outputs"]) for r in records)
    studies = len({r["source"]["study_instance_uid"] for r in records})
    wait_for(lambda: orthanc.count() >= before + outputs + studies, 60, "the results in Orthanc")
    stored = {str(ds.SOPInstanceUID): ds for ds in orthanc.datasets()}
    for record in records:
        for output in record["outputs"]:
            ds = stored[output["sop_instance_uid"]]
            assert ds.StudyInstanceUID == record["source"]["study_instance_uid"]
            assert ds.PatientID == record["source"]["patient_id"]
    # Run again: everything is done and sent, nothing is made or sent twice.
    again = _reprocess(
        f"{orthanc.url}/dicom-web", tmp_path / "out", "--send", destination, "--workers", "2"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"0 processed, {CINES} already done" in again.stdout
    assert orthanc.count() == before + outputs + studies


def _done(manifest: Path) -> int:
    """Cines done so far; 0 before the run has made its manifest (the file appears a moment
    before its table: a poll in between found "no such table" once)."""
    if not manifest.exists():
        return 0
    with sqlite3.connect(manifest) as db:
        try:
            row = db.execute("SELECT COUNT(*) FROM items WHERE state = 'done'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        return int(row[0])


def test_an_interrupted_run_resumes_without_redoing_what_was_done(
    archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("lus-pacs")
    command = [
        str(exe),
        "reprocess",
        str(archive),
        "--out",
        str(out),
        "--models",
        MODELS,
        "--no-progress",
        "--workers",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _done(out / "manifest.sqlite") >= 2, 180, "two cines done")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err
    finished = _done(out / "manifest.sqlite")
    assert 2 <= finished < CINES

    result = _reprocess(str(archive), out, "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CINES - finished} processed, {finished} already done" in result.stdout
    assert len(_records(out / "summary.jsonl")) == CINES


def test_ray_with_two_workers_gives_the_summary_of_the_local_engine(
    archive: Path, local_run: LocalRun, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    local, result = local_run
    assert result.returncode == 0, result.stdout + result.stderr
    ray = _reprocess(str(archive), tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert ray.returncode == 0, ray.stdout + ray.stderr
    for name in ("summary.jsonl", "studies.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (local / name).read_text()


class _InProcess:
    """The engine's protocol in this process, one cine after another, with the node's stage
    function: these tests are about the run's bookkeeping, which both engines share."""

    workers = 1

    def __init__(self, settings: Settings, models: Models) -> None:
        self.settings, self.models = settings, models

    def start(self) -> None:
        pass

    def run(self, items: Iterable[WorkItem]) -> Iterator[Outcome]:
        for item in items:
            try:
                record, files = process_bytes(
                    item.path.read_bytes(), item.path.name, self.models, self.settings
                )
            except LusPacsError as exc:
                yield Outcome(item, None, [], str(exc))
            else:
                yield Outcome(item, record, files, None)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def models() -> Models:
    """The bundles of these runs, loaded once for the in-process engine."""
    return Models.load(Settings(models=tuple(MODELS.split(","))))


class _Unavailable(FolderSource):
    """The folder, except that fetching one study fails as an archive's HTTP 500 would."""

    def __init__(self, path: Path, study: str) -> None:
        super().__init__(path)
        self.study = study

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        if study.study_instance_uid == self.study:  # after some of its files came
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part.dcm").write_bytes(b"a patient's pixels")
            raise ArchiveError(self.name, "HTTP 500 Internal Server Error", study=self.study)
        return super().fetch(study, folder)


def test_a_study_that_cannot_be_fetched_is_named_and_the_run_goes_on(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """Before: the run ended at that study, every time it was run again."""
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    synth = dcmread(next(archive.glob("synth/*/*.dcm")), stop_before_pixels=True)
    out = tmp_path / "out"
    engine = _InProcess(settings, models)
    first = Run(
        settings, _Unavailable(archive, synth.StudyInstanceUID), out, engine, "k", progress=False
    ).execute()
    assert (first.studies, first.problems, first.processed) == (2, 1, CINES - 6)
    failures = dict(Manifest(out / "manifest.sqlite").failures("k"))
    assert "HTTP 500" in failures[f"study {synth.StudyInstanceUID}"]
    assert not (out / "fetched" / synth.StudyInstanceUID).exists()  # no patient's file left
    # The archive is back: the study is done, and no longer listed as a failure.
    again = Run(settings, FolderSource(archive), out, engine, "k", progress=False).execute()
    assert (again.problems, again.processed, again.skipped) == (0, 6, CINES - 6)
    assert again.failures == []


class _Damaging(FolderSource):
    """The folder, fetched as the network sources fetch (copies under the study's folder),
    with one file damaged on the way: its SOP Instance UID's VR made one pydicom does not know,
    so that reading the UID raises."""

    def __init__(self, path: Path, damaged: Path) -> None:
        super().__init__(path)
        self.damaged = damaged

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        copies = []
        for path in super().fetch(study, folder):
            data = bytearray(path.read_bytes())
            if path == self.damaged:
                at = data.find(bytes.fromhex("08001800"), 132 + 200)  # (0008,0018)
                data[at + 4 : at + 6] = b"ZZ"
            copies.append(folder / path.name)
            copies[-1].write_bytes(bytes(data))
        return copies


def test_a_fetched_file_that_cannot_be_read_is_named_and_its_study_goes_on(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """Before: the run ended at that file, every time it was run again."""
    damaged = sorted(archive.glob("synth/*/*.dcm"))[0]
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    source = _Damaging(archive, damaged)
    out = tmp_path / "out"
    done = Run(settings, source, out, _InProcess(settings, models), "k", progress=False).execute()
    assert (done.problems, done.processed) == (1, CINES - 1)
    ((subject, reason),) = done.failures
    assert subject.endswith(f"/{damaged.name}")
    assert "not readable as DICOM" in reason
    # The study is not finished while a file of it is unread: the next run fetches it again.
    again = Run(
        settings, FolderSource(archive), out, _InProcess(settings, models), "k", progress=False
    )
    redone = again.execute()
    assert (redone.problems, redone.processed, redone.failures) == (0, 1, [])


class _DamagingArchive(_Damaging):
    """The same, listing no instances as a PACS or DICOMweb archive (asked per study only
    when it is fetched)."""

    def listed_instances(self, study: ArchiveStudy) -> frozenset[str] | None:
        return None


def test_an_unreadable_file_is_not_forgotten_by_a_run_interrupted_while_reading_headers(
    archive: Path, tmp_path: Path, models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its study's problems were dropped before its headers were read again: Ctrl-C between
    the two left the study finished, its unreadable file forgotten by every later run."""
    damaged = sorted(archive.glob("synth/*/*.dcm"))[0]
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    source, out = _DamagingArchive(archive, damaged), tmp_path / "out"

    def run() -> RunCounts:
        return Run(
            settings, source, out, _InProcess(settings, models), "k", progress=False
        ).execute()

    assert run().problems == 1

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Run, "_header", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run()
    after = run()
    assert after.problems == 1
    ((subject, _),) = after.failures
    assert subject.endswith(f"/{damaged.name}")


def _items(paths: Iterable[Path], first: int | None = None) -> list[WorkItem]:
    """Work items of the ``first`` of ``paths`` in order (all by default), of one study."""
    chosen = sorted(paths)[:first]
    return [
        WorkItem(dcmread(p, stop_before_pixels=True).SOPInstanceUID, "study", p) for p in chosen
    ]


def _cpu_seconds(pid: int) -> float:
    """The processor time ``pid`` has used (Linux: utime and stime of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _when_busy(pid: int, sent: signal.Signals, cpu_s: float = 0.3) -> threading.Thread:
    """A thread that sends ``sent`` to ``pid`` once it has used ``cpu_s`` of processor time
    more than now: a worker then is mid-cine, past its report of the start (a second of
    processor time here). A fixed delay could land before that report on a loaded machine."""
    baseline = _cpu_seconds(pid)

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _cpu_seconds(pid) - baseline < cpu_s:
            time.sleep(0.01)
        os.kill(pid, sent)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _signalled_run(
    settings: Settings, items: list[WorkItem], sent: signal.Signals
) -> tuple[list[Any], int]:
    """A local run of one worker that gets ``sent`` once it is busy on its first cine
    (SIGKILL: the out-of-memory killer; SIGSTOP: a cine that never returns): the outcomes
    and its pid."""
    from lus_pacs.reprocess.engine import LocalEngine, _worker_pid

    engine = LocalEngine(settings, 1)
    try:
        engine.start()
        pid = engine._pool.submit(_worker_pid, 0.0).result()
        sender = _when_busy(pid, sent)
        outcomes = list(engine.run(items))
        sender.join(5)
    finally:
        engine.close()
    return outcomes, pid


def test_a_worker_that_dies_fails_the_cines_in_flight_and_the_run_goes_on(
    archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel's out-of-memory killer, as a SIGKILL to the pool's one worker: before, the
    broken pool ended the run, and every run again at the same cine."""
    import logging

    items = _items(archive.rglob("*.dcm"))
    with caplog.at_level(logging.WARNING, logger="lus_pacs.reprocess.engine"):
        outcomes, _ = _signalled_run(
            Settings(models=tuple(MODELS.split(","))), items, signal.SIGKILL
        )
    assert sorted(o.item.sop_instance_uid for o in outcomes) == sorted(
        i.sop_instance_uid for i in items
    )
    # The cine in the worker and the one queued for it failed with it; both are tried again
    # alone, by a new pool, and made (the kill was once: neither cine caused it).
    assert 1 <= caplog.text.count("tried again alone") <= 2, caplog.text
    assert all(o.record is not None for o in outcomes), [o.error for o in outcomes]


def test_a_worker_that_hangs_on_a_cine_is_stopped_past_max_cine_s(archive: Path) -> None:
    """A worker that never returns (here stopped by SIGSTOP mid-cine, as a decoder caught in a
    loop): before, the run waited for it for good. Past ``max_cine_s`` its process is killed,
    its cine fails with the limit named, and the cine queued beside it is made by a new pool."""
    from lus_pacs.reprocess.engine import overdue

    settings = Settings(models=tuple(MODELS.split(",")), max_cine_s=8)
    items = _items(archive.glob("synth/*/*.dcm"), 4)
    outcomes, pid = _signalled_run(settings, items, signal.SIGSTOP)
    errors = {o.item.sop_instance_uid: o.error for o in outcomes}
    assert set(errors) == {i.sop_instance_uid for i in items}
    # The cine it hung on (the first: each takes about a second here) fails, named; the
    # others are made.
    assert errors.pop(items[0].sop_instance_uid) == overdue(8)
    assert set(errors.values()) == {None}, errors
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the hung process is gone


def test_a_worker_stuck_before_it_takes_a_cine_stalls_nothing_for_good(
    archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker stopped before it reported which cine it took (here stopped while idle):
    no cine of it was ever timed, and the run waited for good. Past ``max_cine_s`` with no
    start and no answer the pool is stalled: its processes are killed, its cines fail with it
    and are tried again alone, by a new pool, and made."""
    import logging

    from lus_pacs.reprocess.engine import LocalEngine, _worker_pid

    items = _items(archive.glob("synth/*/*.dcm"), 2)
    engine = LocalEngine(Settings(models=tuple(MODELS.split(",")), max_cine_s=4), 1)
    try:
        engine.start()
        pid = engine._pool.submit(_worker_pid, 0.0).result()
        os.kill(pid, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="lus_pacs.reprocess.engine"):
            outcomes = list(engine.run(items))
    finally:
        engine.close()
    assert "No worker started or finished a cine" in caplog.text
    assert sorted(o.item.sop_instance_uid for o in outcomes) == sorted(
        i.sop_instance_uid for i in items
    )
    assert all(o.record is not None for o in outcomes), [o.error for o in outcomes]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_closing_the_local_engine_ends_a_worker_that_does_not(
    archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's own shutdown waited for a worker that never ends (stopped, or on a cine
    that never returns): a run interrupted then, or a test past its limit, hung in close."""
    from lus_pacs.reprocess import engine as engine_module

    monkeypatch.setattr(engine_module, "CLOSE_S", 1.0)
    engine = engine_module.LocalEngine(Settings(models=("b_lines",)), 1)
    engine.start()
    pid = engine._pool.submit(engine_module._worker_pid, 0.0).result()
    os.kill(pid, signal.SIGSTOP)
    engine._pool.submit(engine_module._worker_pid, 0.0)  # taken by no one
    closing = threading.Thread(target=engine.close, daemon=True)
    closing.start()
    closing.join(30)
    assert not closing.is_alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_ray_worker_that_hangs_on_a_cine_is_stopped_past_max_cine_s(archive: Path) -> None:
    """As the local engine: an actor stopped mid-cine is killed past ``max_cine_s``, its cine
    fails with the limit named, another actor takes its place and makes the others."""
    ray = pytest.importorskip("ray")
    from lus_pacs.reprocess.engine import RayEngine, overdue

    items = _items(archive.glob("synth/*/*.dcm"), 3)
    engine = RayEngine(Settings(models=tuple(MODELS.split(",")), max_cine_s=8), 1)
    try:
        engine.start()
        pid = ray.get(engine._actors[0].ready.remote())
        stopper = threading.Timer(0.5, os.kill, (pid, signal.SIGSTOP))
        stopper.start()
        outcomes = list(engine.run(items))
        stopper.join()
    finally:
        engine.close()
        ray.shutdown()
    errors = {o.item.sop_instance_uid: o.error for o in outcomes}
    assert set(errors) == {i.sop_instance_uid for i in items}
    assert errors.pop(items[0].sop_instance_uid) == overdue(8)
    assert set(errors.values()) == {None}, errors


class _Colliding(FolderSource):
    """The folder, fetched as copies, one file's copy given the SOP Instance UID of an instance
    of another study (as after a careless study merge in an archive)."""

    def __init__(self, path: Path, collider: Path, taken: str) -> None:
        super().__init__(path)
        self.collider, self.taken = collider, taken

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        copies = []
        for path in super().fetch(study, folder):
            ds = dcmread(path)
            if path == self.collider:
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(self.taken)
            copies.append(folder / path.name)
            ds.save_as(copies[-1])
        return copies


def test_an_instance_uid_of_two_studies_is_named_and_processed_in_one(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """Records, results and the manifest are keyed by the SOP Instance UID: a second study's
    instance under it would be filed in the first study, or processed again at every run."""
    real = next(archive.glob("real/*.dcm"))
    collider = sorted(archive.glob("synth/*/*.dcm"))[0]
    assert dcmread(real).StudyDate < dcmread(collider).StudyDate  # the real study comes first
    taken = str(dcmread(real, stop_before_pixels=True).SOPInstanceUID)
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    source = _Colliding(archive, collider, taken)
    out = tmp_path / "out"
    done = Run(settings, source, out, _InProcess(settings, models), "k", progress=False).execute()
    assert (done.problems, done.processed) == (1, CINES - 1)
    ((subject, reason),) = done.failures
    assert subject.endswith(f"/{collider.name}")
    assert f"instance {taken} is also one of study" in reason
    again = Run(settings, source, out, _InProcess(settings, models), "k", progress=False).execute()
    assert (again.processed, again.skipped) == (0, CINES - 1)  # nothing done twice


def test_a_cine_over_the_byte_limit_is_failed_unread_and_the_run_goes_on(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """The engines read each cine whole into memory: one over ``max_instance_bytes`` is failed
    with the limit named before it is read, as the node refuses it; the summary of its study
    names it (before, the exam was scored on its other cines without a word)."""
    real = next(archive.glob("real/*.dcm"))
    largest = max(archive.glob("synth/*/*.dcm"), key=lambda p: p.stat().st_size)
    limit = largest.stat().st_size - 1  # the real cine (larger) and the largest simulated one
    assert sum(p.stat().st_size > limit for p in archive.glob("synth/*/*.dcm")) == 1
    assert real.stat().st_size > limit
    settings = Settings(
        models=tuple(MODELS.split(",")), data_dir=tmp_path / "data", max_instance_bytes=limit
    )
    engine = _InProcess(settings, models)
    run = Run(settings, FolderSource(archive), tmp_path / "out", engine, "k", progress=False)
    done = run.execute()
    assert (done.failed, done.processed) == (2, CINES - 2)
    failed = dict(done.failures)
    uids = {p: dcmread(p, stop_before_pixels=True) for p in (real, largest)}
    assert set(failed) == {str(h.SOPInstanceUID) for h in uids.values()}
    assert all(f"over the limit of {limit} (max_instance_bytes)" in r for r in failed.values())
    studies = [json.loads(x) for x in (tmp_path / "out" / "studies.jsonl").read_text().splitlines()]
    (exam,) = [s for s in studies if s["study_instance_uid"] == uids[largest].StudyInstanceUID]
    assert list(exam["failed_cines"]) == [uids[largest].SOPInstanceUID]
    with pytest.raises(StageError, match="max_instance_bytes"):  # the engines' own check
        process_bytes(real.read_bytes(), real.name, engine.models, settings)
    # A cine cut short inside its Pixel Data (pydicom reads it as an empty data set) is named
    # so, as the node names it; it read "SOPInstanceUID, StudyInstanceUID ... missing".
    whole = largest.read_bytes()
    with pytest.raises(UnreadableImageError, match="cut short"):
        process_bytes(whole[: len(whole) * 2 // 3], largest.name, engine.models, settings)
    # A failure a new run would meet again is final: its study is not fetched and summarised
    # again (and its summary SR sent again) at every run, unless asked.
    again = Run(settings, FolderSource(archive), tmp_path / "out", engine, "k", progress=False)
    done = again.execute()
    assert (done.failed, done.processed, done.studies_skipped) == (0, 0, 2)
    # Counted as failed before, not as done (the report read "7 already done, 0 failed").
    assert (done.skipped, done.failed_before) == (CINES - 2, 2)
    assert set(dict(done.failures)) == set(failed)  # still named
    retried = Run(
        settings,
        FolderSource(archive),
        tmp_path / "out",
        engine,
        "k",
        progress=False,
        retry_failed=True,
    ).execute()
    assert (retried.failed, retried.processed) == (2, 0)


def test_a_ray_worker_that_dies_fails_its_cines_and_another_takes_its_place(
    archive: Path,
) -> None:
    """An actor killed mid-run (the out-of-memory killer, a lost node): before, Ray's error
    ended the run, at the same cine every time."""
    ray = pytest.importorskip("ray")
    from lus_pacs.reprocess.engine import RayEngine

    items = _items(archive.glob("synth/*/*.dcm"))
    engine = RayEngine(Settings(models=tuple(MODELS.split(","))), 1)
    try:
        engine.start()
        first = engine._actors[0]
        killer = threading.Timer(0.5, ray.kill, (first,), {"no_restart": True})
        killer.start()
        outcomes = list(engine.run(items))
        killer.join()
        assert engine._actors[0] is not first
    finally:
        engine.close()
        ray.shutdown()
    assert sorted(o.item.sop_instance_uid for o in outcomes) == sorted(
        i.sop_instance_uid for i in items
    )
    # The cine the actor ran and the one waiting on it failed with it (WORKER_DIED); both are
    # tried again alone by its successor, and made (the kill was once: neither caused it).
    assert all(o.record is not None for o in outcomes), [o.error for o in outcomes]


def test_ray_workers_a_cluster_cannot_place_are_given_up_and_the_run_goes_on(
    archive: Path,
) -> None:
    """A cluster with fewer free CPUs than --workers (its default is the driver's cores):
    the actors never placed got cines whose answers never came, and the run waited for good.
    Here Ray has one CPU for two workers."""
    ray = pytest.importorskip("ray")
    from lus_pacs.reprocess.engine import RayEngine

    items = _items(archive.glob("synth/*/*.dcm"), 2)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    engine = RayEngine(Settings(models=("b_lines",)), 2)
    try:
        engine.start(timeout=30)  # the placed one has loaded its models well before
        assert (engine.workers, len(engine._actors)) == (1, 1)
        outcomes = list(engine.run(items))
    finally:
        engine.close()
        ray.shutdown()
    assert all(o.record is not None for o in outcomes)
    assert len(outcomes) == len(items)


def _folder_runs(folder: Path, tmp_path: Path, models: Models) -> Callable[[], RunCounts]:
    """Runs of the folder by an in-process engine, each resuming the one before (one out)."""
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    out = tmp_path / "out"

    def run() -> RunCounts:
        engine = _InProcess(settings, models)
        return Run(settings, FolderSource(folder), out, engine, "k", progress=False).execute()

    return run


def test_a_damaged_file_in_a_folder_is_a_problem_of_the_run_until_it_is_gone(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """Its study is unknown, so before it was a log line only: not in the report's failures
    nor counted, and the run looked whole."""
    folder = tmp_path / "archive"
    folder.mkdir()
    cine = sorted(archive.glob("synth/*/*.dcm"))[0]
    shutil.copy(cine, folder / cine.name)
    data = bytearray(cine.read_bytes())
    at = data.find(bytes.fromhex("08001800"), 132 + 200)  # (0008,0018) in the data set
    data[at + 4 : at + 6] = b"ZZ"
    (folder / "damaged.dcm").write_bytes(bytes(data))
    run = _folder_runs(folder, tmp_path, models)

    done = run()
    assert (done.processed, done.problems) == (1, 1)
    ((subject, reason),) = done.failures
    assert subject == str(folder / "damaged.dcm")
    assert reason.startswith("skipped: not readable as DICOM")
    (folder / "damaged.dcm").unlink()
    again = run()
    assert (again.processed, again.problems, again.failures) == (0, 0, [])


def test_a_cine_added_to_a_finished_study_is_made_and_the_study_summarised_again(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """A research team re-running a folder after more of an exam was exported: a study done
    in an earlier run was skipped whole, so its new cines were never made, and its summary
    counted the old cines only."""
    folder = tmp_path / "archive"
    folder.mkdir()
    first, second = sorted(archive.glob("synth/*/*.dcm"))[:2]
    shutil.copy(first, folder / first.name)
    run = _folder_runs(folder, tmp_path, models)

    done = run()
    assert (done.processed, done.studies_skipped) == (1, 0)
    skipped = run()
    assert (skipped.processed, skipped.studies_skipped) == (0, 1)  # finished: skipped whole
    shutil.copy(second, folder / second.name)
    added = run()
    assert (added.processed, added.studies_skipped) == (1, 0)
    (summary,) = [
        json.loads(x) for x in (tmp_path / "out" / "studies.jsonl").read_text().splitlines()
    ]
    assert summary["cines"] == 2
    again = run()
    assert (again.processed, again.studies_skipped) == (0, 1)
    # One taken out again: the summary, summary.jsonl and the exam's CSV kept counting it.
    (folder / first.name).unlink()
    removed = run()
    assert (removed.processed, removed.studies_skipped) == (0, 0)
    (summary,) = [
        json.loads(x) for x in (tmp_path / "out" / "studies.jsonl").read_text().splitlines()
    ]
    assert summary["cines"] == 1
    # Three summaries of the study (one cine, two, one): numbered in the order made, each
    # naming the one before; the one-cine summary after the removal was numbered 1 again,
    # below the stale two-cine one, and named none.
    made = [dcmread(p) for p in (tmp_path / "out" / "results").glob("*/study-sr-*.dcm")]
    assert sorted(int(d.InstanceNumber) for d in made) == [1, 2, 3]
    latest = max(made, key=lambda d: int(d.InstanceNumber))
    (before,) = [d for d in made if int(d.InstanceNumber) == 2]
    predecessor = latest.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == before.SOPInstanceUID
    records = (tmp_path / "out" / "summary.jsonl").read_text().splitlines()
    assert [json.loads(r)["source"]["sop_instance_uid"] for r in records] == [
        str(dcmread(second, stop_before_pixels=True).SOPInstanceUID)
    ]
    assert not (tmp_path / "out" / "fetched").exists() or not any(
        (tmp_path / "out" / "fetched").iterdir()
    )  # a folder's cines are read where they are: no empty folders left per study


def test_a_summary_made_again_the_same_is_not_sent_again(tmp_path: Path) -> None:
    """A study summarised again with nothing changed (an open problem fetches it again at
    every run) had its summary SR, the very same object, sent again each time."""
    from lus_pacs.records import StudySummary

    manifest = Manifest(tmp_path / "manifest.sqlite")
    manifest.record_study("1.2", "k", "folder", [])
    same = StudySummary.of("1.2", [], {"1.2.3": "unreadable"})
    manifest.record_summary("1.2", "k", same)
    manifest.summary_sent("1.2", "k")
    manifest.record_summary("1.2", "k", same)
    assert manifest.summary_is_sent("1.2", "k")
    manifest.record_summary("1.2", "k", StudySummary.of("1.2", [], {"1.2.4": "unreadable"}))
    assert not manifest.summary_is_sent("1.2", "k")


@pytest.mark.parametrize("chosen_by", ["settings", "destination"])
def test_a_run_that_sends_only_study_summaries_skips_a_finished_study(
    archive: Path, orthanc: OrthancHandle, tmp_path: Path, models: Models, chosen_by: str
) -> None:
    """With only the summary SR to send, a cine has no files: it was never noted sent, so its
    study was never finished, and every run fetched it again (from a PACS, the whole study).
    The kinds sent are the settings' or the destination's own (the cine's objects are made,
    and kept in the run's folder, but not sent to it)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    cine = sorted(archive.glob("synth/*/*.dcm"))[0]
    shutil.copy(cine, folder / cine.name)
    only_summary = (OutputKind.STUDY_SR,)
    settings = Settings(
        models=tuple(MODELS.split(",")),
        data_dir=tmp_path / "data",
        output_kinds=only_summary if chosen_by == "settings" else Settings().output_kinds,
    )
    pacs = DicomDestination(
        name="pacs",
        ae_title=orthanc.aet,
        host="127.0.0.1",
        port=orthanc.dicom_port,
        output_kinds=only_summary if chosen_by == "destination" else None,
    )
    before = orthanc.count()

    def run() -> RunCounts:
        engine = _InProcess(settings, models)
        out = tmp_path / "out"
        # A key of its own: the same key's summary is the same instance, held from before.
        key = f"k-{chosen_by}"
        return Run(
            settings, FolderSource(folder), out, engine, key, destination=pacs, progress=False
        ).execute()

    first = run()
    assert (first.processed, first.send_failures) == (1, 0)
    wait_for(lambda: orthanc.count() == before + 1, 30, "the summary SR in Orthanc")
    again = run()
    assert (again.processed, again.studies_skipped, again.skipped) == (0, 1, 1)
    assert orthanc.count() == before + 1


class _Tidying(_InProcess):
    """The in-process engine, with a file of the study removed from the folder while the first
    cine is processed (a colleague tidying the export folder during a long run)."""

    def __init__(self, settings: Settings, models: Models, removed: Path) -> None:
        super().__init__(settings, models)
        self.removed = removed

    def run(self, items: Iterable[WorkItem]) -> Iterator[Outcome]:
        for outcome in super().run(items):
            self.removed.unlink(missing_ok=True)
            yield outcome


def test_a_file_removed_during_the_run_fails_its_cine_and_the_run_goes_on(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """The run ended with FileNotFoundError and a traceback, the study half done."""
    folder = tmp_path / "archive"
    shutil.copytree(sorted((archive / "synth").iterdir())[0], folder)
    uids = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.glob("*.dcm")
    }
    last = max(uids)  # the last of the study to be processed
    removed = uids[last]
    settings = Settings(models=tuple(MODELS.split(",")), data_dir=tmp_path / "data")
    engine = _Tidying(settings, models, removed)
    run = Run(settings, FolderSource(folder), tmp_path / "out", engine, "k", progress=False)
    done = run.execute()
    assert (done.processed, done.failed) == (len(uids) - 1, 1)
    ((uid, reason),) = done.failures
    assert uid == last
    assert reason.startswith(f"cannot read {removed}")
    assert "No such file" in reason


def test_a_cine_that_kills_its_worker_fails_alone_and_those_beside_it_are_made() -> None:
    """The scheduling of both engines: a pool that breaks fails every cine in flight in it
    (WORKER_DIED). Before, all of them failed, and each later run sent them out together
    again to die together again. Now each is tried again alone: the culprit fails for good
    (DIED_ALONE), the others are made. A worker here is a function that dies, as a broken
    pool reports it, whenever the poisonous cine is among those in flight."""
    from lus_pacs.reprocess.engine import DIED_ALONE, WORKER_DIED, _stream

    items = [WorkItem(f"1.2.{i}", "study", Path(f"c{i}.dcm")) for i in range(8)]
    poison = "1.2.3"
    in_flight: list[str] = []
    alongside: list[int] = []
    done: list[tuple[str, Any]] = []

    def submit(item: WorkItem) -> None:
        in_flight.append(item.sop_instance_uid)
        alongside.append(len(in_flight))

    def collect() -> tuple[str, Any]:
        if not done:
            if poison in in_flight:  # the pool breaks: everything in it fails
                done.extend((uid, (None, [], WORKER_DIED)) for uid in in_flight)
            else:
                done.extend((uid, (None, [], None)) for uid in in_flight)
            in_flight.clear()
        return done.pop(0)

    outcomes = {o.item.sop_instance_uid: o.error for o in _stream(items, 4, submit, collect)}
    assert set(outcomes) == {i.sop_instance_uid for i in items}
    assert outcomes.pop(poison) == DIED_ALONE
    assert set(outcomes.values()) == {None}
    assert max(alongside) == 4  # the limit in flight before the death


def test_a_cine_over_the_pixel_budget_is_processed_with_no_other_beside_it() -> None:
    """The node runs a cine larger than ``concurrent_pixels`` alone; a run started as many at
    once as it had workers, whatever their size (two 700-frame cines took 1.5 GB where one
    took 0.9 GB in the review's run), and a server's workers could be killed for memory."""
    from lus_pacs.reprocess.engine import _stream

    sizes = [10, 10, 500, 10, 10, 10, 600, 10]
    items = [WorkItem(f"1.2.{i}", "study", Path(f"c{i}.dcm"), n) for i, n in enumerate(sizes)]
    in_flight: list[WorkItem] = []
    beside_large: list[int] = []

    def submit(item: WorkItem) -> None:
        in_flight.append(item)
        if any(i.pixels > 100 for i in in_flight):
            beside_large.append(len(in_flight))

    def collect() -> tuple[str, Any]:
        return in_flight.pop(0).sop_instance_uid, (None, [], None)

    done = [o.item.sop_instance_uid for o in _stream(items, 4, submit, collect, budget=100)]
    assert sorted(done) == sorted(i.sop_instance_uid for i in items)
    assert beside_large == [1, 1]  # each large one alone when it started, none added after


def test_a_study_summarised_by_an_earlier_release_is_numbered_after_its_summary(
    archive: Path, tmp_path: Path, models: Models
) -> None:
    """A manifest of the earlier release recorded no summary UIDs, and that release numbered a
    summary SR by its count of cines: the next summary of such a study (a cine added) was
    numbered 1, below the stale one, and named none before it."""
    folder = tmp_path / "archive"
    folder.mkdir()
    cines = sorted(sorted((archive / "synth").iterdir())[0].glob("*.dcm"))[:3]
    for cine in cines[:2]:
        shutil.copy(cine, folder / cine.name)
    run = _folder_runs(folder, tmp_path, models)
    assert run().processed == 2
    # As the earlier release left it: no column of summary UIDs, the SR numbered 2 (cines).
    manifest = tmp_path / "out" / "manifest.sqlite"
    with sqlite3.connect(manifest) as db:
        db.execute("ALTER TABLE studies DROP COLUMN summary_uids")
    (old_path,) = (tmp_path / "out" / "results").glob("*/study-sr-*.dcm")
    old = dcmread(old_path)
    old.InstanceNumber = 2
    old.save_as(old_path)
    shutil.copy(cines[2], folder / cines[2].name)
    assert run().processed == 1
    made = {int(d.InstanceNumber): d for d in map(dcmread, old_path.parent.glob("study-sr-*"))}
    assert sorted(made) == [2, 3]
    predecessor = made[3].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
