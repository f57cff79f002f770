"""DICOM TLS on loopback with certificates made here by openssl: dcmtk's echoscu and storescu
``+tls`` against the listener, a plain association and a certificate of another CA refused, and
results sent to, and an archive re-processed from, an Orthanc that speaks DICOM TLS only."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import prometheus_client
import pytest

from lus_pacs.domain import Instance, Received
from lus_pacs.errors import ArchiveError, ConfigError, ExportError
from lus_pacs.export.dimse import store
from lus_pacs.ingest.archive import open_source
from lus_pacs.ingest.scp import Listener, start_listener
from lus_pacs.settings import DicomDestination, Settings, TlsFiles
from lus_pacs.tls import server_context
from tests.ingest.test_scp import US_IMAGE
from tests.ingest.test_security import _start
from tests.orthanc import free_ports, running_orthanc


@dataclass(frozen=True)
class Pki:
    """Two CAs; the node's, a scanner's and Orthanc's certificates from the first, an
    intruder's from the second."""

    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=lus-pacs test {name}",
    )  # fmt: skip


def _leaf(folder: Path, name: str, ca: str) -> None:
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _ca(folder, ca)
    for leaf in ("node", "scanner", "orthanc"):
        _leaf(folder, leaf, "ca")
    _leaf(folder, "intruder", "other-ca")
    return Pki(folder)


def _listener(pki: Pki, tmp_path: Path, stored: list[Instance]) -> Listener:
    settings = Settings(
        data_dir=tmp_path,
        port=0,
        allowed_calling_aes=("SCANNER",),
        tls=TlsFiles(
            certificate=pki["node.pem"], private_key=pki["node.key"], ca_bundle=pki["ca.pem"]
        ),
    )

    def record(instance: Instance) -> Received:
        stored.append(instance)
        return Received.NEW

    return start_listener(
        settings, record=record, on_stored=lambda: None, on_study_complete=lambda _: None
    )


def _dcmtk(
    tool: str, port: int, pki: Pki, who: str | None, *files: str
) -> subprocess.CompletedProcess[str]:
    tls = (
        ["+tls", str(pki[f"{who}.key"]), str(pki[f"{who}.pem"]), "+cf", str(pki["ca.pem"])]
        if who
        else []
    )
    return subprocess.run(
        [
            tool,
            *tls,
            "-aet",
            "SCANNER",
            "-aec",
            "LUSPACS",
            "-to",
            "10",
            "127.0.0.1",
            str(port),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dcmtk_echoes_and_stores_over_tls_and_the_rest_is_refused(pki: Pki, tmp_path: Path) -> None:
    assert shutil.which("echoscu")
    assert shutil.which("openssl")
    stored: list[Instance] = []
    listener = _listener(pki, tmp_path, stored)
    try:
        port = listener.port
        echo = _dcmtk("echoscu", port, pki, "scanner")
        push = _dcmtk("storescu", port, pki, "scanner", str(US_IMAGE))
        plain = _dcmtk("echoscu", port, pki, None)
        intruder = _dcmtk("echoscu", port, pki, "intruder")
        again = _dcmtk("echoscu", port, pki, "scanner")  # the refusals left the listener working
    finally:
        listener.stop()
    assert echo.returncode == 0, echo.stderr
    assert push.returncode == 0, push.stderr
    assert [i.sop_instance_uid for i in stored] == [str(_uid(US_IMAGE))]
    assert plain.returncode != 0
    assert intruder.returncode != 0
    assert again.returncode == 0, again.stderr


def test_a_silent_connection_holds_no_scanner_up(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # pynetdicom did each handshake in its accept loop: one TCP connection that sent nothing
    # held every later one (a scanner's echo timed out) for as long as it stayed open.
    listener = _listener(pki, tmp_path, [])
    silent = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    try:
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            echo = _dcmtk("echoscu", listener.port, pki, "scanner")
            with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as other:
                other.sendall(b"not a TLS record" * 8)
                deadline = time.monotonic() + 5
                while "TLS handshake failed" not in caplog.text:
                    assert time.monotonic() < deadline, caplog.text
                    time.sleep(0.05)
    finally:
        silent.close()
        listener.stop()
    assert echo.returncode == 0, echo.stderr
    assert "Refused a connection from 127.0.0.1: TLS handshake failed" in caplog.text


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_results_reach_an_orthanc_that_speaks_tls_only(pki: Pki, tmp_path: Path) -> None:
    tls_only = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki["orthanc.pem"]),
        "DicomTlsPrivateKey": str(pki["orthanc.key"]),
        "DicomTlsTrustedCertificates": str(pki["ca.pem"]),
        "DicomTlsRemoteCertificateRequired": True,
    }
    (move_port,) = free_ports(1)
    receiver = {"lus-pacs": ("LUSPACS", "127.0.0.1", move_port)}
    with running_orthanc(
        tmp_path, extra_config=tls_only, modalities=receiver, tls_modalities=frozenset(receiver)
    ) as orthanc:
        plain = DicomDestination(
            name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
        )
        secure = plain.model_copy(
            update={
                "tls": TlsFiles(
                    certificate=pki["node.pem"],
                    private_key=pki["node.key"],
                    ca_bundle=pki["ca.pem"],
                )
            }
        )
        with pytest.raises(ExportError):
            store([US_IMAGE], plain, calling_ae="LUSPACS")
        store([US_IMAGE], secure, calling_ae="LUSPACS")
        assert orthanc.count() == 1
        # The same PACS as an archive to re-process, by its name in the settings: C-FIND, then
        # C-GET or C-MOVE (to our Storage SCP, TLS as well), all over TLS; plain is refused.
        ways: tuple[tuple[Literal["get", "move"], int], ...] = (("get", 0), ("move", move_port))
        for retrieve, port in ways:
            archive = open_source(
                "dimse://pacs", calling_ae="LUSPACS", retrieve=retrieve, move_port=port,
                dicom_nodes=[secure],
            )  # fmt: skip
            (study,) = archive.studies()
            fetched = archive.fetch(study, tmp_path / retrieve)
            assert [_uid(path) for path in fetched] == [_uid(US_IMAGE)], retrieve
        with pytest.raises(ArchiveError):
            open_source("dimse://pacs", calling_ae="LUSPACS", dicom_nodes=[plain]).studies()
        # The node refuses a PACS whose certificate its CA bundle did not sign.
        stranger = secure.model_copy(update={"tls": TlsFiles(ca_bundle=pki["other-ca.pem"])})
        with pytest.raises(ExportError, match="TLS"):
            store([US_IMAGE], stranger, calling_ae="LUSPACS")


def test_a_listener_requiring_client_certificates_needs_a_ca_bundle(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="ca_bundle"):
        server_context(TlsFiles(certificate=pki["node.pem"], private_key=pki["node.key"]))
    with pytest.raises(ConfigError, match="cannot load"):
        server_context(
            TlsFiles(
                certificate=pki["node.pem"], private_key=pki["ca.key"], ca_bundle=pki["ca.pem"]
            )
        )


def test_a_scanner_speaking_tls_to_the_plain_listener_is_told_at_once(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scanner set up for DICOM TLS against a plain listener: its handshake was read as PDUs
    of an unknown type, and the connection held a thread until the network timeout with
    pynetdicom's log lines only. It is shut at once, the log naming the cause and the fix."""
    settings = Settings(
        data_dir=tmp_path, port=0, allowed_calling_aes=("SCANNER",), network_timeout_s=30
    )
    listener = _start(settings)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="lus_pacs.ingest.scp"):
            secure = _dcmtk("echoscu", listener.port, pki, "scanner")
        took = time.monotonic() - start
        plain = _dcmtk("echoscu", listener.port, pki, None)  # the plain one still gets in
    finally:
        listener.stop()
    assert secure.returncode != 0
    assert took < 8, took  # not the network timeout, nor dcmtk's own (10 s)
    assert "opened with a TLS handshake" in caplog.text
    assert plain.returncode == 0, plain.stderr


def _expired_leaf(folder: Path, name: str) -> None:
    """A certificate of the first CA that expired in 2020 (``openssl ca`` sets the dates)."""
    (folder / "index.txt").touch()
    (folder / "serial").write_text("1000\n")
    (folder / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n"
    )
    _openssl(
        folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        folder, "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
        "-in", f"{name}.csr", "-out", f"{name}.pem",
        "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
    )  # fmt: skip


def test_the_listener_certificate_dates_are_watched(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired listener certificate was loaded without a word: every scanner's handshake
    failed while /healthz said ok. It is logged at start (an expiring one too), /healthz says
    so, and the expiry is a metric to alert on."""
    from lus_pacs.node import Node
    from lus_pacs.pipeline import Models

    folder = tmp_path / "pki"
    shutil.copytree(pki.folder, folder)
    _expired_leaf(folder, "stale")
    models = Models.load(Settings(models=("b_lines",)))
    expected = {"node": (True, "expires on"), "stale": (False, "expired on 2020-01-02")}
    for name, (valid, said) in expected.items():
        settings = Settings(
            data_dir=tmp_path / name,
            port=0,
            metrics_port=None,
            models=("b_lines",),
            allowed_calling_aes=("SCANNER",),
            tls=TlsFiles(
                certificate=folder / f"{name}.pem",
                private_key=folder / f"{name}.key",
                ca_bundle=folder / "ca.pem",
            ),
        )
        node = Node(settings, models)
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="lus_pacs.node"):
                node.start()
            healthy, checks = node.health()
            exposed = prometheus_client.generate_latest(node.metrics.registry).decode()
        finally:
            node.stop()
        assert said in caplog.text
        assert checks["tls_certificate"] is valid
        assert healthy is valid, checks
        assert "lus_pacs_tls_certificate_expiry_timestamp_seconds " in exposed
