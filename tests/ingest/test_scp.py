"""The DICOM listener with dcmtk's real echoscu and storescu on loopback."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from lus_pacs.ingest.scp import Receiver, make_ae
from lus_pacs.queue.store import JobState, JobStore
from lus_pacs.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed")


class Listener:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.store_path)
        self.stored = 0
        self.completed: list[str] = []
        self.released = threading.Event()
        receiver = Receiver(settings, self.store, "m@1", self._stored, self._complete)
        server = make_ae(settings).start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=receiver.handlers()
        )
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def _stored(self) -> None:
        self.stored += 1

    def _complete(self, studies: list[str]) -> None:
        self.completed.extend(studies)
        self.released.set()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    node = Listener(Settings(data_dir=tmp_path, allowed_calling_aes=("SCANNER",)))
    yield node
    node.server.shutdown()


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


def test_echo_from_an_allowed_ae_and_rejection_of_others(listener: Listener) -> None:
    assert _dcmtk("echoscu", listener.port).returncode == 0
    rejected = _dcmtk("echoscu", listener.port, aet="INTRUDER")
    assert rejected.returncode != 0
    assert "Rejected" in rejected.stderr + rejected.stdout


def test_a_pushed_cine_is_on_disk_and_queued_before_release(
    listener: Listener, synth_exams: Path
) -> None:
    cine = next(synth_exams.glob("*/R1.dcm"))
    result = _dcmtk("storescu", listener.port, str(cine), options=("-xy",))
    assert result.returncode == 0, result.stderr
    source = pydicom.dcmread(cine)
    (job,) = listener.store.jobs()
    assert job.sop_instance_uid == source.SOPInstanceUID
    assert job.state is JobState.QUEUED
    claimed = listener.store.claim_job()
    assert claimed is not None
    stored = pydicom.dcmread(claimed.instance.path)
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit  # as sent (-xy)
    assert stored.PixelData == source.PixelData
    assert listener.released.wait(10)
    assert listener.completed == [source.StudyInstanceUID]
    assert listener.stored == 1


def test_a_ct_image_is_refused_with_a_status(listener: Listener, tmp_path: Path) -> None:
    ct = str(get_testdata_file("CT_small.dcm"))
    result = _dcmtk("storescu", listener.port, ct, options=("-v",))
    assert result.returncode != 0
    assert "Refused: SOPClassNotSupported" in result.stdout + result.stderr
    assert listener.store.jobs() == []


def test_ignoring_unsupported_classes_acknowledges_without_storing(tmp_path: Path) -> None:
    node = Listener(Settings(data_dir=tmp_path, unsupported_sop_class="ignore"))
    try:
        result = _dcmtk("storescu", node.port, str(get_testdata_file("CT_small.dcm")))
        assert result.returncode == 0, result.stderr
        assert node.store.jobs() == []
        assert not (tmp_path / "incoming").exists()
    finally:
        node.server.shutdown()
