"""HTTP credentials of a DICOMweb server named in the settings (a STOW-RS destination, or an
archive re-processed over DICOMweb), read from a file or an environment variable when asked for,
never from the settings text or the command line; and a redirect handler that does not carry
them to another server."""

from __future__ import annotations

import base64
import codecs
import os
import urllib.request
from http.client import HTTPMessage
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from lus_pacs.errors import ConfigError
from lus_pacs.settings import WebDestination


def authorisation(server: WebDestination) -> dict[str, str]:
    """The ``Authorization`` header for ``server`` (HTTP basic or bearer), or none.

    Raises
    ------
    ConfigError
        The credential file cannot be read or the variable is not set (the message names it).
    """
    if server.username:
        password = _secret(server, server.password_file, server.password_env)
        pair = base64.b64encode(f"{server.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if server.token_file or server.token_env:
        token = _secret(server, server.token_file, server.token_env)
        if not token.isascii():  # http.client's refusal would quote the header
            where = server.token_file or f"the environment variable {server.token_env}"
            raise ConfigError(f"{server.name}: the token in {where} is not ASCII")
        return {"Authorization": f"Bearer {token}"}
    return {}


def _secret(server: WebDestination, file: Path | None, variable: str | None) -> str:
    """The first line of ``file``, else the value of ``variable``, without the spaces and
    line ends around it (a secret made from a file ends with one).

    Raises
    ------
    ConfigError
        It cannot be read, or holds a control character: http.client refuses such a header
        with its value in the message, which went into every failed delivery's log line,
        status row and audit record. The message names the source, never the value.
    """
    if file is not None:
        try:
            lines = _text(file.read_bytes()).splitlines()
        except OSError as exc:
            raise ConfigError(f"{server.name}: cannot read the credential {file}: {exc}") from exc
        except UnicodeError:  # its message would quote the bytes
            raise ConfigError(
                f"{server.name}: the credential {file} is not UTF-8 (or UTF-16 with a byte "
                "order mark) text"
            ) from None
        value, where = (lines[0] if lines else ""), str(file)
    else:
        found = os.environ.get(variable or "")
        if found is None:
            raise ConfigError(f"{server.name}: the environment variable {variable} is not set")
        value, where = found, f"the environment variable {variable}"
        try:
            value.encode()  # bytes that are not UTF-8 come as lone surrogates
        except UnicodeError:
            raise ConfigError(f"{server.name}: {where} is not UTF-8 text") from None
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{server.name}: the credential in {where} holds a control character")
    return value


def _text(data: bytes) -> str:
    """A credential file's text: UTF-8 (a byte order mark dropped), or UTF-16 with its byte
    order mark (what Windows' PowerShell writes by default)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but drops the ``Authorization`` header when one leads
    to another scheme, host or port (urllib would send the credentials wherever a server
    points)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() == "authorization":
                    del new.headers[name]
            new.unredirected_hdrs.pop("Authorization", None)
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port
