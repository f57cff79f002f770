"""The node through the faults of a bad day, as a real process with its real neighbours: a
SIGKILL in the middle of an exam, a full file system (a small tmpfs), a PACS that accepts the
connection and never answers."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from lus_pacs.domain import JobState
from lus_pacs.queue.store import JobStore
from tests.node_process import NodeProcess, lus_pacs, storescu, wait_for, write_config
from tests.orthanc import OrthancHandle, free_ports, running_orthanc

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("Orthanc") is None,
    reason="dcmtk or Orthanc not installed (make install adds them)",
)

MODELS = ["b_lines", "severity"]
KINDS = ["sr", "kos"]
"""Two objects per cine; the models that make them cost a second or two a cine."""
SUMMARY_SERIES = 906


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancHandle]:
    with running_orthanc(tmp_path) as handle:
        yield handle


@pytest.fixture(scope="module")
def exam(synth_exams: Path) -> list[Path]:
    """Three zones of one simulated exam."""
    folder = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    return sorted(folder.glob("*.dcm"))[:3]


def _summaries(orthanc: OrthancHandle) -> list[pydicom.Dataset]:
    return [ds for ds in orthanc.datasets() if ds.get("SeriesNumber") == SUMMARY_SERIES]


def test_a_crash_during_an_exam_still_sends_its_summary_exactly_once(
    tmp_path: Path, orthanc: OrthancHandle, exam: list[Path]
) -> None:
    node = NodeProcess(
        write_config(tmp_path, orthanc, models=MODELS, output_kinds=[*KINDS, "study-sr"])
    )
    node.start()
    pushed = storescu(node.port, exam)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    node.kill()  # acknowledged; the summary is not made yet (its cines are still being processed)
    study = pydicom.dcmread(exam[0], stop_before_pixels=True).StudyInstanceUID
    summary_file = tmp_path / "node" / "results" / study / "study-summary.json"
    assert not summary_file.exists()
    node.start()
    try:
        wait_for(summary_file.is_file, 240, "the study summary after the restart")
        wait_for(lambda: len(_summaries(orthanc)) >= 1, 60, "the summary SR in the PACS")
        node.stop()  # and once more, with nothing pending: nothing is sent again
        node.start()
        wait_for(
            lambda: "sent: 3" in lus_pacs("status", "--config", str(node.config)).stdout,
            30,
            "3 jobs sent",
        )
    finally:
        node.stop()
    assert json.loads(summary_file.read_text())["cines"] == len(exam)
    assert len(_summaries(orthanc)) == 1
    assert orthanc.count() == 2 * len(exam) + 1
    store = JobStore(tmp_path / "node" / "jobs.sqlite")
    (summary,) = store.studies.summaries()
    assert [(d[0], d[1], d[2]) for d in summary.deliveries] == [("pacs", "sent", 0)]


FULL_DISK = r"""
set -e
results=$1; control=$2; shift 2
mount -t tmpfs -o size=1m tmpfs "$results"
cat /dev/zero > "$results/filler" 2>/dev/null || true
"$@" & node=$!
trap 'kill -TERM $node; wait $node; exit 0' TERM
while [ ! -e "$control" ]; do sleep 0.2; done
rm -f "$results/filler"
wait $node
"""
"""The node in its own mount namespace, its results folder a full 1 MB tmpfs until the file
``control`` appears (``unshare -rm``: no privilege needed)."""


def test_a_full_disk_while_writing_results_stalls_nothing_for_good(
    tmp_path: Path, orthanc: OrthancHandle, exam: list[Path]
) -> None:
    config = write_config(tmp_path, orthanc, models=MODELS, output_kinds=KINDS)
    results = tmp_path / "node" / "results"
    results.mkdir(parents=True)
    control = tmp_path / "disk-freed"
    node = NodeProcess(
        config, wrapper=["unshare", "-rm", "sh", "-c", FULL_DISK, "sh", str(results), str(control)]
    )
    node.start()
    try:
        assert storescu(node.port, exam[:1]).returncode == 0  # the incoming folder has room
        wait_for(lambda: "No space left on device" in node.log_text(), 120, "the full disk")
        # A worker that keeps failing is alive, restarted every 10 s: /healthz says so.
        wait_for(lambda: _health(node)[0] == 503, 30, "/healthz unhealthy on the full disk")
        assert any(n.startswith("worker-") for n in _health(node)[1]["checks"]["failing"])
        assert orthanc.count() == 0
        store = JobStore(tmp_path / "node" / "jobs.sqlite")
        assert JobState.FAILED not in store.jobs.counts()  # the disk's fault, not the cine's
        control.touch()  # space is freed: the job waiting in the queue is done
        wait_for(lambda: orthanc.count() >= 2, 120, "the results once the disk has room")
        assert storescu(node.port, exam[1:2]).returncode == 0  # and new pushes are processed
        wait_for(lambda: orthanc.count() >= 4, 120, "the next cine's results")
        wait_for(lambda: _health(node)[0] == 200, 60, "/healthz healthy again")
    finally:
        node.stop()
    assert orthanc.count() == 4
    assert store.jobs.counts() == {JobState.SENT: 2}


def _health(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    """The status and document of the node's /healthz (its port is in the node's log)."""
    import re
    import urllib.error
    import urllib.request

    (port,) = re.findall(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics", node.log_text())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class _SilentPacs:
    """A 'PACS' that accepts every connection and never answers."""

    def __init__(self) -> None:
        (self.port,) = free_ports(1)
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


def test_a_hung_destination_delays_only_its_own_results(
    tmp_path: Path, orthanc: OrthancHandle, exam: list[Path]
) -> None:
    silent = _SilentPacs()
    config = write_config(tmp_path, orthanc, models=MODELS, output_kinds=KINDS, workers=2)
    with config.open("a") as f:
        f.write(
            f'\n[[destinations]]\nname = "hung"\nae_title = "HUNG"\nhost = "127.0.0.1"\n'
            f"port = {silent.port}\n"
        )
    node = NodeProcess(config)
    node.start()
    store = JobStore(tmp_path / "node" / "jobs.sqlite")
    try:
        assert storescu(node.port, exam).returncode == 0
        wait_for(lambda: orthanc.count() >= 2 * len(exam), 180, "every result in the PACS")
        hung = [d for job in store.jobs.rows() for d in job.deliveries if d[0] == "hung"]
    finally:
        node.stop()
        silent.close()
    # Each attempt on the hung PACS blocks for its 30 s timeout; delivered in one loop, the PACS
    # would have waited behind at least two of them.
    assert sum(attempts for _, _, attempts, _ in hung) <= 1, hung
    assert orthanc.count() == 2 * len(exam)  # two workers, each cine still processed once


def test_cines_over_the_pixel_budget_run_one_at_a_time(
    tmp_path: Path, orthanc: OrthancHandle, exam: list[Path]
) -> None:
    # Two workers, a budget smaller than any cine: each waits for the other to finish (what keeps
    # two long cines from adding up in memory), and every cine is still processed once.
    config = write_config(
        tmp_path, orthanc, models=MODELS, output_kinds=KINDS, workers=2, concurrent_pixels=1
    )
    node = NodeProcess(config)
    node.start()
    try:
        assert storescu(node.port, exam).returncode == 0
        wait_for(lambda: orthanc.count() >= 2 * len(exam), 180, "every result in the PACS")
    finally:
        node.stop()
    events = [
        ("start" if " Processing " in line else "end", line)
        for line in node.log_text().splitlines()
        if " Processing " in line or " Processed " in line
    ]
    assert [kind for kind, _ in events] == ["start", "end"] * len(exam), events
    assert any("for the pixel budget" in line for _, line in events), events
    assert orthanc.count() == 2 * len(exam)


def _same_uids_other_pixels(source: Path, pixels_from: Path, out: Path) -> Path:
    """``pixels_from`` under the UIDs of ``source``: a scanner re-sending a corrected zone."""
    ds = pydicom.dcmread(pixels_from)
    uids = pydicom.dcmread(source, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, uids[keyword].value)
    ds.file_meta.MediaStorageSOPInstanceUID = uids.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return out


def test_an_instance_sent_again_with_other_content_is_reprocessed_or_refused(
    tmp_path: Path, orthanc: OrthancHandle, exam: list[Path]
) -> None:
    changed = _same_uids_other_pixels(exam[0], exam[1], tmp_path / "changed.dcm")
    node = NodeProcess(write_config(tmp_path, orthanc, models=MODELS, output_kinds=KINDS))
    node.start()
    try:
        assert storescu(node.port, exam[:1]).returncode == 0
        wait_for(lambda: orthanc.count() >= 2, 120, "the first results")
        first = orthanc.sop_instance_uids()
        assert storescu(node.port, exam[:1]).returncode == 0  # the same content: nothing new
        assert storescu(node.port, [changed]).returncode == 0
        wait_for(lambda: orthanc.count() >= 4, 120, "the results of the new content")
    finally:
        node.stop()
    store = JobStore(tmp_path / "node" / "jobs.sqlite")
    assert store.jobs.counts() == {JobState.REPLACED: 1, JobState.SENT: 1}
    assert orthanc.count() == 4
    assert len(orthanc.sop_instance_uids() - first) == 2  # new objects, new UIDs
    assert "again with other content" in node.log_text()

    refusing = tmp_path / "refusing"
    refusing.mkdir()
    node = NodeProcess(
        write_config(refusing, None, models=MODELS, output_kinds=KINDS, changed_instance="refuse")
    )
    node.start()
    try:
        assert storescu(node.port, exam[:1]).returncode == 0
        answer = storescu(node.port, [changed])
    finally:
        node.stop()
    assert "Error: CannotUnderstand" in answer.stderr, answer.stderr  # 0xC111
    assert "received before with other content" in node.log_text()
    stored = list((refusing / "node" / "incoming").rglob("*.dcm"))
    assert len(stored) == 1  # the copy its results come from is kept
    assert pydicom.dcmread(stored[0]).PixelData == pydicom.dcmread(exam[0]).PixelData


def test_a_stop_while_the_models_load_ends_the_node_at_once(tmp_path: Path) -> None:
    """A container stopped as it starts: PID 1 ignores SIGTERM without a handler, so the
    node, whose handler came only after the models had loaded and warmed up, was killed at
    the end of the grace period. Now it exits at once, with 128 + SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    config = write_config(tmp_path, None)
    exe = Path(sys.executable).with_name("lus-pacs")
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        command = [str(exe), "serve", "--config", str(config)]
        node = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        loading = "Loading the models"
        wait_for(lambda: loading in log.read_text() or node.poll() is not None, 60, loading)
        node.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert node.wait(30) == 128 + signal.SIGTERM, log.read_text()
        assert time.monotonic() - started < 10
    finally:
        if node.poll() is None:
            node.kill()
    assert "Traceback" not in log.read_text()


def test_a_late_cine_of_a_pruned_study_holds_up_no_other_studys_summary(
    tmp_path: Path, synth_exams: Path
) -> None:
    """Retention removed an exam's files; a late cine of it reopened the study, whose summary
    SR read the removed files: the study loop failed on that study every ten seconds, and no
    study received after it was summarised (nor ever pruned)."""
    first, second = sorted(p for p in synth_exams.iterdir() if p.is_dir())[:2]
    early, late = sorted(first.glob("*.dcm"))[:2], sorted(first.glob("*.dcm"))[2]
    other = sorted(second.glob("*.dcm"))[:2]
    config = write_config(
        tmp_path, None, models=["b_lines"], output_kinds=["sr", "study-sr"], workers=1
    )
    node = NodeProcess(config)
    results = tmp_path / "node" / "results"

    def summarised(cine: Path) -> Path:
        study = pydicom.dcmread(cine, stop_before_pixels=True).StudyInstanceUID
        return results / study / "study-summary.json"

    node.start()
    try:
        assert storescu(node.port, early).returncode == 0
        wait_for(summarised(late).is_file, 240, "the first study's summary")
        pruned = lus_pacs("prune", "--older-than", "0", "--config", str(config))
        assert "1 studies pruned" in pruned.stdout, pruned.stdout + pruned.stderr
        assert storescu(node.port, [late]).returncode == 0
        assert storescu(node.port, other).returncode == 0
        wait_for(summarised(other[0]).is_file, 240, "the second study's summary")
        wait_for(
            lambda: json.loads(summarised(late).read_text())["cines"] == 3,
            60,
            "the first study summarised again with its late cine",
        )
    finally:
        node.stop()
    log = node.log_text()
    assert "the summary SR cannot be made: the files of 2 of its 3 cine(s) were removed" in log
    assert "studies failed" not in log
