"""Credentials of DICOMweb servers: not carried to another server by a redirect."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from lus_pacs.credentials import SameOriginRedirects, authorisation
from lus_pacs.errors import ConfigError
from lus_pacs.settings import WebDestination, load_settings


@contextmanager
def _server(redirect_to: str | None, seen: list[str | None]) -> Iterator[str]:
    """An HTTP server on loopback that records each request's Authorization and redirects to
    ``redirect_to`` (when given) or answers 200."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            if redirect_to and self.path == "/start":
                self.send_response(302)
                self.send_header("Location", redirect_to)
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), SameOriginRedirects())
    request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
    with opener.open(request, timeout=10) as answer:
        return int(answer.status)


def test_a_redirect_to_another_server_loses_the_credentials_one_on_the_same_keeps_them() -> None:
    elsewhere: list[str | None] = []
    here: list[str | None] = []
    with _server(None, elsewhere) as other:
        with _server(f"{other}/landed", here) as origin:
            assert _get(f"{origin}/start") == 200
        assert here == ["Bearer s3cret"]
        assert elsewhere == [None]  # another port: another origin
    same: list[str | None] = []
    with _server("/landed", same) as origin:
        assert _get(f"{origin}/start") == 200
    assert same == ["Bearer s3cret", "Bearer s3cret"]


def test_a_secret_never_reaches_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token from a Kubernetes secret made from a file ends with a line end: http.client
    refused the header with the token in its message, written to every failed delivery's log
    line, status row and audit record. A password in the URL went the same way."""
    server = WebDestination(name="pacs", url="http://pacs/dicom-web", token_env="PACS_TOKEN")
    monkeypatch.setenv("PACS_TOKEN", "eyJ-s3cret\n")
    assert authorisation(server) == {"Authorization": "Bearer eyJ-s3cret"}
    monkeypatch.setenv("PACS_TOKEN", "eyJ\x01s3cret")
    with pytest.raises(ConfigError, match="PACS_TOKEN holds a control character") as caught:
        authorisation(server)
    assert "s3cret" not in str(caught.value)
    config = tmp_path / "node.toml"
    config.write_text(
        '[[web_destinations]]\nname = "pacs"\nurl = "http://orthanc:S3cretPassw0rd@pacs:8042/"\n'
    )
    with pytest.raises(ConfigError, match="credentials in the URL") as caught:
        load_settings(config)
    assert "S3cretPassw0rd" not in str(caught.value)
    # A "#" in the password ends the authority before its "@": it passed.
    config.write_text('[[web_destinations]]\nname = "pacs"\nurl = "http://orthanc:S3c#ret@pacs/"\n')
    with pytest.raises(ConfigError, match="credentials in the URL") as caught:
        load_settings(config)
    assert "S3c" not in str(caught.value)


def test_a_credential_in_another_encoding_is_read_or_refused_never_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token file written by PowerShell (UTF-16), a Latin-1 password file, a variable of
    bytes that are not UTF-8: each raised a codec error whose repr, the text it failed on,
    went into the delivery's log line, status row and audit record."""
    token = tmp_path / "token"
    token.write_bytes("eyJ-s3cret\r\n".encode("utf-16"))  # with its byte order mark
    server = WebDestination(name="pacs", url="http://pacs/dicom-web", token_file=token)
    assert authorisation(server) == {"Authorization": "Bearer eyJ-s3cret"}
    password = tmp_path / "password"
    password.write_bytes("P\xe4ss-s3cret\n".encode("latin-1"))
    server = WebDestination(
        name="pacs", url="http://pacs/dicom-web", username="lus", password_file=password
    )
    with pytest.raises(ConfigError, match="is not UTF-8") as caught:
        authorisation(server)
    assert "s3cret" not in str(caught.value)
    monkeypatch.setenv("PACS_PASSWORD", "P\udce4ss-s3cret")  # how os.environ gives such bytes
    server = WebDestination(
        name="pacs", url="http://pacs/dicom-web", username="lus", password_env="PACS_PASSWORD"
    )
    with pytest.raises(ConfigError, match="PACS_PASSWORD is not UTF-8") as caught:
        authorisation(server)
    assert "s3cret" not in str(caught.value)
    monkeypatch.setenv("PACS_TOKEN", "eyJ\u20ac-s3cret")  # http.client sends headers as Latin-1
    server = WebDestination(name="pacs", url="http://pacs/dicom-web", token_env="PACS_TOKEN")
    with pytest.raises(ConfigError, match="PACS_TOKEN is not ASCII") as caught:
        authorisation(server)
    assert "s3cret" not in str(caught.value)
