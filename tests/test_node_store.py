"""One node per job store: a second one started on it refuses before it touches the store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

from lus_pacs.domain import Instance, JobState, Output
from lus_pacs.errors import ConfigError
from lus_pacs.node import Node, summary_path
from lus_pacs.pipeline import Models
from lus_pacs.queue.deliveries import DeliveryState
from lus_pacs.queue.store import JobStore
from lus_pacs.records import BLinesRecord, CineRecord, SourceRecord
from lus_pacs.settings import DicomDestination, Settings
from tests.orthanc import running_orthanc
from tests.tools import write_cine

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
COMPREHENSIVE_SR = Path(get_testdata_file("test-SR.dcm") or "test-SR.dcm")


def test_a_second_node_on_the_same_store_refuses_and_the_first_keeps_its_cines(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    models = Models.load(settings)
    first = Node(settings, models)
    cine = Instance("1.2.3.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.3", "1.2.3.9", "SCU", tmp_path)
    first.store.jobs.record_instance(cine, models.key)
    assert first.store.jobs.claim(models.key) is not None  # a worker of the first node has it
    with pytest.raises(ConfigError, match="another node is running on the job store"):
        Node(settings, models)
    # Its start would have put the cine back in the queue, for a second worker to make again.
    assert [r.state for r in first.store.jobs.rows()] == [JobState.PROCESSING]
    first.stop()
    Node(settings, models).stop()  # once the first has stopped


def test_results_called_off_while_waiting_to_be_sent_do_not_reach_pacs(tmp_path: Path) -> None:
    """The exporter sends from a list taken before: behind a slow PACS it can be hours old. A
    cine received again meanwhile under another study (a corrected worklist) calls its first
    results off; they were sent all the same, filed under the wrong patient's study."""
    with running_orthanc(tmp_path) as orthanc:
        pacs = DicomDestination(
            name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
        )
        settings = Settings(
            data_dir=tmp_path / "node",
            port=0,
            metrics_port=None,
            models=("b_lines",),
            destinations=(pacs,),
        )
        node = Node(settings, Models.load(settings))
        try:
            for n in (1, 2):
                cine = Instance(
                    f"1.2.3.{n}", US_MULTIFRAME, "1.2.3", "1.2.3.9", "SCU", tmp_path, content="a"
                )
                node.store.jobs.record_instance(cine, node.models.key)
                job = node.store.jobs.claim(node.models.key)
                assert job is not None
                result = write_cine(
                    tmp_path / f"result-{n}.dcm", np.zeros((1, 8, 8), np.uint8), "explicit"
                )
                uid = str(pydicom.dcmread(result).SOPInstanceUID)
                node.store.jobs.finish(job.id, "{}", [Output("sr", uid, result)], ["pacs"])
            listed = node.store.deliveries.due(destination="pacs")
            assert len(listed) == 2
            corrected = Instance(
                "1.2.3.2", US_MULTIFRAME, "1.2.4", "1.2.4.9", "SCU", tmp_path, content="b"
            )
            node.store.jobs.record_instance(corrected, node.models.key)
            for delivery in listed:
                node._deliver(delivery, pacs)
            assert orthanc.count() == 1  # the first cine's results only
        finally:
            node.stop()


def test_a_cine_in_progress_at_a_stop_is_queued_again_not_counted_as_a_crash(
    tmp_path: Path,
) -> None:
    """A worker not done with a long cine when the node stops (SIGTERM, then the process
    exits) left it in progress; the next start counted that as the cine killing the node, so
    three routine restarts during one long cine failed it for good."""
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    models = Models.load(settings)
    cine = Instance("1.2.3.1", US_MULTIFRAME, "1.2.3", "1.2.3.9", "SCU", tmp_path)
    for restart in range(4):
        node = Node(settings, models)
        node.store.jobs.recover()  # what its start does first
        if restart == 0:
            node.store.jobs.record_instance(cine, models.key)
        assert node.store.jobs.claim(models.key) is not None  # a worker has it...
        node.stop()  # ... and is not done when the node stops
    node = Node(settings, models)
    (row,) = node.store.jobs.rows()
    node.stop()
    assert row.state is JobState.QUEUED


def test_health_and_metrics_say_when_the_disk_is_nearly_full(tmp_path: Path) -> None:
    import shutil as disk

    free = disk.disk_usage(tmp_path).free
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    node = Node(settings.model_copy(update={"min_free_bytes": free * 2}), Models.load(settings))
    try:
        _, checks = node.health()
        assert checks["disk"] is False
        assert isinstance(checks["disk_free_bytes"], int)
        assert checks["disk_free_bytes"] > 0
        exposed = prometheus_client.generate_latest(node.metrics.registry).decode()
        assert "lus_pacs_disk_free_bytes " in exposed
    finally:
        node.stop()
    # With no reserve kept the gauge still reads the disk (it read 0, firing every alert).
    node = Node(settings.model_copy(update={"min_free_bytes": 0}), Models.load(settings))
    try:
        exposed = prometheus_client.generate_latest(node.metrics.registry).decode()
        (line,) = [x for x in exposed.splitlines() if x.startswith("lus_pacs_disk_free_bytes ")]
        assert float(line.split()[1]) > 0
        assert node.health()[1]["disk"] is True
    finally:
        node.stop()


def test_a_study_with_cines_of_other_model_versions_is_summarised_whole(tmp_path: Path) -> None:
    """A late cine after a site's calibration (another models key) reopened its study: the
    summary covered that cine alone, and the exam's earlier cines silently dropped out."""
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    node = Node(settings, Models.load(settings))
    try:
        store = node.store
        (tmp_path / "early.dcm").write_bytes(b"cine")
        early = Instance(
            "1.2.3.1", US_MULTIFRAME, "7.7", "7.7.9", "SCU", tmp_path / "early.dcm", content="a"
        )
        store.jobs.record_instance(early, "b_lines@0.0.1")  # made before the calibration
        job = store.jobs.claim("b_lines@0.0.1")
        assert job is not None
        store.jobs.finish(job.id, "{}", [], [])
        late = Instance("1.2.3.2", US_MULTIFRAME, "7.7", "7.7.9", "SCU", tmp_path, content="b")
        store.jobs.record_instance(late, node.models.key)
        job = store.jobs.claim(node.models.key)
        assert job is not None
        store.jobs.finish(job.id, "{}", [], [])
        store.studies.complete(["7.7"])
        node._summarise_done()
        queued = [r.sop_instance_uid for r in store.jobs.rows() if r.state is JobState.QUEUED]
        assert queued == ["1.2.3.1"]  # made again by the current versions before a summary
        assert not summary_path(settings, "7.7").exists()
    finally:
        node.stop()


def test_a_stop_puts_a_long_cine_back_before_a_supervisor_would_kill_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop waited up to 30 s for each worker before putting its cine back in the queue:
    podman stop kills after 10 s, so a long cine was left in progress and counted as having
    killed the node (three such stops failed it for good). The cine goes back after a short
    grace; the worker still running it may still record it if it ends before the node is gone
    (one node per store: no other took it meanwhile)."""
    from lus_pacs import node as node_module

    cine, entered, release = _held_cine(tmp_path, monkeypatch)
    monkeypatch.setattr(node_module, "STOP_GRACE_S", 1.0)
    settings = Settings(
        data_dir=tmp_path / "node", port=0, metrics_port=None, models=("b_lines",), encoders=0
    )
    models = Models.load(settings)
    node = Node(settings, models)
    node.start()
    stopping = threading.Thread(target=node.stop)
    try:
        node.store.jobs.record_instance(cine, models.key)
        node._wake.set()
        assert entered.wait(60)
        started = time.monotonic()
        stopping.start()
        store = JobStore(settings.data_dir / "jobs.sqlite")
        assert _wait(lambda: store.jobs.rows()[0].state is JobState.QUEUED, 30)
        assert time.monotonic() - started < 5  # well before podman's 10 s
        assert stopping.is_alive()  # the worker is still on it
    finally:
        release.set()
        stopping.join(60)
    assert not stopping.is_alive()
    (row,) = JobStore(settings.data_dir / "jobs.sqlite").jobs.rows()
    assert row.state is JobState.SENT  # it ended within the stop: its results are kept
    assert list(settings.results_dir.rglob("*.dcm"))


def test_a_cine_that_hangs_its_worker_is_given_up_and_the_node_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cine whose processing never returns (a decoder caught in a loop) held its worker for
    good while /healthz stayed green, and each restart queued it again to hang again. Here the
    hang is a processing that waits on an event, then runs as usual."""

    cine, entered, release = _held_cine(tmp_path, monkeypatch)
    settings = Settings(
        data_dir=tmp_path / "node",
        port=0,
        metrics_port=None,
        models=("b_lines",),
        workers=1,
        encoders=0,
        max_cine_s=1.0,
    )
    models = Models.load(settings)
    node = Node(settings, models)
    node.start()
    try:
        node.store.jobs.record_instance(cine, models.key)
        node._wake.set()
        assert entered.wait(60)
        assert _wait(lambda: node.store.jobs.rows()[0].state is JobState.FAILED, 30)
        (row,) = node.store.jobs.rows()
        assert row.error is not None
        assert "max_cine_s (1 s)" in row.error
        healthy, checks = node.health()
        assert not healthy
        assert checks["overdue"] == ["worker-1"]
        release.set()  # the worker comes back: what it made is not kept
        assert _wait(lambda: node.health()[0], 60), node.health()[1]
        (row,) = node.store.jobs.rows()
        assert row.state is JobState.FAILED
        assert row.deliveries == ()
        assert not list(settings.results_dir.rglob("*.dcm"))
    finally:
        release.set()
        node.stop()
    node = Node(settings, models)
    node.store.jobs.recover()  # what a start does first: not queued to hang again
    (row,) = node.store.jobs.rows()
    node.stop()
    assert row.state is JobState.FAILED


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_results_waiting_for_a_destination_no_longer_configured_fail_visibly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A destination renamed in the settings ("pacs" to "pacs-main"): the results queued for
    the old name had no exporter, stayed pending for good, their jobs neither sent nor failed
    (lus-pacs retry skipped them), their studies never pruned, and nothing said so."""
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    models = Models.load(settings)
    node = Node(settings, models)
    try:
        cine = Instance("1.2.3.1", US_MULTIFRAME, "1.2.3", "1.2.3.9", "SCU", tmp_path)
        node.store.jobs.record_instance(cine, models.key)
        job = node.store.jobs.claim(models.key)
        assert job is not None
        node.store.jobs.finish(job.id, "{}", [], ["pacs"])
    finally:
        node.stop()
    renamed = DicomDestination(name="pacs-main", ae_title="PACS", host="127.0.0.1", port=1)
    node = Node(settings.model_copy(update={"destinations": (renamed,)}), models)
    with caplog.at_level(logging.ERROR, logger="lus_pacs.node"):
        node.start()
    try:
        (row,) = node.store.jobs.rows()
        assert row.state is JobState.FAILED
        ((destination, state, _, error),) = row.deliveries
        assert (destination, state.value) == ("pacs", "failed")
        assert error is not None
        assert "'pacs' is not in the settings" in error
        assert "1 result set(s) waiting for destination 'pacs'" in caplog.text
        assert node.store.deliveries.retry_failed() == 1  # once its name is back
    finally:
        node.stop()


def _held_cine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Instance, threading.Event, threading.Event]:
    """A simulated cine, and the node's processing made to wait: ``entered`` is set when a
    worker starts a cine, which then waits for ``release`` (two minutes at most) and runs."""
    from lus_pacs import node as node_module
    from lus_pacs.synth.exam import SynthOptions, synthesize

    synthesize(tmp_path / "exam", SynthOptions(patients=1, seed=5, frames=8, zones=6))
    path = sorted((tmp_path / "exam").glob("*/*.dcm"))[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    cine = Instance(
        ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, "SCU", path
    )
    entered, release = threading.Event(), threading.Event()
    process_file = node_module.process_file

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(120)
        return process_file(*args, **kwargs)

    monkeypatch.setattr(node_module, "process_file", held)
    return cine, entered, release


def test_a_cine_given_up_for_hanging_holds_no_pixels_of_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hung worker kept its cine's pixels against the budget: every cine that did not fit
    beside it waited, and every cine behind that one, the whole node until a restart (a
    hung cine is meant to cost one worker)."""
    from lus_pacs import node as node_module
    from lus_pacs.synth.exam import SynthOptions, synthesize

    synthesize(tmp_path / "exam", SynthOptions(patients=1, seed=5, frames=8, zones=6))
    paths = sorted((tmp_path / "exam").glob("*/*.dcm"))[:2]
    cines = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        cines.append(
            Instance(
                ds.SOPInstanceUID,
                ds.SOPClassUID,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                "SCU",
                path,
            )
        )
    hung, release = threading.Event(), threading.Event()
    process_file = node_module.process_file

    def first_hangs(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == cines[0].path:
            hung.set()
            release.wait(120)
        return process_file(path, *args, **kwargs)

    monkeypatch.setattr(node_module, "process_file", first_hangs)
    one = node_module.stored_pixels(paths[0])
    settings = Settings(
        data_dir=tmp_path / "node", port=0, metrics_port=None, models=("b_lines",), workers=2,
        encoders=0, max_cine_s=1.0, concurrent_pixels=one + 1,  # two do not fit side by side
    )  # fmt: skip
    models = Models.load(settings)
    node = Node(settings, models)
    node.start()
    try:
        node.store.jobs.record_instance(cines[0], models.key)
        node._wake.set()
        assert hung.wait(60)
        node.store.jobs.record_instance(cines[1], models.key)
        node._wake.set()
        # Given up after a second; the other worker then makes the next cine beside it (sent:
        # to no destination here).
        assert _wait(lambda: node.store.jobs.rows()[1].state is JobState.SENT, 60), [
            (r.state, r.error) for r in node.store.jobs.rows()
        ]
        assert node.store.jobs.rows()[0].state is JobState.FAILED
    finally:
        release.set()
        node.stop()


def test_a_destination_credential_that_cannot_be_read_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A password variable not set in the container: each delivery failed, "unavailable", for a
    day, with nothing at start to say why."""
    from lus_pacs.settings import WebDestination

    web = WebDestination(
        name="web", url="http://127.0.0.1:9/dicom-web", username="lus",
        password_env="LUS_PACS_TEST_UNSET_PASSWORD",
    )  # fmt: skip
    settings = Settings(
        data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",), web_destinations=(web,)
    )
    node = Node(settings, Models.load(settings))
    try:
        with caplog.at_level(logging.ERROR, logger="lus_pacs.node"):
            node.start()
    finally:
        node.stop()
    assert "Results for web cannot be sent until its credential can be read" in caplog.text
    assert "LUS_PACS_TEST_UNSET_PASSWORD" in caplog.text


def _result_file(folder: Path, name: str, sop_class: str) -> Output:
    """A result file of ``sop_class`` (a comprehensive SR renamed to it)."""
    ds = pydicom.dcmread(COMPREHENSIVE_SR)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = folder / f"{name}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Output(name, str(ds.SOPInstanceUID), path)


def test_a_pacs_without_the_seg_class_gets_the_rest_once(tmp_path: Path) -> None:
    """A PACS that takes no LABELMAP SEG (a class of 2024) refused it at every attempt: the
    SR, KOS and presentation state went again for a day, then the job was marked failed. The
    refusal is final at once; the destination's output_kinds leave the SEG out."""
    ae = AE("NOSEG")
    ae.add_supported_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    pacs = DicomDestination(
        name="pacs", ae_title="NOSEG", host="127.0.0.1", port=server.server_address[1]
    )
    settings = Settings(
        data_dir=tmp_path / "node", port=0, metrics_port=None, models=("b_lines",),
        destinations=(pacs,),
    )  # fmt: skip
    node = Node(settings, Models.load(settings))
    try:
        for n, destination in enumerate((pacs, pacs.model_copy(update={"output_kinds": ("sr",)}))):
            cine = Instance(f"1.2.3.{n}", US_MULTIFRAME, "1.2.3", "1.2.3.9", "SCU", tmp_path)
            node.store.jobs.record_instance(cine, node.models.key)
            job = node.store.jobs.claim(node.models.key)
            assert job is not None
            sr = _result_file(tmp_path, "sr", str(ComprehensiveSRStorage))
            seg = _result_file(tmp_path, "seg", "1.2.840.10008.5.1.4.1.1.66.7")
            node.store.jobs.finish(job.id, "{}", [sr, seg], ["pacs"])
            (delivery,) = node.store.deliveries.due(now=time.time() + 1e6, destination="pacs")
            assert node._deliver(delivery, destination) is False  # the PACS is there
            assert node.store.deliveries.due(now=time.time() + 1e6, destination="pacs") == []
            assert received.count(sr.sop_instance_uid) == 1
            assert seg.sop_instance_uid not in received
        # Nothing of it goes there: the destination is not asked, and tells nothing of
        # whether it is there (it was counted back, a down one's outage forgotten).
        cine = Instance("1.2.3.9", US_MULTIFRAME, "1.2.3", "1.2.3.9", "SCU", tmp_path)
        node.store.jobs.record_instance(cine, node.models.key)
        job = node.store.jobs.claim(node.models.key)
        assert job is not None
        sr = _result_file(tmp_path, "sr", str(ComprehensiveSRStorage))
        node.store.jobs.finish(job.id, "{}", [sr], ["pacs"])
        (delivery,) = node.store.deliveries.due(now=time.time() + 1e6, destination="pacs")
        only_pr = pacs.model_copy(update={"output_kinds": ("pr",), "port": 1})
        assert node._deliver(delivery, only_pr) is None
        assert sr.sop_instance_uid not in received
        refused, left_out, _ = sorted(node.store.jobs.rows(), key=lambda r: r.id)
        ((_, state, attempts, reason),) = refused.deliveries
        assert (state, attempts) == (DeliveryState.FAILED, 1)
        assert "output_kinds" in str(reason)
        assert refused.state is JobState.FAILED
        assert [d[1] for d in left_out.deliveries] == [DeliveryState.SENT]
        assert left_out.state is JobState.SENT
    finally:
        node.stop()
        server.shutdown()


def test_a_late_cine_of_a_pruned_study_after_a_model_update_gets_no_summary_sr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The earlier cines' files removed by retention, a late cine after a model update: they
    could not be made again, and the summary SR covered the late cine alone, its score given
    as the exam's total (with the same model versions the SR was already not made)."""
    settings = Settings(data_dir=tmp_path / "node", port=0, metrics_port=None, models=("b_lines",))
    node = Node(settings, Models.load(settings))
    try:
        store = node.store
        early = Instance(
            "1.2.3.1", US_MULTIFRAME, "7.7", "7.7.9", "SCU", tmp_path / "pruned.dcm", content="a"
        )
        store.jobs.record_instance(early, "b_lines@0.0.1")  # before the update; file gone
        job = store.jobs.claim("b_lines@0.0.1")
        assert job is not None
        store.jobs.finish(job.id, _record(early, "R1"), [], [])
        path = write_cine(tmp_path / "late.dcm", np.zeros((2, 8, 8), np.uint8), "explicit")
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        late = Instance(uid, US_MULTIFRAME, "7.7", "7.7.9", "SCU", path, content="b")
        store.jobs.record_instance(late, node.models.key)
        job = store.jobs.claim(node.models.key)
        assert job is not None
        store.jobs.finish(job.id, _record(late, "L3"), [], [])
        store.studies.complete(["7.7"])
        node._summarise_done()
        assert [r.state for r in store.jobs.rows()] == [JobState.SENT, JobState.SENT]
        assert store.studies.summaries() == []  # no SR
        assert "made by other model versions and their files removed" in caplog.text
        assert summary_path(settings, "7.7").exists()  # the study is done
    finally:
        node.stop()


def _record(instance: Instance, zone: str) -> str:
    """A cine record of ``instance`` in ``zone``, B-lines absent."""
    source = SourceRecord(
        instance.sop_instance_uid, instance.series_instance_uid, "7.7", "P", zone, 2, 25.0
    )
    b_lines = BLinesRecord(False, 0.1, (), 1)
    return CineRecord(source, {"b_lines": b_lines}, (), (), {"b_lines": "0.0.1"}, {}).dumps()
