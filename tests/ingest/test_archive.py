"""Archive sources on one archive: two simulated exams and pydicom's real ultrasound cine, with an
SR result inside one exam, as files, as DICOMDIR media, and in a real Orthanc reached by C-GET,
C-MOVE and DICOMweb."""

from __future__ import annotations

import datetime
import http.server
import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom.uid
import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from lus_pacs.errors import ArchiveError
from lus_pacs.ingest.archive import ArchiveSource, ArchiveStudy, open_source
from tests.orthanc import OrthancHandle, free_ports, running_orthanc

CALLING_AE = "LUSPACS"
SOURCES = ("folder", "dicomdir", "dimse-get", "dimse-move", "dicomweb")

# Loopback only: bypass any http_proxy/https_proxy set in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@dataclass(frozen=True)
class Archive:
    folder: Path
    dicomdir: Path
    files: list[Path]
    studies: list[ArchiveStudy]
    """What every source must list, in this order."""
    pixels: dict[str, dict[str, bytes]] = field(repr=False)
    """Study Instance UID -> SOP Instance UID -> PixelData of each image instance."""


@pytest.fixture(scope="module")
def archive(synth_exams: Path, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    folder = root / "files"
    patients = sorted(p for p in synth_exams.iterdir() if (p / "R1.dcm").is_file())[:2]
    for patient in patients:  # with the truth JSON and masks, which a scan must pass over
        shutil.copytree(patient, folder / patient.name)
    (folder / "external").mkdir()
    shutil.copy(_testdata("color3d_jpeg_baseline.dcm"), folder / "external" / "CINE0001")
    images = [*sorted(folder.glob("*/*.dcm")), folder / "external" / "CINE0001"]

    # An earlier run's result inside the first exam: listed by the archive, never fetched.
    exam = dcmread(patients[0] / "R1.dcm", stop_before_pixels=True)
    sr = dcmread(_testdata("test-SR.dcm"))
    same_study = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription")
    for keyword in ("PatientID", "PatientName", *same_study):
        setattr(sr, keyword, exam[keyword].value)
    sr.StudyID = exam.get("StudyID", "1")
    sr.SeriesInstanceUID = exam.SeriesInstanceUID  # a mixed series: images asked for by UID
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.save_as(folder / patients[0].name / "result.dcm")
    files = [*images, folder / patients[0].name / "result.dcm"]

    media = FileSet()
    for path in files:
        media.add(path)
    media.write(root / "media")

    studies: dict[str, ArchiveStudy] = {}
    pixels: dict[str, dict[str, bytes]] = {}
    for path in images:
        ds = dcmread(path)
        studies[ds.StudyInstanceUID] = ArchiveStudy(
            ds.StudyInstanceUID, ds.PatientID, ds.StudyDate, ds.get("StudyDescription", "")
        )
        pixels.setdefault(ds.StudyInstanceUID, {})[ds.SOPInstanceUID] = ds.PixelData
    expected = sorted(studies.values(), key=lambda s: (s.study_date, s.study_instance_uid))
    assert len(expected) == 3
    assert len({s.study_date for s in expected}) == 3
    return Archive(folder, root / "media" / "DICOMDIR", files, expected, pixels)


@pytest.fixture(scope="module")
def orthanc(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    # Orthanc sends C-MOVE results only to a node it knows: ours, at a port chosen now.
    (move_port,) = free_ports(1)
    modalities = {"lus-pacs": (CALLING_AE, "127.0.0.1", move_port)}
    with running_orthanc(tmp_path_factory.mktemp("pacs"), modalities=modalities) as handle:
        for path in archive.files:
            request = urllib.request.Request(
                f"{handle.url}/instances",
                data=path.read_bytes(),
                method="POST",
                headers={"Content-Type": "application/dicom"},
            )
            with _OPENER.open(request, timeout=30) as answer:
                assert answer.status == 200, path
        assert handle.count() == len(archive.files)
        yield handle


def _dimse(orthanc: OrthancHandle) -> str:
    return f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, archive: Archive) -> ArchiveSource:
    kind = request.param
    if kind == "folder":
        return open_source(str(archive.folder))
    if kind == "dicomdir":
        return open_source(str(archive.dicomdir))
    orthanc: OrthancHandle = request.getfixturevalue("orthanc")
    if kind == "dicomweb":
        return open_source(f"{orthanc.url}/dicom-web/")
    move_port = orthanc.modalities["lus-pacs"][2]
    if kind == "dimse-get":
        return open_source(_dimse(orthanc), calling_ae=CALLING_AE, retrieve="get")
    return open_source(_dimse(orthanc), calling_ae=CALLING_AE, retrieve="move", move_port=move_port)


def test_studies_are_the_ultrasound_studies_in_date_order(
    source: ArchiveSource, archive: Archive
) -> None:
    assert source.studies() == archive.studies


def test_since_keeps_the_studies_of_that_date_and_later(
    source: ArchiveSource, archive: Archive
) -> None:
    old, first, last = archive.studies
    assert source.studies(since=date(2020, 1, 1)) == [first, last]
    assert source.studies(since=date.fromisoformat(last.study_date)) == [last]
    assert source.studies(since=date(2100, 1, 1)) == []
    assert old.study_date < "2020"


def test_fetch_brings_exactly_the_image_instances_unchanged(
    source: ArchiveSource, archive: Archive, tmp_path: Path
) -> None:
    for study in archive.studies:
        folder = tmp_path / study.study_instance_uid
        paths = source.fetch(study, folder)
        assert folder.is_dir()
        assert paths == sorted(paths)
        datasets = {path: dcmread(path) for path in paths}
        expected = archive.pixels[study.study_instance_uid]
        assert sorted(ds.SOPInstanceUID for ds in datasets.values()) == sorted(expected)
        for path, ds in datasets.items():
            assert ds.PixelData == expected[ds.SOPInstanceUID], path
            if not source.name.startswith("folder:"):
                assert path == folder / f"{ds.SOPInstanceUID}.dcm"


def test_fetch_of_a_study_the_archive_lacks_raises(source: ArchiveSource, tmp_path: Path) -> None:
    missing = ArchiveStudy("1.2.826.0.1.3680043.99.1", "NOBODY", "20200101", "")
    with pytest.raises(ArchiveError, match=r"1\.2\.826\.0\.1\.3680043\.99\.1"):
        source.fetch(missing, tmp_path / "missing")


def test_unreachable_dimse_archive_raises() -> None:
    (port,) = free_ports(1)
    source = open_source(f"dimse://PACS@127.0.0.1:{port}", timeout=2)
    with pytest.raises(ArchiveError, match=rf"cannot connect to PACS@127\.0\.0\.1:{port}"):
        source.studies()


def test_c_move_to_a_destination_the_archive_does_not_know_raises(
    orthanc: OrthancHandle, archive: Archive, tmp_path: Path
) -> None:
    source = open_source(_dimse(orthanc), calling_ae="STRANGER", retrieve="move")
    study = archive.studies[0]
    with pytest.raises(ArchiveError, match=r"C-MOVE ended with status 0x[0-9A-F]{4}") as caught:
        source.fetch(study, tmp_path)
    assert study.study_instance_uid in str(caught.value)
    assert "'STRANGER'" in str(caught.value)


def test_dicomweb_http_error_names_the_url_and_status(orthanc: OrthancHandle) -> None:
    source = open_source(f"{orthanc.url}/no-dicom-web")
    with pytest.raises(ArchiveError, match=r"/no-dicom-web/studies\?.* answered HTTP 404"):
        source.studies()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dimse://PACS@127.0.0.1", "dimse://AET@host:port"),
        ("ftp://archive/exams", "unknown scheme"),
        ("{tmp}/absent", "no such folder or DICOMDIR"),
        ("{tmp}/notes.dcm", "not a DICOMDIR"),
    ],
)
def test_open_source_rejects_what_it_cannot_read(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "notes.dcm").write_text("not DICOM")
    with pytest.raises(ArchiveError, match=message):
        open_source(spec.format(tmp=tmp_path))


def test_credentials_in_a_dicomweb_url_are_refused_without_being_shown() -> None:
    """urllib took user:password@ for part of the host: nothing was reached, and the error
    named the URL with the password in it (stderr, the log)."""
    with pytest.raises(ArchiveError, match="credentials in the URL are not used") as caught:
        open_source("http://alice:S3cret@127.0.0.1:8042/dicom-web")
    assert "S3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_a_password_with_a_hash_in_a_dicomweb_url_is_refused_too() -> None:
    """A "#" in the password ends the URL's authority before its "@": urllib saw no user, the
    URL passed, and its password reached every error and the archive's name."""
    with pytest.raises(ArchiveError, match="credentials in the URL are not used") as caught:
        open_source("https://admin:S3c#ret@127.0.0.1:8042/dicom-web")
    assert "S3c" not in str(caught.value)


def test_a_dicomdir_file_outside_its_media_is_not_read(tmp_path: Path) -> None:
    """A ReferencedFileID of ".." reached a file beside the media (another patient's): it was
    listed and processed as the media's study."""
    (tmp_path / "media").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(_testdata("US1_UNCR.dcm"), tmp_path / "elsewhere" / "OTHERPAT.dcm")
    record = Dataset()
    record.DirectoryRecordType = "IMAGE"
    record.ReferencedFileID = ["..", "elsewhere", "OTHERPAT.dcm"]
    media = Dataset()
    media.DirectoryRecordSequence = [record]
    media.file_meta = FileMetaDataset()
    media.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")
    media.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    media.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dcmwrite(tmp_path / "media" / "DICOMDIR", media, enforce_file_format=True)
    assert open_source(str(tmp_path / "media" / "DICOMDIR")).studies() == []
    # A folder of the media that is a link elsewhere (a cohort assembled of links) is read.
    fileset = FileSet()
    fileset.add(dcmread(_testdata("US1_UNCR.dcm")))
    fileset.write(tmp_path / "linked")
    shutil.move(tmp_path / "linked" / "PT000000", tmp_path / "store")
    (tmp_path / "linked" / "PT000000").symlink_to(tmp_path / "store")
    assert len(open_source(str(tmp_path / "linked" / "DICOMDIR")).studies()) == 1


def test_c_get_takes_every_syntax_the_node_decodes_in_the_contexts_it_has() -> None:
    """HTJ2K (decoded here) had no C-GET context, so an HTJ2K cine failed its whole study,
    while four contexts went to MPEG and HEVC video, which the node cannot read."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    from lus_pacs.dicom_vocabulary import IMAGE_SOP_CLASSES
    from lus_pacs.imaging.decode import decodable_syntaxes
    from lus_pacs.ingest.archive.dimse import _OTHER_CLASSES, _RETRIEVE_SYNTAXES

    decodable = decodable_syntaxes(ALL_TRANSFER_SYNTAXES)
    assert pydicom.uid.HTJ2KLossless in decodable  # the decoder the node has
    assert set(_RETRIEVE_SYNTAXES) == set(decodable)
    assert not {pydicom.uid.MPEG2MPML, pydicom.uid.HEVCMP51} & set(_RETRIEVE_SYNTAXES)
    assert len(IMAGE_SOP_CLASSES) * len(_RETRIEVE_SYNTAXES) + 1 + len(_OTHER_CLASSES) <= 128


def test_dicomdir_media_copied_in_lower_case_or_short_of_a_file_is_read_and_told(
    tmp_path: Path,
) -> None:
    """A CD copied with lower-case names (pt000000/...) gave no study and no word; a file the
    DICOMDIR references missing left its cine out without a word."""
    source = _testdata("US1_UNCR.dcm")
    fileset = FileSet()
    for i in range(3):
        ds = dcmread(source)
        ds.SOPInstanceUID = generate_uid()
        if i == 2:
            ds.StudyInstanceUID = generate_uid()
        ds.save_as(tmp_path / f"in{i}.dcm")
        fileset.add(tmp_path / f"in{i}.dcm")
    fileset.write(tmp_path / "media")
    lower = tmp_path / "lower"
    shutil.copytree(tmp_path / "media", lower)
    for path in sorted(lower.rglob("*"), key=lambda p: -len(p.parts)):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))
    archive = open_source(str(lower / "DICOMDIR"))
    studies = archive.studies()
    assert len(studies) == 2
    fetched = [p for study in studies for p in archive.fetch(study, tmp_path / "f")]
    assert len(fetched) == 3
    assert all(p.is_file() for p in fetched)
    assert archive.skipped == ()

    short = tmp_path / "short"
    shutil.copytree(tmp_path / "media", short)
    gone = sorted(p for p in short.rglob("*") if p.is_file() and p.name != "DICOMDIR")[0]
    gone.unlink()
    archive = open_source(str(short / "DICOMDIR"))
    assert len(archive.studies()) == 2
    ((skipped_path, reason),) = archive.skipped
    assert Path(skipped_path) == gone
    assert reason == "referenced by the DICOMDIR but not found"


def test_a_configured_archive_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    from lus_pacs.settings import DicomDestination, TlsFiles, WebDestination

    web = WebDestination(
        name="web", url="https://pacs.invalid/dicom-web", ca_bundle=tmp_path / "absent.pem"
    )
    with pytest.raises(ArchiveError, match=r"cannot load the CA bundle .*absent\.pem"):
        open_source("dicomweb://web", web_servers=[web])
    with pytest.raises(ArchiveError, match=r"no DICOM node 'pacs'.*\[\]"):
        open_source("dimse://pacs")
    # Over TLS, C-MOVE's receiver presents this node's certificate: none given, refused at once.
    pacs = DicomDestination(
        name="pacs", ae_title="PACS", host="127.0.0.1", port=104, tls=TlsFiles(ca_bundle=None)
    )
    with pytest.raises(ArchiveError, match="C-MOVE over TLS needs this node's certificate"):
        open_source("dimse://pacs", retrieve="move", dicom_nodes=[pacs])


def test_a_damaged_or_unnamed_file_in_a_folder_is_skipped_not_the_archive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom reads this header but raises when its SOP Instance UID is asked for (a VR it
    does not know); another file names its study by a path. Each is skipped with a warning;
    the good file's study is listed."""
    good = _testdata("US1_UNCR.dcm")
    data = bytearray(good.read_bytes())
    at = data.find(bytes.fromhex("08001800"), 132 + 200)  # (0008,0018) in the data set
    data[at + 4 : at + 6] = b"ZZ"
    (tmp_path / "damaged.dcm").write_bytes(bytes(data))
    unnamed = dcmread(good)
    unnamed.StudyInstanceUID = "../1.2.3"
    unnamed.SOPInstanceUID = generate_uid()
    unnamed.save_as(tmp_path / "unnamed.dcm")
    shutil.copy(good, tmp_path / "good.dcm")
    with caplog.at_level("WARNING", logger="lus_pacs.ingest.archive.folder"):
        studies = open_source(str(tmp_path)).studies()
    assert [s.study_instance_uid for s in studies] == [dcmread(good).StudyInstanceUID]
    assert "damaged.dcm: not readable as DICOM" in caplog.text
    assert "unnamed.dcm: no valid SOP Instance UID or Study Instance UID" in caplog.text


def test_a_damaged_instance_on_a_dicomweb_server_fails_its_study_not_the_run(
    tmp_path: Path,
) -> None:
    """pydicom reads the header but raises a NotImplementedError when its SOP Instance UID is
    asked for (a VR it does not know; Orthanc refuses such a file, a server may not): before,
    that error ended ``reprocess`` at this study on every run."""
    good = dcmread(_testdata("US1_UNCR.dcm"))
    data = bytearray(_testdata("US1_UNCR.dcm").read_bytes())
    at = data.find(bytes.fromhex("08001800"), 132 + 200)  # (0008,0018) in the data set
    data[at + 4 : at + 6] = b"ZZ"
    listing = [
        {
            "00080016": {"vr": "UI", "Value": [str(good.SOPClassUID)]},
            "00080018": {"vr": "UI", "Value": [str(good.SOPInstanceUID)]},
            "0020000E": {"vr": "UI", "Value": [str(good.SeriesInstanceUID)]},
        }
    ]

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            instances = "/instances?" in self.path or "/studies?" in self.path
            body = json.dumps(listing).encode() if instances else bytes(data)
            self.send_response(200)
            kind = "application/dicom+json" if instances else "application/dicom"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = open_source(f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
        study = ArchiveStudy(str(good.StudyInstanceUID), "", "", "")
        with pytest.raises(ArchiveError, match="answered no readable DICOM Part 10 file"):
            source.fetch(study, tmp_path / "fetched")
    finally:
        server.shutdown()
        server.server_close()


def test_a_dicomweb_server_that_caps_its_answers_fails_the_study_not_silently(
    archive: Archive, tmp_path: Path
) -> None:
    """Orthanc with LimitFindInstances below a study's size answers the first instances and
    nothing after: 101 of a study's 1,200 instances were fetched, the study recorded done, and
    the rest never processed, also after the cap was raised."""
    capped = {"LimitFindInstances": 2, "LimitFindResults": 2}
    with running_orthanc(tmp_path / "pacs", extra_config=capped) as orthanc:
        patient = sorted(p for p in archive.folder.iterdir() if (p / "R1.dcm").is_file())[0]
        for path in sorted(patient.glob("*.dcm")):
            orthanc.upload(path)
        study = dcmread(patient / "R1.dcm", stop_before_pixels=True).StudyInstanceUID
        source = open_source(f"{orthanc.url}/dicom-web")
        (found,) = [s for s in source.studies() if s.study_instance_uid == study]
        with pytest.raises(ArchiveError, match=r"listed \d+ of the study's \d+ instances"):
            source.fetch(found, tmp_path / "fetched")


def test_a_pacs_that_cuts_its_study_list_short_is_asked_by_date_ranges(tmp_path: Path) -> None:
    """Orthanc with LimitFindResults below the number of studies ends its C-FIND with Cancel:
    the run ended there, and such a PACS could not be re-processed at all. Five studies of five
    days behind a limit of two are all listed; two studies of one day behind a limit of one
    are named as the day the archive cuts short."""
    dates = ["20210101", "20210102", "20210103", "20210104", "20210105"]
    with running_orthanc(tmp_path / "pacs", extra_config={"LimitFindResults": 2}) as orthanc:
        for i, date in enumerate(dates):
            ds = dcmread(_testdata("US1_UNCR.dcm"))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.StudyDate = date
            ds.save_as(tmp_path / f"s{i}.dcm", enforce_file_format=True)
            orthanc.upload(tmp_path / f"s{i}.dcm")
        listed = open_source(_dimse(orthanc)).studies()
        assert [s.study_date for s in listed] == dates
        since = open_source(_dimse(orthanc)).studies(datetime.date(2021, 1, 3))
        assert [s.study_date for s in since] == dates[2:]
    with running_orthanc(tmp_path / "pacs1", extra_config={"LimitFindResults": 1}) as orthanc:
        for i in range(2):
            orthanc.upload(tmp_path / f"s{i}.dcm")
            ds = dcmread(tmp_path / f"s{i}.dcm")
            ds.StudyInstanceUID, ds.StudyDate = generate_uid(), "20210101"
            ds.save_as(tmp_path / f"same{i}.dcm", enforce_file_format=True)
            orthanc.upload(tmp_path / f"same{i}.dcm")
        with pytest.raises(ArchiveError, match="cut short the studies of 2021-01-01 alone"):
            open_source(_dimse(orthanc)).studies()


def test_an_archive_without_c_get_says_to_retrieve_by_c_move(tmp_path: Path) -> None:
    """Many PACS answer C-FIND and C-MOVE but not C-GET: the association took only the query
    model and the run ended with pynetdicom's ValueError and a traceback. It is the study's
    archive error, naming the other way to retrieve."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        UltrasoundMultiFrameImageStorage,
    )

    study, series, image = generate_uid(), generate_uid(), generate_uid()

    def answer(event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        found = Dataset()
        found.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        found.StudyInstanceUID, found.SeriesInstanceUID = study, series
        found.SOPInstanceUID, found.SOPClassUID = image, UltrasoundMultiFrameImageStorage
        yield 0xFF00, found

    ae = AE(ae_title="FINDONLY")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(UltrasoundMultiFrameImageStorage)  # it stores; it has no C-GET
    (port,) = free_ports(1)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, answer)]
    )
    assert server is not None
    try:
        source = open_source(f"dimse://FINDONLY@127.0.0.1:{port}", retrieve="get", timeout=5)
        listed = ArchiveStudy(study, "P1", "20200101", "")
        with pytest.raises(ArchiveError, match=r"does not offer .*GET; use --retrieve move"):
            source.fetch(listed, tmp_path / "fetched")
    finally:
        server.shutdown()


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_a_study_holding_results_is_fetched_from_an_archive_that_hides_classes(
    tmp_path: Path, retrieve: str
) -> None:
    """An archive whose image-level C-FIND leaves the SOP class out (an optional key) is asked
    for every instance; a study holding an SR (this node's earlier results) failed whole: no
    context took the SR (C-GET) or the receiver refused it (C-MOVE). The SR is taken and
    dropped, the cines fetched."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        ComprehensiveSRStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
        UltrasoundImageStorage,
    )

    study = generate_uid()
    held: list[Dataset] = []
    for kind in ("US", "US", "SR"):
        ds = dcmread(_testdata("US1_UNCR.dcm" if kind == "US" else "test-SR.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.{len(held) // 2 + 1}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        held.append(ds)
    scp_port, move_port = free_ports(2)

    def matching(identifier: Dataset) -> list[Dataset]:
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        wanted = {k: identifier.get(k) for k in keys if identifier.get(k)}
        return [
            ds
            for ds in held
            if all(str(ds.get(k)) in ([v] if isinstance(v, str) else v) for k, v in wanted.items())
        ]

    def find(event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        level = event.identifier.QueryRetrieveLevel
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}.get(level)
        seen: set[str] = set()
        for ds in matching(event.identifier):
            uid = str(ds.get(key or "SOPInstanceUID"))
            if uid in seen:
                continue
            seen.add(uid)
            found = Dataset()
            found.QueryRetrieveLevel = level
            found.StudyInstanceUID = study
            if level == "STUDY":
                found.ModalitiesInStudy, found.PatientID, found.StudyDate = "US", "P", "20200101"
            if level in ("SERIES", "IMAGE"):
                found.SeriesInstanceUID = ds.SeriesInstanceUID
            if level == "IMAGE":
                found.SOPInstanceUID, found.SOPClassUID = ds.SOPInstanceUID, ""  # left out
            yield 0xFF00, found

    def get(event: evt.Event) -> Iterator[int | tuple[int, Dataset]]:
        found = matching(event.identifier)
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    def move(event: evt.Event) -> Iterator[tuple[str, int] | int | tuple[int, Dataset]]:
        found = matching(event.identifier)
        yield "127.0.0.1", move_port
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    ae = AE(ae_title="HIDING")
    for model in (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        ae.add_supported_context(model)
    for sop in (UltrasoundImageStorage, ComprehensiveSRStorage):
        ae.add_supported_context(sop, scu_role=True, scp_role=True)
        ae.add_requested_context(sop)
    handlers: list[Any] = [(evt.EVT_C_FIND, find), (evt.EVT_C_GET, get), (evt.EVT_C_MOVE, move)]
    server = ae.start_server(("127.0.0.1", scp_port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        source = open_source(
            f"dimse://HIDING@127.0.0.1:{scp_port}",
            retrieve=retrieve,  # type: ignore[arg-type]
            move_port=move_port,
            timeout=10,
        )
        (listed,) = source.studies()
        fetched = source.fetch(listed, tmp_path / "fetched")
    finally:
        server.shutdown()
    assert sorted(dcmread(p).SOPInstanceUID for p in fetched) == sorted(
        str(ds.SOPInstanceUID) for ds in held[:2]
    )


def test_a_folder_of_linked_exam_folders_is_read_through_the_links(
    archive: Archive, tmp_path: Path
) -> None:
    """A cohort assembled as links to exam folders elsewhere: the scan did not follow linked
    folders, listed no study and the run looked complete. A link back up the tree, or a
    second link to the same exam, is read once."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    exams = sorted(p for p in archive.folder.iterdir() if (p / "R1.dcm").is_file())
    for exam in exams:
        (cohort / exam.name).symlink_to(exam, target_is_directory=True)
    (cohort / "again").symlink_to(exams[0], target_is_directory=True)
    (cohort / "loop").symlink_to(cohort, target_is_directory=True)
    listed = open_source(str(cohort)).studies()
    expected = {dcmread(e / "R1.dcm", stop_before_pixels=True).StudyInstanceUID for e in exams}
    assert {s.study_instance_uid for s in listed} == expected
    source = open_source(str(cohort))
    (first,) = [s for s in source.studies() if s.study_instance_uid == sorted(expected)[0]]
    fetched = source.fetch(first, tmp_path / "fetched")
    assert len(fetched) == len(
        {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in fetched}
    )
    assert source.skipped == ()  # nothing read twice
