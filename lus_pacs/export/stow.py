"""STOW-RS to one DICOMweb destination (PS3.18 10.5): one request, one attempt.

The instances go as one ``multipart/related; type="application/dicom"`` POST to
``<url>/studies``; the answer (``application/dicom+json``) must list every one of them in its
Referenced SOP Sequence and none in its Failed SOP Sequence but as held already (Failure
Reason 0x0111, also in a 409 answer). As with C-STORE, retries belong to
the job store: this module says what one attempt delivered or raises :class:`ExportError`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from pydicom import dcmread

from lus_pacs.credentials import authorisation
from lus_pacs.dicom_vocabulary import DUPLICATE_SOP_INSTANCE
from lus_pacs.errors import ConfigError, ExportError
from lus_pacs.settings import WebDestination

_REFERENCED = "00081199"
_FAILED = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_UNAVAILABLE = frozenset({401, 403, 404, 405, 407, 408, 429})
"""HTTP errors that every request to the server would meet alike (credentials refused, no
STOW-RS at that address, too many requests): the destination is unavailable, not the object."""

log = logging.getLogger(__name__)


def stow(paths: Sequence[Path], destination: WebDestination) -> list[str]:
    """POST the DICOM files ``paths`` to ``destination``; returns their SOP Instance UIDs.

    Raises
    ------
    ExportError
        A file cannot be read, a credential is missing, the server cannot be reached or answers
        an HTTP error, or it did not store every instance (the message names them and why).
    """
    if not paths:
        return []
    boundary = f"lus-pacs-{uuid.uuid4().hex}"
    body = bytearray()
    uids = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            header = dcmread(BytesIO(data), stop_before_pixels=True)
            uids.append(str(header.SOPInstanceUID))
        except Exception as exc:  # pydicom raises several kinds for a damaged file
            raise ExportError(destination.name, f"cannot read {path}: {exc}") from exc
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **_authorisation(destination),
    }
    request = urllib.request.Request(
        destination.url.rstrip("/") + "/studies", data=bytes(body), headers=headers, method="POST"
    )
    try:
        answer = _post(request, destination)
    except ExportError as exc:
        if not (exc.final or isinstance(exc, _CutWhileSendingError)) or len(paths) == 1:
            raise
        # The request is larger than the server takes (HTTP 413; nginx's default is 1 MB), or
        # the server closed the connection while it was sent (as those that refuse a large
        # body unread do): one request per instance, so only one itself too large fails.
        log.info("%s: %s; sending its %d instances one by one", destination.name, exc, len(paths))
        return _one_by_one(paths, destination)
    failed = {
        _first(item, _SOP_INSTANCE): _first(item, _FAILURE_REASON)
        for item in _items(answer, _FAILED)
    }
    stored = {_first(item, _SOP_INSTANCE) for item in _items(answer, _REFERENCED)}
    # Held already (results sent again after a restart): the very object, as over DIMSE.
    stored |= {u for u, reason in failed.items() if reason == str(DUPLICATE_SOP_INSTANCE)}
    failed = {u: reason for u, reason in failed.items() if u not in stored}
    missing = [u for u in uids if u not in stored and u not in failed]
    if failed or missing:
        said = [f"{u} (failure reason {reason})" for u, reason in failed.items()]
        said += [f"{u} (not in the answer)" for u in missing]
        raise ExportError(destination.name, f"not stored by {destination.url}: {'; '.join(said)}")
    return uids


def _one_by_one(paths: Sequence[Path], destination: WebDestination) -> list[str]:
    """Each instance in a request of its own; every one is tried. Raises, once all were tried,
    naming those the server refused as too large (final when that is every failure)."""
    stored: list[str] = []
    refused: list[ExportError] = []
    for path in paths:
        try:
            stored += stow([path], destination)
        except ExportError as exc:
            if not (exc.final or isinstance(exc, _CutWhileSendingError)):
                raise  # not the size: the delivery is tried again, whole
            refused.append(exc)
    if refused:
        raise ExportError(
            destination.name,
            f"{len(refused)} of {len(paths)} instances not stored, each alone too large: "
            + "; ".join(e.reason for e in refused),
            final=all(e.final for e in refused),
        )
    return stored


def _one(doc: Any) -> Any:
    """The answer's data set: some servers wrap the one data set in a list."""
    if isinstance(doc, list):
        return doc[0] if doc else {}
    return doc


class _CutWhileSendingError(ExportError):
    """The server closed the connection while the request was sent, after it took it: the way
    many servers refuse a body larger than they take (an HTTP 413 sent at once, the body
    unread). Not the destination's absence: the request, maybe its size."""


def _post(request: urllib.request.Request, destination: WebDestination) -> dict[str, Any]:
    try:
        context = ssl.create_default_context(cafile=destination.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        # Every delivery to it would fail alike (a mount lost, a rotation): held, not each
        # tried in turn.
        raise ExportError(
            destination.name,
            f"cannot load the CA bundle {destination.ca_bundle}: {exc}",
            unavailable=True,
        ) from exc
    # No proxy: a hospital's DICOMweb server is reached directly, as its DIMSE nodes are.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=context),
        _NoRedirects(),
    )
    try:
        with opener.open(request, timeout=destination.timeout_s) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        try:
            text = exc.read()
        except (OSError, http.client.HTTPException):  # an answer sent as it closed: the status
            text = b""
        if exc.code == HTTPStatus.CONFLICT:  # none stored: its Failed SOP Sequence says why
            with contextlib.suppress(ValueError, ExportError):
                doc = _one(_answer(text, destination))
                if isinstance(doc, dict) and _items(doc, _FAILED):
                    return doc
        if exc.code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            raise ExportError(
                destination.name,
                f"{destination.url} answered HTTP 413 {exc.reason}: it takes no request of "
                f"{_megabytes(request)} MB; raise its limit on a request's size (nginx: "
                "client_max_body_size), then run lus-pacs retry",
                final=True,
            ) from exc
        detail = _detail(text)
        if f"{exc.code} {exc.reason}" in detail:  # a proxy's page of the status line alone
            detail = ""
        moved = exc.headers.get("Location") if 300 <= exc.code < 400 and exc.headers else None
        raise ExportError(
            destination.name,
            f"{destination.url} answered HTTP {exc.code} {exc.reason}"
            + (": check its credentials" if exc.code in (401, 403) else "")
            + (f": it moved to {moved}; set the destination's url to it" if moved else "")
            + (f" ({detail})" if detail else ""),
            unavailable=exc.code in _UNAVAILABLE or exc.code >= 500 or 300 <= exc.code < 400,
        ) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # a cut answer is no OSError
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (ConnectionResetError, BrokenPipeError)):
            raise _CutWhileSendingError(
                destination.name,
                f"{destination.url} closed the connection while a request of "
                f"{_megabytes(request)} MB was sent ({reason}): it may take no request this "
                "large (its limit on a request's size)",
            ) from exc
        raise ExportError(
            destination.name, f"cannot reach {destination.url}: {exc}", unavailable=True
        ) from exc
    try:
        doc = _answer(text, destination) if text.strip() else {}
    except ValueError as exc:
        raise ExportError(destination.name, f"{destination.url}: not a JSON answer") from exc
    doc = _one(doc)
    if not isinstance(doc, dict):
        raise ExportError(destination.name, f"{destination.url}: not a DICOM JSON data set")
    return doc


def _megabytes(request: urllib.request.Request) -> str:
    """The size of the request's body, in MB with one decimal."""
    return f"{(len(request.data) if isinstance(request.data, bytes) else 0) / 1e6:.1f}"


def _detail(text: bytes) -> str:
    """The start of an error answer's body; of an HTML page (a proxy's error page), its title."""
    shown = text[:300].decode(errors="replace").strip()
    if shown.startswith("<"):
        title = re.search(
            r"<title>(.*?)</title>", text[:2000].decode(errors="replace"), re.I | re.S
        )
        return title[1].strip() if title else ""
    return shown


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A STOW-RS POST is not redirected: urllib turns a POST redirected by 301, 302 or 303 into
    a GET (a query of every study, with the credentials on the same origin) and reads its
    answer as the store's; the 3xx comes back as an error naming the new location."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _answer(text: bytes, destination: WebDestination) -> Any:
    """The answer's data set: DICOM JSON, or the Native DICOM Model in XML read as its JSON
    (a server may answer XML although JSON was asked for). Raises ValueError for text that
    is neither."""
    if text.lstrip().startswith(b"<"):
        return _native_model(text, destination)
    return json.loads(text)


def _native_model(text: bytes, destination: WebDestination) -> dict[str, Any]:
    """A STOW-RS answer in XML (PS3.19's Native DICOM Model, ``application/dicom+xml``) in
    the shape of its DICOM JSON: attributes by tag, each with its ``Value`` list, a sequence's
    values its items. A server may answer so although JSON was asked for."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ExportError(destination.name, f"{destination.url}: not an XML answer") from exc
    return _native_items(root)


def _native_items(parent: ElementTree.Element) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for attribute in parent.findall("DicomAttribute"):
        tag = (attribute.get("tag") or "").upper()
        if attribute.get("vr") == "SQ":
            values: list[Any] = [_native_items(item) for item in attribute.findall("Item")]
        else:
            values = [(v.text or "").strip() for v in attribute.findall("Value")]
        doc[tag] = {"vr": attribute.get("vr"), "Value": values}
    return doc


def _authorisation(destination: WebDestination) -> dict[str, str]:
    """The Authorization header from the destination's credential file or variable; a
    credential that cannot be read fails the attempt, named."""
    try:
        return authorisation(destination)
    except ConfigError as exc:
        raise ExportError(destination.name, str(exc), unavailable=True) from exc


def _values(doc: dict[str, Any], tag: str) -> list[Any]:
    """The values of ``tag`` in a DICOM JSON data set; none where the answer is not shaped so."""
    element = doc.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _items(doc: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [v for v in _values(doc, tag) if isinstance(v, dict)]


def _first(item: dict[str, Any], tag: str) -> str:
    values = _values(item, tag)
    return str(values[0]) if values else ""
