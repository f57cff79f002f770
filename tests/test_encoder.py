"""The node's encoding processes (:class:`lus_pacs.pipeline.Encoder`): the result objects they
make are the ones a worker makes in its own thread, and one that dies is replaced."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from lus_pacs import pipeline
from lus_pacs.errors import StageError
from lus_pacs.node import Node
from lus_pacs.pipeline import Encoder, Models, process_file
from lus_pacs.settings import Settings
from tests.node_process import processes_below

VOLATILE = {
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContributionDateTime",
    "PresentationCreationDate",
    "PresentationCreationTime",
    "ICCProfile",
    "DimensionOrganizationUID",
}
"""What differs between two makings of one object: when it was made (the ICC profile holds the
time it was made too), and the SEG's dimension organisation (highdicom draws a new UID for it
each time)."""


@pytest.fixture(scope="module")
def node_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Models]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    return settings, Models.load(settings)


@pytest.fixture
def encoder() -> Iterator[Encoder]:
    encoder = Encoder(2)
    encoder.start()
    try:
        yield encoder
    finally:
        encoder.close()


def _cines(synth_exams: Path) -> list[Path]:
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    return sorted(exam.glob("*.dcm"))


def _content(path: Path) -> dict[str, object]:
    ds = pydicom.dcmread(path)
    found: list[tuple[pydicom.Dataset, str]] = []
    ds.walk(lambda d, e: found.append((d, e.keyword)) if e.keyword in VOLATILE else None)
    for dataset, keyword in found:
        delattr(dataset, keyword)
    return ds.to_json_dict()


def test_the_processes_make_and_write_what_the_worker_makes(
    tmp_path: Path, synth_exams: Path, node_models: tuple[Settings, Models], encoder: Encoder
) -> None:
    settings, models = node_models
    cine = _cines(synth_exams)[0]
    alone, files_alone = process_file(cine, models, settings, tmp_path / "thread")
    pooled, files_pooled = process_file(cine, models, settings, tmp_path / "pool", encoder=encoder)

    assert [(o.kind, o.sop_instance_uid) for o in files_pooled] == [
        (o.kind, o.sop_instance_uid) for o in files_alone
    ]
    assert {o.kind for o in files_pooled} >= {"sr", "kos", "seg", "pr"}
    for made_alone, made_pooled in zip(files_alone, files_pooled, strict=True):
        assert made_pooled.path.parent == tmp_path / "pool"
        assert _content(made_pooled.path) == _content(made_alone.path), made_pooled.kind
    records = [json.loads(r.dumps()) for r in (alone, pooled)]
    for record in records:
        del record["timings_ms"]
        for output in record["outputs"]:
            output.pop("path", None)
    assert records[0] == records[1]
    assert pooled.timings_ms["encode"] > 0
    assert encoder.pids
    assert os.getpid() not in encoder.pids
    assert encoder.peak_bytes > 50e6


def _gone(pids: set[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_process_that_died_is_replaced_and_the_next_cine_is_encoded(
    tmp_path: Path, synth_exams: Path, node_models: tuple[Settings, Models], encoder: Encoder
) -> None:
    settings, models = node_models
    first, second = _cines(synth_exams)[:2]
    process_file(first, models, settings, tmp_path, encoder=encoder)
    for pid in encoder.pids:  # as the out-of-memory killer would
        os.kill(pid, signal.SIGKILL)
    assert _gone(set(encoder.pids), 10), "the killed processes are still there"
    record, outputs = process_file(second, models, settings, tmp_path, encoder=encoder)
    assert {o.kind for o in outputs} >= {"sr", "kos"}
    assert all(o.path.exists() for o in outputs)
    assert not record.outputs_failed
    assert len(encoder.pids) > 2  # new processes answered


class _KillsItsReader:
    """Unpickled in an encoding process, it ends that process: a cine whose encoding kills
    the process every time (or an out-of-memory killer that always picks it)."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return os._exit, (9,)


class _HoldsItsReader:
    """Unpickled in an encoding process, it holds that process for ten minutes: a cine whose
    encoding never ends."""

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return time.sleep, (600.0,)


@pytest.mark.parametrize(
    ("poison", "reason"),
    [(_KillsItsReader(), "died 3 times"), (_HoldsItsReader(), "not made within 3 s")],
    ids=["kills-its-process", "never-ends"],
)
def test_a_cine_whose_encoding_kills_or_holds_its_process_fails_and_the_next_is_encoded(
    tmp_path: Path,
    synth_exams: Path,
    node_models: tuple[Settings, Models],
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
    poison: object,
    reason: str,
) -> None:
    settings, models = node_models
    first, second = _cines(synth_exams)[:2]
    read_header = pipeline.read_header

    def poisoned(path: Path, *limit: int) -> tuple[pydicom.Dataset, object]:
        header, in_file = read_header(path, *limit)
        header._poison = poison  # pickled with the header, it acts when unpickled
        return header, in_file

    monkeypatch.setattr(pipeline, "read_header", poisoned)
    encoder.encode_s = 3.0
    before = set(encoder.pids)
    started = time.monotonic()
    with pytest.raises(StageError) as failed:
        process_file(first, models, settings, tmp_path, encoder=encoder)
    assert time.monotonic() - started < 60  # the analysis, then seconds: not ten minutes
    assert failed.value.stage == "encode"
    assert reason in failed.value.reason
    assert _gone(before, 10), "the processes it ended or held are still there"
    monkeypatch.undo()
    encoder.encode_s = Encoder.ENCODE_S
    record, outputs = process_file(second, models, settings, tmp_path, encoder=encoder)
    assert {o.kind for o in outputs} >= {"sr", "kos"}
    assert not record.outputs_failed
    assert set(encoder.pids) - before  # new processes answered


def test_closing_kills_a_process_that_does_not_finish() -> None:
    encoder = Encoder(1)
    encoder.start()
    encoder.CLOSE_S = 1.0
    busy = set(encoder.pids)
    future, _, _ = encoder._submit(time.sleep, 600.0)
    deadline = time.monotonic() + 10
    while not future.running():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.05)
    started = time.monotonic()
    encoder.close()
    assert time.monotonic() - started < 8
    assert _gone(busy, 5), "the busy process is still there"
    assert future.exception(timeout=10) is not None


def test_writing_and_stopping_fail_as_the_disk_does_not_as_the_cine(
    tmp_path: Path, synth_exams: Path, node_models: tuple[Settings, Models], encoder: Encoder
) -> None:
    settings, models = node_models
    cine = _cines(synth_exams)[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StageError) as unwritable:  # its results folder cannot be made
        process_file(cine, models, settings, blocker / "results", encoder=encoder)
    assert unwritable.value.stage == "write"
    encoder.close()
    with pytest.raises(StageError) as stopping:  # the node stops while a worker analyses
        process_file(cine, models, settings, tmp_path, encoder=encoder)
    assert stopping.value.stage == "write"
    assert "stopping" in stopping.value.reason


def _times_out_writing(*args: object) -> object:
    """In an encoding process, as a results folder on a network share that stops answering."""
    raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT), "results/sr.dcm")


def test_a_share_that_times_out_fails_the_write_not_the_cine_and_keeps_the_processes(
    tmp_path: Path,
    synth_exams: Path,
    node_models: tuple[Settings, Models],
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OSError(ETIMEDOUT) is a TimeoutError, the type the wait for the processes raises too
    settings, models = node_models
    cine = _cines(synth_exams)[0]
    before = set(encoder.pids)
    monkeypatch.setattr(pipeline, "encode_and_write", _times_out_writing)  # by name, in them
    with pytest.raises(StageError) as failed:
        process_file(cine, models, settings, tmp_path, encoder=encoder)
    assert failed.value.stage == "write"  # queued again, as after a full disk
    assert "timed out" in failed.value.reason
    monkeypatch.undo()
    process_file(cine, models, settings, tmp_path, encoder=encoder)
    assert set(encoder.pids) == before  # none killed or replaced


def test_a_cine_whose_process_close_kills_waits_in_the_queue_on_its_last_attempt(
    tmp_path: Path,
    synth_exams: Path,
    node_models: tuple[Settings, Models],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, models = node_models
    read_header = pipeline.read_header

    def holding(path: Path, *limit: int) -> tuple[pydicom.Dataset, object]:
        header, in_file = read_header(path, *limit)
        header._poison = _HoldsItsReader()
        return header, in_file

    monkeypatch.setattr(pipeline, "read_header", holding)
    encoder = Encoder(1)
    encoder.start()
    encoder.ATTEMPTS = 1  # its earlier processes died: this is its last attempt
    encoder.CLOSE_S = 0.5
    failures: list[BaseException] = []

    def work() -> None:
        try:
            process_file(_cines(synth_exams)[0], models, settings, tmp_path, encoder=encoder)
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 60
    while not encoder._pool._pending_work_items:  # the analysis is done, the cine is given
        assert worker.is_alive(), failures
        assert time.monotonic() < deadline, "the cine was never given to the processes"
        time.sleep(0.05)
    encoder.close()
    worker.join(30)
    assert not worker.is_alive()
    (failed,) = failures
    assert isinstance(failed, StageError)
    assert (failed.stage, failed.reason) == ("write", "the node is stopping")


def _never_ready(pause_s: float) -> tuple[int, int]:
    """In an encoding process, as one stuck in its start."""
    time.sleep(600.0)
    return os.getpid(), 0


def test_a_node_whose_encoding_processes_do_not_start_ends_them_and_works_without(
    tmp_path: Path, node_models: tuple[Settings, Models], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, models = node_models
    stuck: list[int] = []
    start = Encoder.start

    def starting(encoder: Encoder) -> None:
        try:
            start(encoder)
        finally:
            stuck.extend(p.pid for p in pipeline.pool_processes(encoder._pool) if p.pid)

    monkeypatch.setattr(pipeline, "encoder_ready", _never_ready)  # by name, in them
    monkeypatch.setattr(Encoder, "start", starting)
    monkeypatch.setattr(Encoder, "START_S", 2.0)
    monkeypatch.setattr(Encoder, "CLOSE_S", 0.5)
    node = Node(Settings(data_dir=tmp_path, port=0, metrics_port=None, encoders=2), models)
    node.start()
    try:
        assert len(stuck) == 2
        assert node._encoder is None  # the workers make the result objects themselves
        assert _gone(set(stuck), 10), "the processes stuck in their start are still there"
        healthy, checks = node.health()
        assert healthy, checks
    finally:
        node.stop()


START_AND_WAIT = """
import sys, time
from lus_pacs.pipeline import Encoder
if __name__ == "__main__":
    encoder = Encoder(2)
    encoder.start()
    print(*encoder.pids, flush=True)
    time.sleep(600)
"""


def test_the_processes_end_when_the_node_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(START_AND_WAIT)
    node = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert node.stdout is not None
        pids = {int(p) for p in node.stdout.readline().split()}
        assert len(pids) == 2
        started = set(processes_below(node.pid))  # the encoding processes, their server and tracker
        assert pids <= started
    finally:
        node.kill()
        node.wait()
    deadline = time.monotonic() + 10
    while left := {p for p in started if Path(f"/proc/{p}").exists()}:
        assert time.monotonic() < deadline, f"still running after the node was killed: {left}"
        time.sleep(0.1)
