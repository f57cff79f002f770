"""STOW-RS to Orthanc's DICOMweb plugin: instances stored, HTTP errors and missing credentials
as export errors, basic authentication from a file or a variable (for STOW-RS, and for the same
server read as an archive), and the node's deliveries made exactly once across a restart."""

from __future__ import annotations

import contextlib
import grp
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from lus_pacs.errors import ArchiveError, ExportError
from lus_pacs.export.stow import _authorisation, stow
from lus_pacs.ingest.archive import open_source
from lus_pacs.settings import WebDestination
from tests.node_process import NodeProcess, storescu, write_config
from tests.orthanc import free_ports, running_orthanc

US_IMAGE = Path(str(get_testdata_file("US1_UNCR.dcm")))
CT_IMAGE = Path(str(get_testdata_file("CT_small.dcm")))


def test_instances_are_stored_and_errors_are_export_errors(tmp_path: Path) -> None:
    with running_orthanc(tmp_path) as orthanc:
        web = WebDestination(name="web", url=f"{orthanc.url}/dicom-web")
        uids = stow([US_IMAGE, CT_IMAGE], web)
        assert len(uids) == 2
        assert orthanc.count() == 2
        stored = {orthanc.instance_tags(i["ID"])["SOPInstanceUID"] for i in orthanc.instances()}
        assert stored == set(uids)
        nowhere = web.model_copy(update={"url": f"{orthanc.url}/no-dicom-web-here"})
        with pytest.raises(ExportError, match="HTTP 404"):
            stow([US_IMAGE], nowhere)
    with pytest.raises(ExportError, match="cannot reach"):
        stow([US_IMAGE], web)  # Orthanc is gone


def test_basic_authentication_from_a_file_or_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"AuthenticationEnabled": True, "RegisteredUsers": {"lus": "s3cret-pw"}}
    with running_orthanc(tmp_path, extra_config=users, credentials=("lus", "s3cret-pw")) as orthanc:
        url = f"{orthanc.url}/dicom-web"
        with pytest.raises(ExportError, match=r"HTTP 401.*credentials") as refused:
            stow([US_IMAGE], WebDestination(name="web", url=url))
        assert refused.value.unavailable  # every delivery would be refused alike
        secret = tmp_path / "password"
        secret.write_text("s3cret-pw\n")
        stow([US_IMAGE], WebDestination(name="web", url=url, username="lus", password_file=secret))
        assert orthanc.count() == 1
        monkeypatch.setenv("LUS_PACS_TEST_PASSWORD", "s3cret-pw")
        by_variable = WebDestination(
            name="web", url=url, username="lus", password_env="LUS_PACS_TEST_PASSWORD"
        )
        stow([CT_IMAGE], by_variable)
        assert orthanc.count() == 2
        # The same server as an archive to re-process (QIDO-RS, WADO-RS) by its name in the
        # settings, with the same credentials; without them it answers 401.
        archive = open_source("dicomweb://web", web_servers=[by_variable])
        (study,) = archive.studies()  # the ultrasound study; the CT is no lung cine
        fetched = archive.fetch(study, tmp_path / "fetched")
        assert [dcmread(p).SOPInstanceUID for p in fetched] == [dcmread(US_IMAGE).SOPInstanceUID]
        anonymous = WebDestination(name="web", url=url)
        with pytest.raises(ArchiveError, match=r"HTTP 401.*credentials"):
            open_source("dicomweb://web", web_servers=[anonymous]).studies()
        monkeypatch.delenv("LUS_PACS_TEST_PASSWORD")
        with pytest.raises(ExportError, match="LUS_PACS_TEST_PASSWORD is not set"):
            stow([CT_IMAGE], by_variable)
        with pytest.raises(ArchiveError, match="LUS_PACS_TEST_PASSWORD is not set"):
            open_source("dicomweb://web", web_servers=[by_variable])
        with pytest.raises(ArchiveError, match=r"no DICOMweb server 'pacs'.*\['web'\]"):
            open_source("dicomweb://pacs", web_servers=[by_variable])


def test_a_bearer_token_comes_from_its_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc.def.ghi\nignored\n")
    web = WebDestination(name="web", url="https://pacs.invalid/dicom-web", token_file=token)
    assert _authorisation(web) == {"Authorization": "Bearer abc.def.ghi"}
    with pytest.raises(ValueError, match="one credential source"):
        WebDestination(name="w", url="http://x", token_file=token, token_env="T")


def test_the_node_delivers_by_stow_exactly_once_across_a_restart(
    tmp_path: Path, synth_exams: Path
) -> None:
    cine = sorted(synth_exams.glob("*/*.dcm"))[0]
    with running_orthanc(tmp_path) as orthanc:
        config = write_config(
            tmp_path, None, models=["b_lines", "severity"], output_kinds=["sr", "kos"]
        )
        config.write_text(
            config.read_text()
            + f'\n[[web_destinations]]\nname = "web"\nurl = "{orthanc.url}/dicom-web"\n'
        )
        node = NodeProcess(config)
        node.start()
        try:
            assert storescu(node.port, [cine]).returncode == 0
            deadline = time.monotonic() + 120
            while orthanc.count() < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            node.stop()
        assert orthanc.count() == 2, node.log_text()[-3000:]
        node.start()  # nothing pending: nothing is sent again
        try:
            time.sleep(3)
        finally:
            node.stop()
        assert orthanc.count() == 2
    audit = tmp_path / "node" / "audit" / "audit.jsonl"
    results = [json.loads(line) for line in audit.read_text().splitlines()]
    sent = Counter(
        (line["job"], line["destination"])
        for line in results
        if line["event"] == "result" and line["outcome"] == "sent"
    )
    assert sent, results
    assert set(sent.values()) == {1}
    assert all(len(line["sop_instance_uids"]) >= 1 for line in results if line["event"] == "result")


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server that answers each STOW-RS badly, as the path asks: a body cut short,
    or a JSON answer that is not shaped as a DICOM data set's."""

    answers: ClassVar[dict[str, tuple[bytes, int, int]]] = {
        "/cut": (b'{"00081199": {"vr": "SQ", "Value": [', 4096, 200),
        "/shapeless": (
            b'{"00081199": {"vr": "SQ", "Value": "all stored"}, "00081198": []}',
            0,
            200,
        ),
    }

    def do_POST(self) -> None:  # the name http.server calls
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere/studies")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, declared, status = self.answers[self.path.removesuffix("/studies")]
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(declared or len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:  # the name http.server calls: a POST turned into a GET
        _Misbehaving.got.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    got: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirected_store_is_not_followed_as_a_query() -> None:
    """urllib turned a POST redirected by 302 into a GET of the new location (a QIDO search of
    every study, with the credentials on the same origin) and read its answer as the store's:
    "not stored ... (not in the answer)". The redirect is an error naming where to."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/moved"
        with pytest.raises(ExportError, match=r"302 .*moved to /elsewhere/studies"):
            stow([US_IMAGE], WebDestination(name="web", url=url, timeout_s=10))
        assert _Misbehaving.got == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_cut_or_shapeless_answer_is_an_export_error() -> None:
    """Neither is an OSError or a well-formed answer: both must come back as export errors (the
    node counts and retries those), not as errors that end the exporter's loop."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ExportError, match="IncompleteRead"):
            stow([US_IMAGE], WebDestination(name="web", url=f"{url}/cut", timeout_s=10))
        with pytest.raises(ExportError, match="not in the answer"):
            stow([US_IMAGE], WebDestination(name="web", url=f"{url}/shapeless", timeout_s=10))
    finally:
        server.shutdown()
        server.server_close()


def _failed(uid: str, reason: int) -> bytes:
    item = {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
    return json.dumps({"00081198": {"vr": "SQ", "Value": [item]}}).encode()


def test_an_instance_the_server_holds_already_is_delivered_and_other_failures_are_not() -> None:
    """A server that refuses what it holds answers 409 with Failure Reason 0x0111 when results
    are sent again after a restart: they are there (the same UIDs are the same objects)."""
    uid = str(dcmread(US_IMAGE, stop_before_pixels=True).SOPInstanceUID)
    _Misbehaving.answers["/held"] = (_failed(uid, 0x0111), 0, 409)
    # Some servers wrap the one data set in a list; a 409 so wrapped failed for a day.
    _Misbehaving.answers["/held-list"] = (b"[" + _failed(uid, 0x0111) + b"]", 0, 409)
    _Misbehaving.answers["/refused"] = (_failed(uid, 0xC000), 0, 409)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert stow([US_IMAGE], WebDestination(name="web", url=f"{url}/held")) == [uid]
        assert stow([US_IMAGE], WebDestination(name="web", url=f"{url}/held-list")) == [uid]
        with pytest.raises(ExportError, match="failure reason 49152") as refused:
            stow([US_IMAGE], WebDestination(name="web", url=f"{url}/refused"))
        assert not refused.value.unavailable  # this object, not the server
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreadable_ca_bundle_holds_the_destination(tmp_path: Path) -> None:
    """A CA bundle not mounted (or mid-rotation) fails every delivery alike: the destination
    is held unavailable, not each delivery tried in turn."""
    web = WebDestination(name="web", url="https://127.0.0.1:1", ca_bundle=tmp_path / "ca.pem")
    with pytest.raises(ExportError, match=r"cannot load the CA bundle") as failed:
        stow([US_IMAGE], web)
    assert failed.value.unavailable


def _xml(stored: str, failed: tuple[str, int] | None = None) -> bytes:
    """A STOW-RS answer as PS3.19's Native DICOM Model."""
    referenced = (
        '<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence"><Item number="1">'
        f'<DicomAttribute tag="00081155" vr="UI"><Value number="1">{stored}</Value>'
        "</DicomAttribute></Item></DicomAttribute>"
    )
    refused = ""
    if failed is not None:
        refused = (
            '<DicomAttribute tag="00081198" vr="SQ"><Item number="1">'
            f'<DicomAttribute tag="00081155" vr="UI"><Value number="1">{failed[0]}</Value>'
            '</DicomAttribute><DicomAttribute tag="00081197" vr="US">'
            f'<Value number="1">{failed[1]}</Value></DicomAttribute></Item></DicomAttribute>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">'
        f"{referenced if stored else ''}{refused}</NativeDicomModel>"
    ).encode()


def test_an_answer_in_xml_is_read_as_the_json_one() -> None:
    """A server that answers application/dicom+xml whatever was asked: every delivery failed
    ("not a JSON answer") and was given up after a day, although the server stored it all."""
    us = str(dcmread(US_IMAGE, stop_before_pixels=True).SOPInstanceUID)
    ct = str(dcmread(CT_IMAGE, stop_before_pixels=True).SOPInstanceUID)
    _Misbehaving.answers["/xml-stored"] = (_xml(us), 0, 200)
    _Misbehaving.answers["/xml-partial"] = (_xml(us, (ct, 0xC000)), 0, 202)
    _Misbehaving.answers["/xml-held"] = (_xml("", (us, 0x0111)), 0, 409)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert stow([US_IMAGE], WebDestination(name="web", url=f"{url}/xml-stored")) == [us]
        with pytest.raises(ExportError, match=rf"{ct} \(failure reason 49152\)"):
            stow([US_IMAGE, CT_IMAGE], WebDestination(name="web", url=f"{url}/xml-partial"))
        assert stow([US_IMAGE], WebDestination(name="web", url=f"{url}/xml-held")) == [us]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _nginx_in_front(tmp_path: Path, orthanc_port: int, max_body: str) -> Iterator[str]:
    """nginx on loopback proxying to Orthanc with a limit on a request's size, as a hospital's
    reverse proxy (nginx's default is 1 MB); yields its base URL."""
    (port,) = free_ports(1)
    home = tmp_path / "nginx"
    (home / "tmp").mkdir(parents=True)
    temp = " ".join(
        f"{kind}_temp_path {home}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root nginx runs its workers as "nobody", who cannot write the test's folder.
    user = f"user root {grp.getgrgid(os.getgid()).gr_name};" if os.geteuid() == 0 else ""
    (home / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {home}/nginx.pid; error_log {home}/error.log;\n"
        f"{user}\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log {home}/access.log; {temp}\n"
        f"  server {{ listen 127.0.0.1:{port}; client_max_body_size {max_body};\n"
        f"    location / {{ proxy_pass http://127.0.0.1:{orthanc_port}/; }} }} }}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"  # Debian's is not on a user's PATH
    args = [nginx, "-p", str(home), "-e", str(home / "error.log"), "-c", str(home / "nginx.conf")]
    process = subprocess.Popen(args)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, (home / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx is not listening"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_a_request_too_large_for_the_proxy_goes_one_instance_at_a_time(tmp_path: Path) -> None:
    """Behind nginx with a 400 kB limit (its default is 1 MB), two instances of 230 kB were
    refused with HTTP 413 and retried, the same 413, until the budget was spent: they go one
    request each. An instance that is itself too large is a final failure naming the limit to
    raise, not tried again and again; an unreachable server holds its destination."""
    rgb = Path(str(get_testdata_file("examples_rgb_color.dcm")))  # 232 kB
    with (
        running_orthanc(tmp_path) as orthanc,
        _nginx_in_front(tmp_path, orthanc.http_port, "400k") as proxy,
    ):
        web = WebDestination(name="web", url=f"{proxy}/dicom-web", timeout_s=30)
        ybr = Path(str(get_testdata_file("examples_ybr_color.dcm")))  # 225 kB
        assert len(stow([rgb, ybr], web)) == 2
        assert orthanc.count() == 2
        with pytest.raises(ExportError, match=r"HTTP 413.*0\.9 MB.*client_max_body_size") as big:
            stow([US_IMAGE], web)  # 923 kB
        assert big.value.final
        assert not big.value.unavailable
        assert orthanc.count() == 2
        # One too large among others: the others are stored (the split stopped at it, and
        # the small SR after a large SEG was never sent), the error names the one.
        ct = Path(str(get_testdata_file("CT_small.dcm")))
        with pytest.raises(ExportError, match=r"1 of 3 instances not stored.*0\.9 MB") as one:
            stow([rgb, US_IMAGE, ct], web)
        assert one.value.final
        assert orthanc.count() == 3  # the CT, after the refused one
    with pytest.raises(ExportError, match="cannot reach") as gone:
        stow([rgb], web)
    assert gone.value.unavailable
    assert not gone.value.final


def test_a_server_that_closes_on_a_large_request_gets_one_instance_a_request() -> None:
    """Many servers refuse a body over their limit by answering 413 at once and closing the
    connection unread (Go's net/http, a load balancer): the sender met a reset connection,
    read "cannot reach", held the destination and never sent the set in smaller requests."""
    limit = [1_000_000]
    taken: list[int] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(65536)
                length = int(re.search(rb"Content-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
                if length > limit[0]:  # refused unread
                    connection.sendall(b"HTTP/1.1 413 Too Large\r\nConnection: close\r\n\r\n")
                    continue
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += connection.recv(65536)
                taken.append(length)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        web = WebDestination(name="web", url=url, timeout_s=10)
        # 8 x 0.9 MB: each alone under the limit, together over it. The answer lists none
        # stored (an empty JSON), so the split's requests fail as "not in the answer".
        with pytest.raises(ExportError, match="not in the answer") as caught:
            stow([US_IMAGE] * 8, web)
        assert not caught.value.unavailable
        assert taken  # the single-instance request got through
        assert all(n <= limit[0] for n in taken)
        limit[0] = 500_000  # one instance alone too large: named, neither final nor unavailable
        # Refused as the request was sent, or the 413 read before the reset: named either way.
        with pytest.raises(
            ExportError, match=r"(closed the connection while|413).* 0\.9 MB"
        ) as cut:
            stow([US_IMAGE], web)
        assert not cut.value.unavailable
    finally:
        listener.close()
