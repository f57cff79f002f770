"""A DICOMweb server: QIDO-RS to list, WADO-RS to retrieve."""

from __future__ import annotations

import datetime
import json
import ssl
from collections.abc import Mapping
from email.message import Message
from http.client import HTTPException
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import HTTPSHandler, OpenerDirector, ProxyHandler, Request, build_opener

from pydicom import dcmread

from lus_pacs.credentials import SameOriginRedirects
from lus_pacs.dicom_vocabulary import IMAGE_SOP_CLASSES
from lus_pacs.errors import ArchiveError
from lus_pacs.ingest.archive.common import (
    UID,
    ArchiveStudy,
    dicom_date,
    select_ultrasound,
    write_instance,
)

_QIDO_PAGE = 500
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class DicomwebSource:
    """A DICOMweb server: QIDO-RS to list, WADO-RS to retrieve instance by instance.

    One instance per request keeps memory to one cine. Proxies from the environment are used
    except for loopback. Thread-safe (no state between calls).
    """

    skipped: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        """``headers`` go with every request (the ``Authorization`` of
        :func:`lus_pacs.credentials.authorisation`); ``ca_bundle``: the CAs that sign an https
        server's certificate (the system's when None)."""
        self.base_url = base_url.rstrip("/")
        self.name = f"dicomweb:{self.base_url}"
        self._timeout = timeout
        self._headers = dict(headers or {})
        loopback = urlsplit(self.base_url).hostname in _LOOPBACK
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ArchiveError(self.name, f"cannot load the CA bundle {ca_bundle}: {exc}") from exc
        https = HTTPSHandler(context=context)
        self._opener: OpenerDirector = (
            build_opener(ProxyHandler({}), https, SameOriginRedirects())
            if loopback
            else build_opener(https, SameOriginRedirects())
        )

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        params = [("ModalitiesInStudy", "US"), ("includefield", "StudyDescription")]
        if since:
            params.append(("StudyDate", f"{since:%Y%m%d}-"))
        items = self._query("/studies", params, key="0020000D")
        return select_ultrasound(
            ((_json_values(item, "00080061"), _json_study(item)) for item in items), since
        )

    def listed_instances(self, study: ArchiveStudy) -> frozenset[str] | None:
        return None  # its study list names no instances: finding them is a query per study

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image instances written durably as ``folder/<SOPInstanceUID>.dcm``.

        Raises
        ------
        ArchiveError
            An HTTP error or unreadable answer (the message names the URL and status), or an
            answer that is not the instance asked for. Files written before stay in ``folder``.
        """
        uid = _checked_uid(study.study_instance_uid, self.name, uid="")
        listing = self._query(
            f"/studies/{uid}/instances",
            [("includefield", "00080016"), ("includefield", "0020000E")],
            key="00080018",
            study=uid,
        )
        if not listing:
            raise ArchiveError(self.name, "QIDO-RS found no instance in this study", study=uid)
        self._check_complete(uid, len(listing))
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for item in listing:
            # A server that leaves the SOP class out: fetch, and look at the header.
            if _json_value(item, "00080016") not in {*IMAGE_SOP_CLASSES, ""}:
                continue
            sop = _checked_uid(_json_value(item, "00080018"), self.name, uid)
            series = _checked_uid(_json_value(item, "0020000E"), self.name, uid)
            url = f"{self.base_url}/studies/{uid}/series/{series}/instances/{sop}"
            body, content_type = self._get(url, _WADO_ACCEPT, uid)
            parts = _multipart(body, content_type, f"{self.name}: {url}")
            if len(parts) != 1:
                raise ArchiveError(
                    self.name, f"{url} answered {len(parts)} parts, not 1", study=uid
                )
            try:
                header = dcmread(BytesIO(parts[0]), stop_before_pixels=True)
                answered, sop_class = header.get("SOPInstanceUID"), header.get("SOPClassUID", "")
            except Exception as exc:  # pydicom raises several kinds for a damaged file
                raise ArchiveError(
                    self.name, f"{url} answered no readable DICOM Part 10 file ({exc})", study=uid
                ) from exc
            if answered != sop:
                raise ArchiveError(self.name, f"{url} answered instance {answered}", study=uid)
            if str(sop_class) not in IMAGE_SOP_CLASSES:
                continue
            paths.append(write_instance(folder, sop, parts[0]))
        return sorted(paths)

    def _check_complete(self, uid: str, listed: int) -> None:
        """Raise unless the instances listed are all the study holds, where the server says how
        many (Number of Study Related Instances). A server that caps its answers (Orthanc's
        ``LimitFindInstances``, ``LimitFindResults``) cuts the listing short without a word:
        101 of a study's 1,200 instances were fetched, the study recorded done, and the rest
        never processed, also after the cap was raised."""
        found = self._query(
            "/studies",
            [("StudyInstanceUID", uid), ("includefield", "00201208")],
            key="0020000D",
            study=uid,
        )
        counts = [_json_value(item, "00201208") for item in found]
        try:
            total = max(int(c) for c in counts if c not in ("", None))
        except ValueError:  # the server does not say: nothing to compare
            return
        if listed < total:
            raise ArchiveError(
                self.name,
                f"QIDO-RS listed {listed} of the study's {total} instances: the server caps its "
                "answers (Orthanc: LimitFindInstances, LimitFindResults); raise the cap",
                study=uid,
            )

    def _query(
        self, path: str, params: list[tuple[str, str]], *, key: str, study: str = ""
    ) -> list[dict[str, Any]]:
        """Every QIDO-RS match, page after page until a page brings nothing new: a server may
        cap a page below the limit asked for, or ignore offset."""
        items: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            query = urlencode([*params, ("limit", str(_QIDO_PAGE)), ("offset", str(offset))])
            url = f"{self.base_url}{path}?{query}"
            body, _ = self._get(url, "application/dicom+json", study)
            try:
                page = json.loads(body) if body.strip() else []
            except ValueError as exc:
                raise ArchiveError(
                    self.name, f"{url} answered no JSON ({exc})", study=study
                ) from exc
            if not isinstance(page, list):
                raise ArchiveError(self.name, f"{url} answered no JSON array", study=study)
            new = {_json_value(item, key): item for item in page if isinstance(item, dict)}
            new = {uid: item for uid, item in new.items() if uid not in items}
            if not new:
                return list(items.values())
            items.update(new)
            offset += len(page)

    def _get(self, url: str, accept: str, study: str) -> tuple[bytes, str]:
        request = Request(url, headers={**self._headers, "Accept": accept})
        try:
            with self._opener.open(request, timeout=self._timeout) as answer:
                return answer.read(), answer.headers.get("Content-Type", "")
        except HTTPError as exc:
            text = " ".join(exc.read(300).decode(errors="replace").split())
            detail = f": {text[:200]}" if text else ""
            check = "; check the credentials" if exc.code in (401, 403) else ""
            raise ArchiveError(
                self.name,
                f"GET {url} answered HTTP {exc.code} {exc.reason}{detail}{check}",
                study=study,
            ) from exc
        except URLError as exc:
            raise ArchiveError(
                self.name, f"cannot reach {url} ({exc.reason})", study=study
            ) from exc
        except (OSError, HTTPException) as exc:
            raise ArchiveError(
                self.name,
                f"GET {url} failed ({exc!r}; no answer within {self._timeout:g} s?)",
                study=study,
            ) from exc


def _multipart(body: bytes, content_type: str, source: str) -> list[bytes]:
    """The bodies of a multipart/related answer (RFC 2046), or the whole body if the server
    answered plain application/dicom. ``source`` names the archive and URL in errors."""
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() == "application/dicom":
        return [body]
    boundary = header.get_param("boundary")
    if header.get_content_maintype() != "multipart" or not isinstance(boundary, str):
        raise ArchiveError(source, f"answered {content_type!r}, not multipart/related")
    dash = b"--" + boundary.encode()
    delimiter = b"\r\n" + dash
    parts: list[bytes] = []
    # Positions, not slices, until a part is cut out: a part is a whole cine.
    position = 0 if body.startswith(dash) else body.find(delimiter)
    while position >= 0:
        after = body.find(dash, position) + len(dash)
        if body.startswith(b"--", after):
            return parts
        begin = body.find(b"\r\n", after)  # the end of the delimiter line
        end = body.find(delimiter, after)
        if begin < 0 or end < 0:
            break
        headers_end = body.find(b"\r\n\r\n", begin, end)
        parts.append(body[headers_end + 4 : end] if headers_end >= 0 else body[begin + 2 : end])
        position = end
    raise ArchiveError(source, "answered a truncated multipart body (no closing boundary)")


def _checked_uid(value: str, archive: str, uid: str) -> str:
    if len(value) > 64 or not UID.fullmatch(value):
        raise ArchiveError(archive, f"the archive answered an invalid UID {value!r}", study=uid)
    return value


def _json_study(item: dict[str, Any]) -> ArchiveStudy:
    return ArchiveStudy(
        study_instance_uid=_json_value(item, "0020000D"),
        patient_id=_json_value(item, "00100020"),
        study_date=dicom_date(_json_value(item, "00080020")),
        description=_json_value(item, "00081030"),
    )


def _json_values(item: dict[str, Any], tag: str) -> list[str]:
    """An attribute of a DICOM JSON object (PS3.18 F.2) as strings; [] when absent."""
    element = item.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [str(v) for v in values if v is not None]


def _json_value(item: dict[str, Any], tag: str) -> str:
    values = _json_values(item, tag)
    return values[0] if values else ""
