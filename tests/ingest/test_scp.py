"""The DICOM listener on loopback: with dcmtk's real echoscu and storescu, and with a pynetdicom
SCU to watch the callable the C-STORE handler records through and the listener's start and
stop."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    LabelMapSegmentationStorage,
    Verification,
)

from lus_pacs.dicom_vocabulary import (
    CANNOT_UNDERSTAND,
    MISMATCHED_CLASS,
    OUT_OF_RESOURCES,
    REFUSED_SOP_CLASS,
    SUCCESS,
)
from lus_pacs.domain import Instance, JobState, Received
from lus_pacs.ingest.audit import AuditLog
from lus_pacs.ingest.scp import _identity_problem, start_listener
from lus_pacs.queue.store import JobStore
from lus_pacs.settings import Settings

needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")

US_IMAGE = Path(str(get_testdata_file("US1_UNCR.dcm")))
"""pydicom's uncompressed single-frame ultrasound image."""


class StoringNode:
    """The listener with a real job store behind it, as the node wires it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.store_path)
        self.stored = 0
        self.completed: list[str] = []
        self.released = threading.Event()
        self.listener = start_listener(
            settings,
            record=partial(
                self.store.jobs.record_instance, models="m@1", on_change=settings.changed_instance
            ),
            on_stored=self._stored,
            on_study_complete=self._complete,
        )
        self.port = self.listener.port

    def _stored(self) -> None:
        self.stored += 1

    def _complete(self, studies: list[str]) -> None:
        self.completed.extend(studies)
        self.released.set()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[StoringNode]:
    node = StoringNode(Settings(data_dir=tmp_path, port=0, allowed_calling_aes=("SCANNER",)))
    yield node
    node.listener.stop()


def _dcmtk(
    tool: str, port: int, *files: str, options: tuple[str, ...] = (), aet: str = "SCANNER"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-aet", aet, "-aec", "LUSPACS", *options, "127.0.0.1", str(port), *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_dcmtk
def test_echo_from_an_allowed_ae_and_rejection_of_others(listener: StoringNode) -> None:
    assert _dcmtk("echoscu", listener.port).returncode == 0
    rejected = _dcmtk("echoscu", listener.port, aet="INTRUDER")
    assert rejected.returncode != 0
    assert "Rejected" in rejected.stderr + rejected.stdout


@needs_dcmtk
def test_a_pushed_cine_is_on_disk_and_queued_before_release(
    listener: StoringNode, synth_exams: Path
) -> None:
    cine = next(synth_exams.glob("*/R1.dcm"))
    result = _dcmtk("storescu", listener.port, str(cine), options=("-xy",))
    assert result.returncode == 0, result.stderr
    source = pydicom.dcmread(cine)
    (job,) = listener.store.jobs.rows()
    assert job.sop_instance_uid == source.SOPInstanceUID
    assert job.state is JobState.QUEUED
    claimed = listener.store.jobs.claim()
    assert claimed is not None
    stored = pydicom.dcmread(claimed.instance.path)
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit  # as sent (-xy)
    assert stored.PixelData == source.PixelData
    assert listener.released.wait(10)
    assert listener.completed == [source.StudyInstanceUID]
    assert listener.stored == 1


@needs_dcmtk
def test_a_ct_image_is_refused_with_a_status(listener: StoringNode, tmp_path: Path) -> None:
    ct = str(get_testdata_file("CT_small.dcm"))
    result = _dcmtk("storescu", listener.port, ct, options=("-v",))
    assert result.returncode != 0
    assert "Refused: SOPClassNotSupported" in result.stdout + result.stderr
    assert listener.store.jobs.rows() == []


@needs_dcmtk
def test_ignoring_unsupported_classes_acknowledges_without_storing(tmp_path: Path) -> None:
    node = StoringNode(Settings(data_dir=tmp_path, port=0, unsupported_sop_class="ignore"))
    try:
        result = _dcmtk("storescu", node.port, str(get_testdata_file("CT_small.dcm")))
        assert result.returncode == 0, result.stderr
        assert node.store.jobs.rows() == []
        assert not (tmp_path / "incoming").exists()
    finally:
        node.listener.stop()


def _send(port: int, path: Path, times: int = 1) -> list[int]:
    """C-STORE statuses of sending ``path`` ``times`` over one association, as SCANNER."""
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LUSPACS")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for _ in range(times)]
    finally:
        assoc.release()


def test_the_store_handler_records_through_the_callable_it_is_given(tmp_path: Path) -> None:
    recorded: list[Instance] = []
    new = iter(
        [Received.NEW, Received.KNOWN]
    )  # the second time: already processed with these models
    woken: list[None] = []
    completed: list[list[str]] = []
    released = threading.Event()

    def record(instance: Instance) -> Received:
        assert instance.path.is_file()  # written before it is recorded
        recorded.append(instance)
        return next(new)

    def complete(studies: list[str]) -> None:
        completed.append(studies)
        released.set()

    listener = start_listener(
        Settings(data_dir=tmp_path, port=0),
        record=record,
        on_stored=lambda: woken.append(None),
        on_study_complete=complete,
    )
    try:
        statuses = _send(listener.port, US_IMAGE, times=2)
        assert released.wait(10)
    finally:
        listener.stop()
    source = pydicom.dcmread(US_IMAGE)
    assert statuses == [SUCCESS, SUCCESS]
    first, second = recorded
    assert first == second
    assert (first.sop_instance_uid, first.sop_class_uid) == (
        source.SOPInstanceUID,
        source.SOPClassUID,
    )
    assert (first.study_instance_uid, first.series_instance_uid, first.calling_ae) == (
        source.StudyInstanceUID,
        source.SeriesInstanceUID,
        "SCANNER",
    )
    assert first.path.parent.parent == tmp_path / "incoming"
    assert pydicom.dcmread(first.path).PixelData == source.PixelData
    assert len(woken) == 1  # only a new instance wakes the worker
    assert completed == [[source.StudyInstanceUID]]


def test_an_instance_over_the_byte_limit_is_refused_and_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = StoringNode(Settings(data_dir=tmp_path, port=0, max_instance_bytes=1000))
    try:
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            assert _send(node.port, US_IMAGE) == [OUT_OF_RESOURCES]
    finally:
        node.listener.stop()
    assert "over the limit of 1000 (max_instance_bytes)" in caplog.text
    assert node.store.jobs.counts() == {}
    assert not (tmp_path / "incoming").exists()


def test_a_deflated_instance_that_inflates_past_the_byte_limit_is_refused_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """24 MB of zeros deflate to a few kB, far under the limit: pynetdicom inflates a received
    data set whole to read it, so the listener measured the sent bytes and then held the
    inflated ones (150 MB from 146 kB in the review's run)."""
    ds = pydicom.dcmread(US_IMAGE)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "fits.dcm", enforce_file_format=True)
    block = ds.private_block(0x0009, "LUS-PACS TEST", create=True)
    block.add_new(0x10, "OB", bytes(24_000_000))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    assert (tmp_path / "bomb.dcm").stat().st_size < 10**6  # a tenth of the limit
    node = StoringNode(Settings(data_dir=tmp_path / "node", port=0, max_instance_bytes=10**7))
    try:
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            assert _send(node.port, tmp_path / "fits.dcm") == [SUCCESS]
            assert _send(node.port, tmp_path / "bomb.dcm") == [OUT_OF_RESOURCES]
    finally:
        node.listener.stop()
    assert "past the limit of 10000000 (max_instance_bytes)" in caplog.text
    assert [r.sop_instance_uid for r in node.store.jobs.rows()] == [
        pydicom.dcmread(US_IMAGE).SOPInstanceUID
    ]
    # Under the byte limit (4 GiB by default) a bomb still took GB: a ratio is kept too,
    # past the 64 MiB any data set may inflate to (24 MB of zeros pass).
    block[0x10].value = bytes(100_000_000)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "big-bomb.dcm", enforce_file_format=True)
    node = StoringNode(Settings(data_dir=tmp_path / "node2", port=0))
    try:
        assert _send(node.port, tmp_path / "fits.dcm") == [SUCCESS]
        assert _send(node.port, tmp_path / "bomb.dcm") == [SUCCESS]
        assert _send(node.port, tmp_path / "big-bomb.dcm") == [OUT_OF_RESOURCES]
    finally:
        node.listener.stop()


def _closed_within(connection: socket.socket, seconds: float) -> bool:
    """Whether the node closes ``connection`` within ``seconds`` (what it sends is read)."""
    connection.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if connection.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset
            return True
    return False


def test_a_pdu_longer_than_the_node_takes_closes_its_connection_unread(tmp_path: Path) -> None:
    """pynetdicom reads a PDU whole, of the length its header declares (up to 4 GiB), before
    any AE title is checked: a bare connection streaming bytes took the node's memory."""
    node = StoringNode(Settings(data_dir=tmp_path, port=0))
    try:
        bomb = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        with contextlib.suppress(OSError):  # the node may close while we send
            bomb.sendall(struct.pack(">BBL", 0x01, 0x00, 100 * 2**20) + bytes(2**20))
        assert _closed_within(bomb, 5)
        bomb.close()
        assert _echo(node.port) == SUCCESS
    finally:
        node.listener.stop()


def test_a_pdu_dripped_slower_than_the_node_takes_closes_its_connection(tmp_path: Path) -> None:
    """One byte within every network timeout restarted the idle timer: the peer held its
    association slot for good, and two addresses' worth locked every scanner out."""
    settings = Settings(data_dir=tmp_path, port=0, network_timeout_s=1.5, acse_timeout_s=1.5)
    node = StoringNode(settings)
    try:
        drip = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        drip.sendall(struct.pack(">BBL", 0x01, 0x00, 200))
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 15:
            try:
                drip.sendall(b"\x00")
            except OSError:
                closed = True
                break
            closed = _closed_within(drip, 1.0)
        assert closed
        assert time.monotonic() - started < 12  # the idle timer alone: never (a byte a second)
        drip.close()
    finally:
        node.listener.stop()


def _send_as_written(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """The C-STORE response of sending ``path``'s bytes as they are, its request's class and
    syntax from its file meta (how a streaming sender works: pynetdicom's chunked mode)."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = read_file_meta_info(path)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LUSPACS")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def _raw_file(path: Path, meta: FileMetaDataset, body: bytes) -> Path:
    with path.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta, enforce_standard=True)
        f.write(body)
    return path


def test_a_data_set_of_another_class_than_announced_or_not_deflated_is_refused_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request announcing US Multi-frame whose data set is a Comprehensive SR was
    acknowledged (only the worker found it foreign: the sender never knew); a request in
    Deflated Explicit VR whose bytes are no deflate stream raised out of the handler
    (pynetdicom answered 0xC211 itself, with a traceback, and no audit line)."""
    ds = pydicom.dcmread(US_IMAGE)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # its meta still says ultrasound
    ds.save_as(tmp_path / "sr.dcm")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    _raw_file(tmp_path / "deflated.dcm", meta, b"\xff" * 64)
    settings = Settings(data_dir=tmp_path / "node", port=0)
    audit = AuditLog(tmp_path / "audit.jsonl")
    store = JobStore(settings.store_path)
    listener = start_listener(
        settings,
        record=partial(store.jobs.record_instance, models="m@1"),
        on_stored=lambda: None,
        on_study_complete=lambda studies: None,
        audit=audit,
    )
    try:
        foreign = _send_as_written(listener.port, tmp_path / "sr.dcm", monkeypatch)
        broken = _send_as_written(listener.port, tmp_path / "deflated.dcm", monkeypatch)
        assert int(foreign.Status) == MISMATCHED_CLASS
        assert foreign.ErrorComment == "SOP Class UID differs from the request's"
        assert int(broken.Status) == CANNOT_UNDERSTAND
    finally:
        listener.stop()
        audit.close()
    assert store.jobs.counts() == {}
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refused = [x for x in lines if x["event"] == "instance" and x["outcome"] == "refused"]
    assert len(refused) == 2
    assert "1.2.840.10008.5.1.4.1.1.88.33" in refused[0]["reason"]
    assert "unreadable" in refused[1]["reason"]


@pytest.mark.parametrize(
    ("keyword", "uid"),
    [
        ("StudyInstanceUID", "/1.2.3"),
        ("StudyInstanceUID", "../../1.2"),
        ("StudyInstanceUID", "1." + "2" * 70),
        ("SeriesInstanceUID", "1.2 .3"),
    ],
)
def test_an_instance_whose_uid_could_not_name_it_is_refused_and_not_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keyword: str, uid: str
) -> None:
    """Its Study Instance UID names its folders; an acknowledged instance whose UID cannot (a
    path, too long) would fail at every try to write its results, and stall the queue."""
    ds = pydicom.dcmread(US_IMAGE)
    setattr(ds, keyword, uid)
    path = tmp_path / "bad.dcm"
    ds.save_as(path)
    node = StoringNode(Settings(data_dir=tmp_path / "node", port=0))
    try:
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            assert _send(node.port, path) == [CANNOT_UNDERSTAND]
            assert _send(node.port, US_IMAGE) == [SUCCESS]  # the next one is taken
    finally:
        node.listener.stop()
    assert "is not a valid UID" in caplog.text
    assert [r.sop_instance_uid for r in node.store.jobs.rows()] == [
        pydicom.dcmread(US_IMAGE).SOPInstanceUID
    ]
    assert len(list((tmp_path / "node" / "incoming").rglob("*.dcm"))) == 1


def test_an_instance_is_stored_only_under_the_uid_its_request_announced() -> None:
    study, series = "1.2.3", "1.2.3.4"
    assert _identity_problem("1.2.3.4.5", "1.2.3.4.5", study, series) is None
    assert _identity_problem("1.2.03.4.5", "1.2.03.4.5", study, series) is None  # as scanners do
    reason, comment = _identity_problem("1.2.3.4.5", "1.2.3.4.6", study, series) or ("", "")
    assert "not the request's Affected SOP Instance UID 1.2.3.4.5" in reason
    assert 0 < len(comment) <= 64  # an Error Comment is LO
    assert _identity_problem("", "", study, series) is not None


def test_an_instance_that_cannot_be_recorded_is_not_acknowledged(tmp_path: Path) -> None:
    def record(instance: Instance) -> Received:
        raise sqlite3.OperationalError("database is locked")

    woken: list[None] = []
    listener = start_listener(
        Settings(data_dir=tmp_path, port=0),
        record=record,
        on_stored=lambda: woken.append(None),
        on_study_complete=lambda studies: None,
    )
    try:
        assert _send(listener.port, US_IMAGE) == [OUT_OF_RESOURCES]
    finally:
        listener.stop()
    assert woken == []
    # Nor is it left on disk, where no row names it: nothing would ever remove it.
    assert list((tmp_path / "incoming").rglob("*.dcm")) == []


def _echo(port: int, calling_ae: str = "SCANNER") -> int | None:
    """The C-ECHO status, or None when no association was established."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="LUSPACS")
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_the_listener_answers_on_its_port_until_stopped(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=0, allowed_calling_aes=("SCANNER",))
    listener = start_listener(
        settings,
        record=lambda _: Received.NEW,
        on_stored=lambda: None,
        on_study_complete=lambda _: None,
    )
    try:
        port = listener.port
        assert port > 0  # port 0 in the settings: any free port, reported back
        assert _echo(port) == SUCCESS
        assert _echo(port, calling_ae="INTRUDER") is None  # not on the allow-list
    finally:
        listener.stop()
    assert _echo(port) is None


def test_a_port_in_use_is_an_os_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=0)
    first = start_listener(
        settings,
        record=lambda _: Received.NEW,
        on_stored=lambda: None,
        on_study_complete=lambda _: None,
    )
    try:
        taken = settings.model_copy(update={"port": first.port})
        with pytest.raises(OSError, match="in use"):
            start_listener(
                taken,
                record=lambda _: Received.NEW,
                on_stored=lambda: None,
                on_study_complete=lambda _: None,
            )
    finally:
        first.stop()


def _half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send the first bytes of an A-ASSOCIATE-RQ (its PDU header
    announces 200 bytes) and then stay silent (issue 19, case 7)."""
    held = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(struct.pack(">BBL", 0x01, 0x00, 200) + b"\x00\x01\x00\x00")
        held.append(connection)
    return held


@needs_dcmtk
def test_half_open_connections_are_closed_and_cannot_lock_scanners_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path, port=0, max_associations=4, network_timeout_s=1.5, acse_timeout_s=1.5
    )
    node = StoringNode(settings)
    held = _half_open(node.port, 6)
    try:
        time.sleep(0.5)
        # The limit is reached: a scanner is rejected now, and the rejection names it.
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            busy = _dcmtk("echoscu", node.port)
            assert busy.returncode != 0
            deadline = time.monotonic() + 5
            while "Rejected an association from SCANNER at 127.0.0.1" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.1)
        # Past the network timeout the silent peers are gone and scanners are served again.
        time.sleep(settings.network_timeout_s + 1.0)
        assert _dcmtk("echoscu", node.port).returncode == 0
        for connection in held:
            connection.settimeout(5)
            assert connection.recv(64) == b""  # closed by the node
    finally:
        for connection in held:
            connection.close()
        node.listener.stop()


def _verification_scu() -> AE:
    """A scanner's AE asking for Verification only, with timeouts of 5 s."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    return ae


@needs_dcmtk
def test_one_address_cannot_take_every_association(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = StoringNode(
        Settings(data_dir=tmp_path, port=0, max_associations=8, max_associations_per_peer=2)
    )
    ae = _verification_scu()
    held = [ae.associate("127.0.0.1", node.port, ae_title="LUSPACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            assert _dcmtk("echoscu", node.port).returncode != 0  # a third from the same address
        assert "Refused a connection from 127.0.0.1: it holds 2 associations" in caplog.text
        held.pop().release()
        time.sleep(0.3)
        assert _dcmtk("echoscu", node.port).returncode == 0  # room again
    finally:
        for assoc in held:
            assoc.release()
        node.listener.stop()


def test_a_burst_of_connections_from_one_address_stays_within_its_limit(
    tmp_path: Path,
) -> None:
    """Each connection counted the associations already running; those of a burst all saw the
    count of before it (an association is listed once its thread runs, after tens of ms of
    setting it up): 19 of 100 held against a limit of 16."""
    node = StoringNode(
        Settings(
            data_dir=tmp_path,
            port=0,
            max_associations=32,
            max_associations_per_peer=4,
            acse_timeout_s=15,
        )
    )
    connections: list[socket.socket] = []
    lock = threading.Lock()

    def connect() -> None:
        connection = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        with lock:
            connections.append(connection)

    try:
        burst = [threading.Thread(target=connect) for _ in range(40)]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join()
        for connection in connections:
            connection.setblocking(False)

        def held() -> int:
            """Connections still open (a refused one reads as closed)."""
            count = 0
            for connection in connections:
                try:
                    count += connection.recv(1, socket.MSG_PEEK) != b""
                except BlockingIOError:  # open, waiting for the association request
                    count += 1
                except OSError:
                    pass
            return count

        deadline = time.monotonic() + 10  # a loaded machine takes a while to shut them all
        while held() > 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held() == 4
    finally:
        for connection in connections:
            connection.close()
        node.listener.stop()


def test_a_refused_connection_gets_no_association(tmp_path: Path) -> None:
    # Refused at pynetdicom's connection event, a connection used to keep an acceptor that
    # waited out the ACSE timeout (10 s here) counted as active, so a peer retrying kept itself
    # out after its own release; and an A-ASSOCIATE-RQ already sent could still be accepted.
    node = StoringNode(
        Settings(data_dir=tmp_path, port=0, max_associations_per_peer=2, acse_timeout_s=10)
    )
    ae = _verification_scu()
    held = [ae.associate("127.0.0.1", node.port, ae_title="LUSPACS") for _ in range(2)]
    refused = []
    try:
        assert all(a.is_established for a in held)
        for _ in range(5):  # silent ones, shut at once by the node
            connection = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            refused.append(connection)
            assert connection.recv(64) == b""
        for _ in range(5):  # ones that ask at once: never accepted
            assert not ae.associate("127.0.0.1", node.port, ae_title="LUSPACS").is_established
        held.pop().release()
        # A scanner retrying gets in within 2 s, far inside the ACSE timeout: the refused
        # connections hold nothing, and its own refused tries neither.
        deadline = time.monotonic() + 2
        while not (
            again := ae.associate("127.0.0.1", node.port, ae_title="LUSPACS")
        ).is_established:
            assert time.monotonic() < deadline, "the peer kept itself out"
            time.sleep(0.05)
        again.release()
    finally:
        for connection in refused:
            connection.close()
        for assoc in held:
            assoc.release()
        node.listener.stop()


def test_every_storage_class_is_accepted_at_association_and_answered_per_instance(
    listener: StoringNode,
) -> None:
    # Case 12 of issue 19: Label Map Segmentation (the node's own kind of output) got no
    # presentation context, so the sender saw an association failure instead of a status.
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(LabelMapSegmentationStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LUSPACS")
    assert assoc.is_established
    try:
        (context,) = assoc.accepted_contexts
        assert context.abstract_syntax == LabelMapSegmentationStorage
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.SOPClassUID = LabelMapSegmentationStorage
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        status = assoc.send_c_store(ds)
        assert status.Status == REFUSED_SOP_CLASS
    finally:
        assoc.release()


def test_a_cine_is_taken_only_in_a_syntax_its_pixels_can_be_read_in(listener: StoringNode) -> None:
    """Acknowledged in MPEG-4, a cine could not be decoded afterwards, and the scanner, told
    Success, would never send it otherwise: the context is refused at association, so that a
    scanner that offers JPEG beside it sends JPEG."""
    us = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(us, [pydicom.uid.MPEG4HP41])
    ae.add_requested_context(us, [pydicom.uid.HEVCMP51])
    ae.add_requested_context(us, [pydicom.uid.JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LUSPACS")
    assert assoc.is_established
    try:
        accepted = [str(c.transfer_syntax[0]) for c in assoc.accepted_contexts]
        rejected = [str(c.transfer_syntax[0]) for c in assoc.rejected_contexts]
    finally:
        assoc.release()
    assert accepted == [pydicom.uid.JPEGBaseline8Bit]
    assert sorted(rejected) == sorted([pydicom.uid.MPEG4HP41, pydicom.uid.HEVCMP51])


@needs_dcmtk
def test_a_refused_copy_of_content_received_before_keeps_that_contents_stored_file(
    tmp_path: Path,
) -> None:
    """A, then B under the same UID (reprocessed), then, the policy set to refuse, A again:
    its copy is written where A's first copy is (the name holds the content), and refusing
    it deleted the file A's results were made from."""
    first, second = tmp_path / "a.dcm", tmp_path / "b.dcm"
    shutil.copy(US_IMAGE, first)
    changed = pydicom.dcmread(US_IMAGE)
    changed.PatientName = "Corrected^Name"
    changed.save_as(second)
    data = tmp_path / "node"
    reprocessing = StoringNode(Settings(data_dir=data, port=0))
    try:
        for sent in (first, second):
            assert _dcmtk("storescu", reprocessing.port, str(sent)).returncode == 0
    finally:
        reprocessing.listener.stop()
    stored = sorted(data.rglob("*.dcm"))
    assert len(stored) == 2
    refusing = StoringNode(Settings(data_dir=data, port=0, changed_instance="refuse"))
    try:
        answer = _dcmtk("storescu", refusing.port, str(first), options=("-v",))
    finally:
        refusing.listener.stop()
    assert "CannotUnderstand" in answer.stderr, answer.stderr
    assert sorted(data.rglob("*.dcm")) == stored


@needs_dcmtk
def test_the_same_instance_in_another_transfer_syntax_is_the_same_content(
    tmp_path: Path,
) -> None:
    """A PACS forwarding a cine the scanner also sent may send it in Implicit VR: the digest
    of the bytes as received made it "other content", processed again, its first results
    called off, and refused (0xC111) under changed_instance = refuse."""
    node = StoringNode(Settings(data_dir=tmp_path / "node", port=0, changed_instance="refuse"))
    try:
        for syntax in ("-xe", "-xi", "-xb"):  # explicit, implicit, explicit big endian
            sent = _dcmtk("storescu", node.port, str(US_IMAGE), options=(syntax, "-v"))
            assert sent.returncode == 0
            assert "Success" in sent.stderr, sent.stderr
        changed = pydicom.dcmread(US_IMAGE)
        changed.PatientName = "Corrected^Name"  # other content stays other content
        changed.save_as(tmp_path / "changed.dcm")
        refused = _dcmtk("storescu", node.port, str(tmp_path / "changed.dcm"), options=("-v",))
        assert "CannotUnderstand" in refused.stderr, refused.stderr
    finally:
        node.listener.stop()
    assert len(node.store.jobs.rows()) == 1
    assert len(list((tmp_path / "node").rglob("*.dcm"))) == 1


def test_an_instance_is_refused_while_the_disk_is_nearly_full(tmp_path: Path) -> None:
    """Acknowledging an instance the node has no room to process, write results for or record
    loses it in all but name; a full disk failed every C-STORE while /healthz stayed green."""
    import shutil as disk

    free = disk.disk_usage(tmp_path).free
    node = StoringNode(Settings(data_dir=tmp_path / "node", port=0, min_free_bytes=free * 2))
    try:
        assert _send(node.port, US_IMAGE) == [OUT_OF_RESOURCES]
    finally:
        node.listener.stop()
    assert node.store.jobs.rows() == []
    assert list((tmp_path / "node").rglob("*.dcm")) == []
    room = StoringNode(Settings(data_dir=tmp_path / "room", port=0, min_free_bytes=1024))
    try:
        assert _send(room.port, US_IMAGE) == [0]
    finally:
        room.listener.stop()


def test_the_queue_knows_the_listeners_kind_of_digest() -> None:
    from lus_pacs.ingest.scp import CONTENT_DIGEST_PREFIX, content_digest
    from lus_pacs.queue import jobs

    assert jobs._DIGEST_PREFIX == CONTENT_DIGEST_PREFIX
    assert content_digest(pydicom.dcmread(US_IMAGE)).startswith(CONTENT_DIGEST_PREFIX)


def test_a_cine_over_the_frame_or_pixel_limit_is_refused_with_the_limit_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The settings say such a cine is refused with its limit named; it was acknowledged
    (Success), stored and failed later, so the sender never learnt no results would come."""
    ds = pydicom.dcmread(US_IMAGE)  # one frame of 480 x 640
    cases = (
        (1, Settings(data_dir=tmp_path / "p", port=0, max_cine_pixels=300_000), "307200 pixels"),
        (2, Settings(data_dir=tmp_path / "f", port=0, max_cine_frames=1), "2 frames"),
    )
    for frames, settings, named in cases:
        path = tmp_path / f"{frames}.dcm"
        ds.NumberOfFrames = frames  # the header's count is checked, before any decoding
        ds.save_as(path, enforce_file_format=True)
        node = StoringNode(settings)
        try:
            with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
                assert _send(node.port, path) == [OUT_OF_RESOURCES]
        finally:
            node.listener.stop()
        assert named in caplog.text
        assert node.store.jobs.counts() == {}


def test_an_association_stays_open_while_the_node_stores_slowly(tmp_path: Path) -> None:
    """pynetdicom counts idle time from the last PDU received: a store held up by a locked job
    store (a backup, `lus-pacs status` under load) counted as the sender's silence, and the
    association was aborted under its next instance after the first was acknowledged."""
    settings = Settings(data_dir=tmp_path, port=0, network_timeout_s=1.5)
    node = StoringNode(settings)
    locked = threading.Event()

    def hold_the_store() -> None:
        db = sqlite3.connect(settings.store_path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(3.0)  # twice the network timeout, far under SQLite's busy timeout
        db.execute("ROLLBACK")
        db.close()

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    try:
        locked.wait(10)
        assert _send(node.port, US_IMAGE, times=2) == [SUCCESS, SUCCESS]
    finally:
        holder.join()
        node.listener.stop()


def test_the_listener_takes_pdus_of_a_bounded_size(tmp_path: Path) -> None:
    """It advertised no limit: a sender that takes that at its word sends a cine as one PDU,
    and the idle timer, restarted per PDU, aborted a large cine on a slow link mid-transfer."""
    from lus_pacs.ingest.scp import MAX_PDU_BYTES

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    node = StoringNode(Settings(data_dir=tmp_path, port=0))
    try:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="LUSPACS")
        assert assoc.is_established
        advertised = assoc.acceptor.maximum_length
        assoc.release()
    finally:
        node.listener.stop()
    assert advertised == MAX_PDU_BYTES
