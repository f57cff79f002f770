"""C-STORE and C-ECHO against a real Orthanc, and against pynetdicom SCPs for the statuses and
transfer syntax refusals Orthanc does not produce."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    MRImageStorage,
)

from lus_pacs.errors import ExportError
from lus_pacs.export.dimse import echo, store
from lus_pacs.settings import DicomDestination, TlsFiles
from tests.orthanc import OrthancHandle, free_ports, running_orthanc

CALLING_AE = "LUSPACS"


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


CT = _testdata("CT_small.dcm")
COMPREHENSIVE_SR = _testdata("test-SR.dcm")
MR_RLE = _testdata("MR_small_RLE.dcm")


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def shared_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    # A graceful Orthanc shutdown takes about 2.5 s: one for the module, emptied per test.
    with running_orthanc(tmp_path_factory.mktemp("pacs"), aet="TESTPACS") as handle:
        yield handle


@pytest.fixture
def orthanc(shared_orthanc: OrthancHandle) -> OrthancHandle:
    shared_orthanc.clear()
    return shared_orthanc


def _pacs(orthanc: OrthancHandle) -> DicomDestination:
    return DicomDestination(
        name="test-pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )


def _closed_port() -> DicomDestination:
    (port,) = free_ports(1)
    return DicomDestination(name="nowhere", ae_title="PACS", host="127.0.0.1", port=port)


def _renumbered(path: Path) -> Dataset:
    ds = dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_echo(orthanc: OrthancHandle) -> None:
    assert echo(_pacs(orthanc), calling_ae=CALLING_AE)
    assert not echo(_closed_port(), calling_ae=CALLING_AE, timeout=2)


def test_store_lands_in_orthanc_in_its_own_transfer_syntax(orthanc: OrthancHandle) -> None:
    sr = dcmread(COMPREHENSIVE_SR)
    assert sr.SOPClassUID.name == "Comprehensive SR Storage"

    statuses = store([CT, sr, MR_RLE], _pacs(orthanc), calling_ae=CALLING_AE)

    assert statuses == [0x0000, 0x0000, 0x0000]
    assert orthanc.count() == 3
    assert orthanc.sop_instance_uids() == {_uid(CT), sr.SOPInstanceUID, _uid(MR_RLE)}
    ids = {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in orthanc.instances()}
    assert orthanc.instance_tags(ids[sr.SOPInstanceUID])["SOPClassUID"] == sr.SOPClassUID
    assert orthanc.metadata(ids[_uid(MR_RLE)], "TransferSyntax") == RLELossless
    assert orthanc.metadata(ids[_uid(CT)], "RemoteAET") == CALLING_AE
    # The DICOMweb plugin serves them too (QIDO-RS), as OHIF will read them.
    studies = {study["0020000D"]["Value"][0] for study in orthanc.get("/dicom-web/studies")}
    assert sr.StudyInstanceUID in studies


def test_store_to_closed_port_names_the_destination() -> None:
    with pytest.raises(ExportError, match=r"'nowhere'.*cannot connect to PACS@127\.0\.0\.1:\d+"):
        store([CT], _closed_port(), calling_ae=CALLING_AE, timeout=2)


def test_wrong_called_ae_is_rejected(orthanc: OrthancHandle) -> None:
    wrong = _pacs(orthanc).model_copy(update={"ae_title": "NOTORTHANC"})
    with pytest.raises(ExportError, match=r"rejected by NOTORTHANC@.*Called AE title not recog"):
        store([CT], wrong, calling_ae=CALLING_AE)
    assert orthanc.count() == 0


def test_unreadable_file_fails_before_anything_is_sent(
    orthanc: OrthancHandle, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(ExportError, match=r"cannot read .*junk\.dcm"):
        store([CT, junk], _pacs(orthanc), calling_ae=CALLING_AE)
    assert orthanc.count() == 0


def test_outage_then_recovery(tmp_path: Path) -> None:
    with running_orthanc(tmp_path, aet="TESTPACS") as orthanc:
        pacs = _pacs(orthanc)
        before = _renumbered(CT)
        assert store([before], pacs, calling_ae=CALLING_AE) == [0x0000]

        orthanc.stop()
        during = _renumbered(CT)
        with pytest.raises(ExportError, match=r"'test-pacs'.*cannot connect"):
            store([during], pacs, calling_ae=CALLING_AE, timeout=2)

        orthanc.start()
        assert store([during], pacs, calling_ae=CALLING_AE) == [0x0000]
        assert orthanc.sop_instance_uids() == {before.SOPInstanceUID, during.SOPInstanceUID}


@dataclass
class MrOnlyScp:
    """A pynetdicom SCP taking MR Image Storage in Explicit VR Little Endian only."""

    destination: DicomDestination
    received: list[Dataset] = field(default_factory=list)
    answers: list[int | None] = field(default_factory=list)
    """Statuses to answer, in order; 0x0000 once empty. None: abort the association instead."""
    by_instance: dict[str, int] = field(default_factory=dict)
    """Statuses to answer for these SOP Instance UIDs, whatever the order they come in."""
    max_associations: int = 10
    """Associations it serves at once; more are rejected (local limit exceeded)."""


@pytest.fixture
def mr_scp(request: pytest.FixtureRequest) -> Iterator[MrOnlyScp]:
    ae = AE("MRSCP")
    ae.add_supported_context(MRImageStorage, ExplicitVRLittleEndian)
    # One association: the tests of what a single association says (answers in order).
    only = DicomDestination(name="mr-only", ae_title="MRSCP", host="127.0.0.1", port=1)
    scp = MrOnlyScp(only.model_copy(update={"associations": 1}))
    scp.max_associations = getattr(request, "param", 10)

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        scp.received.append(dataset)
        if dataset.SOPInstanceUID in scp.by_instance:
            return scp.by_instance[dataset.SOPInstanceUID]
        answer = scp.answers.pop(0) if scp.answers else 0x0000
        if answer is None:
            event.assoc.abort()
            return 0xA700
        return answer

    ae.maximum_associations = scp.max_associations
    yield from _serving(ae, scp, on_store)


def _serving(ae: AE, scp: MrOnlyScp, on_store: Callable[[evt.Event], int]) -> Iterator[MrOnlyScp]:
    """``ae`` serving C-STORE by ``on_store`` on a free port, ``scp`` pointed at it."""
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        scp.destination = scp.destination.model_copy(update={"port": server.server_address[1]})
        yield scp
    finally:
        server.shutdown()


def test_compressed_instance_is_decompressed_when_its_syntax_is_refused(mr_scp: MrOnlyScp) -> None:
    assert store([MR_RLE], mr_scp.destination, calling_ae=CALLING_AE) == [0x0000]
    (got,) = mr_scp.received
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.SOPInstanceUID == _uid(MR_RLE)  # the same instance, not a copy under a new UID
    np.testing.assert_array_equal(got.pixel_array, dcmread(MR_RLE).pixel_array)


def test_sop_class_the_destination_refuses_is_reported(mr_scp: MrOnlyScp) -> None:
    """A class the destination takes in no presentation context (a PACS without the LABELMAP
    SEG class) is refused at every attempt: final, so the rest is not sent again for a day."""
    with pytest.raises(
        ExportError, match=rf"1 of 2 .*CT Image Storage {_uid(CT)}.*no presentation context"
    ) as refused:
        store([CT, MR_RLE], mr_scp.destination, calling_ae=CALLING_AE)
    assert len(mr_scp.received) == 1
    assert refused.value.final
    assert not refused.value.unavailable
    assert "the other 1 were delivered" in refused.value.reason
    assert "output_kinds" in refused.value.reason


def test_class_not_supported_status_is_final_and_another_failure_is_not(
    mr_scp: MrOnlyScp,
) -> None:
    first, second = _renumbered(MR_RLE), _renumbered(MR_RLE)
    mr_scp.by_instance = {first.SOPInstanceUID: 0x0122}
    with pytest.raises(ExportError, match=r"status 0x0122") as refused:
        store([first, second], mr_scp.destination, calling_ae=CALLING_AE)
    assert refused.value.final
    mr_scp.by_instance[second.SOPInstanceUID] = 0xA700  # out of resources: may pass later
    with pytest.raises(ExportError, match=r"status 0x0122.*status 0xA700|0xA700.*0x0122") as both:
        store([first, second], mr_scp.destination, calling_ae=CALLING_AE)
    assert not both.value.final


@pytest.fixture
def implicit_only_scp() -> Iterator[MrOnlyScp]:
    """A pynetdicom SCP taking MR images and comprehensive SRs in Implicit VR Little Endian
    only: the default transfer syntax every SCP must take, and all some PACS are set to."""
    ae = AE("IMPLICIT")
    ae.add_supported_context(MRImageStorage, ImplicitVRLittleEndian)
    ae.add_supported_context(ComprehensiveSRStorage, ImplicitVRLittleEndian)
    scp = MrOnlyScp(
        DicomDestination(name="implicit", ae_title="IMPLICIT", host="127.0.0.1", port=1)
    )

    def on_store(event: evt.Event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        scp.received.append(dataset)
        return 0x0000

    yield from _serving(ae, scp, on_store)


def test_a_destination_taking_implicit_vr_only_gets_every_instance(
    implicit_only_scp: MrOnlyScp,
) -> None:
    """Explicit VR was the only uncompressed syntax proposed: such a PACS got nothing."""
    sent = store([COMPREHENSIVE_SR, MR_RLE], implicit_only_scp.destination, calling_ae=CALLING_AE)
    assert sent == [0x0000, 0x0000]
    sr, mr = sorted(
        implicit_only_scp.received, key=lambda ds: ds.SOPClassUID != ComprehensiveSRStorage
    )
    assert {sr.file_meta.TransferSyntaxUID, mr.file_meta.TransferSyntaxUID} == {
        ImplicitVRLittleEndian
    }
    assert mr.SOPInstanceUID == _uid(MR_RLE)
    np.testing.assert_array_equal(mr.pixel_array, dcmread(MR_RLE).pixel_array)


def test_unreadable_tls_files_hold_the_destination(tmp_path: Path) -> None:
    """A CA bundle not mounted (or mid-rotation) escaped as an unexpected error: each due
    delivery tried in turn, a traceback each, and the destination counted as back."""
    destination = _closed_port().model_copy(
        update={"tls": TlsFiles(ca_bundle=tmp_path / "missing-ca.pem")}
    )
    with pytest.raises(ExportError, match=r"missing-ca\.pem") as failed:
        store([COMPREHENSIVE_SR], destination, calling_ae=CALLING_AE)
    assert failed.value.unavailable


@pytest.mark.parametrize("warning", [0xB000, 0xB006, 0xB007])
def test_warning_status_counts_as_delivered(mr_scp: MrOnlyScp, warning: int) -> None:
    mr_scp.answers.append(warning)
    assert store([MR_RLE], mr_scp.destination, calling_ae=CALLING_AE) == [warning]


def test_a_destination_that_holds_the_instance_already_counts_it_delivered(
    mr_scp: MrOnlyScp,
) -> None:
    """Duplicate SOP Instance (0x0111) from a PACS that refuses what it holds: results sent
    again after a restart would otherwise fail for good although they are there."""
    mr_scp.answers.append(0x0111)
    assert store([MR_RLE], mr_scp.destination, calling_ae=CALLING_AE) == [0x0111]


def test_failure_status_names_code_and_instance(mr_scp: MrOnlyScp) -> None:
    mr_scp.answers.append(0xA700)
    with pytest.raises(
        ExportError, match=rf"'mr-only'.*MRSCP@.*{_uid(MR_RLE)}.*status 0xA700 \(Failure"
    ):
        store([MR_RLE], mr_scp.destination, calling_ae=CALLING_AE)


def test_abort_mid_transfer_says_how_far_it_got(mr_scp: MrOnlyScp) -> None:
    mr_scp.answers.extend([0x0000, None])
    first, second = _renumbered(MR_RLE), _renumbered(MR_RLE)
    with pytest.raises(
        ExportError, match=rf"no C-STORE response for .*{second.SOPInstanceUID}.*1 of 3 instances"
    ):
        store([first, second, MR_RLE], mr_scp.destination, calling_ae=CALLING_AE, timeout=5)


def test_parallel_associations_give_each_status_in_input_order(mr_scp: MrOnlyScp) -> None:
    instances = [_renumbered(MR_RLE) for _ in range(5)]
    codes = [0xB000, 0x0000, 0xB006, 0xB007, 0x0000]
    mr_scp.by_instance = {ds.SOPInstanceUID: c for ds, c in zip(instances, codes, strict=True)}
    parallel = mr_scp.destination.model_copy(update={"associations": 3})

    assert store(instances, parallel, calling_ae=CALLING_AE) == codes
    assert sorted(ds.SOPInstanceUID for ds in mr_scp.received) == sorted(
        ds.SOPInstanceUID for ds in instances
    )


def test_one_failing_association_fails_the_set_and_names_the_instance(mr_scp: MrOnlyScp) -> None:
    instances = [_renumbered(MR_RLE) for _ in range(4)]
    mr_scp.by_instance = {instances[2].SOPInstanceUID: 0xA700}
    parallel = mr_scp.destination.model_copy(update={"associations": 4})

    with pytest.raises(ExportError, match=rf"{instances[2].SOPInstanceUID}.*status 0xA700"):
        store(instances, parallel, calling_ae=CALLING_AE)
    # The other associations delivered theirs: the caller sends the whole set again.
    assert len(mr_scp.received) == 4


def test_a_lane_of_a_class_the_destination_does_not_take_is_no_association_limit(
    mr_scp: MrOnlyScp, caplog: pytest.LogCaptureFixture
) -> None:
    """A result set whose one lane carries only a class the PACS does not take (a SEG to a
    PACS without SEG) was taken for a limit of associations: "set associations = 3" logged,
    a fifth association opened for it, at every attempt."""
    instances = [_renumbered(MR_RLE), dcmread(CT), _renumbered(MR_RLE), _renumbered(MR_RLE)]
    parallel = mr_scp.destination.model_copy(update={"associations": 4})
    caplog.set_level(logging.WARNING, logger="lus_pacs.export.dimse")
    with pytest.raises(
        ExportError, match=r"accepted no presentation context .*CT Image Storage"
    ) as refused:
        store(instances, parallel, calling_ae=CALLING_AE)
    assert refused.value.final  # the other lanes delivered: not sent again for a day
    assert "set associations" not in caplog.text
    assert len(mr_scp.received) == 3


@pytest.mark.parametrize("mr_scp", [1], indirect=True)
def test_what_refused_associations_carried_goes_over_one_more(mr_scp: MrOnlyScp) -> None:
    """A destination that takes one association at a time (a limit per calling AE): the
    instances of the lanes it refused go after the others, every one delivered once."""
    instances = [_renumbered(MR_RLE) for _ in range(4)]
    parallel = mr_scp.destination.model_copy(update={"associations": 4})

    assert store(instances, parallel, calling_ae=CALLING_AE) == [0x0000] * 4
    assert sorted(ds.SOPInstanceUID for ds in mr_scp.received) == sorted(
        ds.SOPInstanceUID for ds in instances
    )


def test_a_destination_that_stops_reading_fails_the_send_within_its_timeout(
    orthanc: OrthancHandle,
) -> None:
    """Orthanc behind a link that passes 256 kB and then stops reading, the connection left
    open (a PACS whose storage stalls): before, the send waited for ever, and so did every
    later result for that destination."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def stalling_link() -> None:
        scanner_side, _ = listener.accept()
        pacs_side = socket.create_connection(("127.0.0.1", orthanc.dicom_port))
        held.extend((scanner_side, pacs_side))

        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := pacs_side.recv(65536):
                    scanner_side.sendall(data)

        threading.Thread(target=answers, daemon=True).start()
        passed = 0
        while passed < 256_000 and (data := scanner_side.recv(65536)):
            pacs_side.sendall(data)
            passed += len(data)

    threading.Thread(target=stalling_link, daemon=True).start()
    large = _renumbered(CT)
    large.Rows = large.Columns = 4096  # 32 MB: more than the kernel's buffers hold
    large.PixelData = bytes(4096 * 4096 * 2)
    stalled = DicomDestination(
        name="stalled", ae_title=orthanc.aet, host="127.0.0.1", port=listener.getsockname()[1]
    )
    failed: list[BaseException] = []

    def send() -> None:
        try:
            store([large], stalled, calling_ae=CALLING_AE, timeout=3)
        except BaseException as exc:
            failed.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    sender.start()
    sender.join(60)
    try:
        assert not sender.is_alive(), "the send still waits on the stalled destination"
        assert time.monotonic() - started < 30
        (error,) = failed
        assert isinstance(error, ExportError)
        assert "stalled" in str(error)
    finally:
        for connection in held:
            connection.close()
        listener.close()
