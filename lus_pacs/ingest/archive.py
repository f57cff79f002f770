"""Ultrasound studies in an archive, found and brought to a local folder for reprocessing.

Three kinds of archive, one interface (:class:`ArchiveSource`): a folder or DICOMDIR, a PACS over
DIMSE (C-FIND, then C-GET or C-MOVE) and a DICOMweb server (QIDO-RS, WADO-RS). Only image
instances the node reads (:data:`~lus_pacs.imaging.decode.IMAGE_SOP_CLASSES`) are brought: the
results of an earlier run (SR, SEG, KOS) that sit in the same study stay in the archive. Every
instance arrives byte for byte as the archive stores it (no transcoding), and a study that does
not arrive completely raises :class:`~lus_pacs.errors.ArchiveError`: a reprocessing run must never
score an exam on part of its cines without saying so.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPException
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, Protocol, cast
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import OpenerDirector, ProxyHandler, Request, build_opener

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.uid import (
    HEVCMP51,
    JPEG2000,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category
from pynetdicom.transport import ThreadedAssociationServer

from lus_pacs.durable import durable_file
from lus_pacs.errors import ArchiveError
from lus_pacs.imaging.decode import IMAGE_SOP_CLASSES

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
"""A UID as PS3.5 allows it: it names files and URL paths, so nothing else gets through."""

_PENDING = (0xFF00, 0xFF01)
_STORE_OK, _STORE_OUT_OF_RESOURCES, _STORE_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000

_RETRIEVE_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    HEVCMP51,
)
"""Syntaxes a C-GET takes images in, each in its own presentation context, so the archive finds
the one it stores an instance in and sends it unchanged instead of transcoding it
(7 SOP classes x 17 syntaxes + the C-GET context fit the 128 contexts of an association)."""

_QIDO_PAGE = 500
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ArchiveStudy:
    """One study as the archive lists it."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    """DICOM DA ``YYYYMMDD``, or ``""`` when the archive does not know it."""
    description: str
    """StudyDescription, or ``""``."""


class ArchiveSource(Protocol):
    """Where ``lus-pacs reprocess`` finds ultrasound studies and brings their images from."""

    name: str
    """For logs and the manifest: ``folder:/data/x``, ``dimse:PACS@host:104``,
    ``dicomweb:http://host/dicom-web``."""

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        """The ultrasound studies, sorted by (study date, Study Instance UID); with ``since``,
        only those with a StudyDate on or after it (a study with no date is then left out)."""
        ...

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image instances as DICOM Part 10 files, sorted by path; non-image
        instances (earlier SR, SEG, KOS results) are skipped."""
        ...


def open_source(
    spec: str,
    *,
    calling_ae: str = "LUSPACS",
    retrieve: Literal["move", "get"] = "get",
    move_port: int = 0,
    timeout: float = 30.0,
) -> ArchiveSource:
    """The archive ``spec`` names; nothing is contacted or scanned until it is used.

    Parameters
    ----------
    spec:
        A folder (scanned recursively) or a DICOMDIR file; ``dimse://AET@host:port``, a PACS
        queried by C-FIND; ``http(s)://host/dicom-web``, the base URL of a DICOMweb server.
    calling_ae:
        Our AE title towards a DIMSE archive, and the C-MOVE destination with ``retrieve="move"``.
    retrieve:
        How a DIMSE archive sends images: ``get`` (C-GET, on the same association) or ``move``
        (C-MOVE to a Storage SCP this source runs on ``127.0.0.1:move_port`` for each fetch).
    move_port:
        The port of that Storage SCP; 0 picks a free port now (see :attr:`DimseSource.move_port`).
        The archive must know ``calling_ae`` at this host and port.
    timeout:
        Seconds allowed for connecting and for each DIMSE or HTTP response.

    Raises
    ------
    ArchiveError
        ``spec`` is none of these forms, or the folder or DICOMDIR does not exist.
    """
    if retrieve not in ("move", "get"):
        raise ArchiveError(spec, f"retrieve must be 'get' or 'move', not {retrieve!r}")
    if spec.startswith("dimse://"):
        match = re.fullmatch(r"dimse://([^@/]{1,16})@([^:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/?", spec)
        if match is None or not 0 < int(match[3]) < 65536:
            raise ArchiveError(spec, "write a DIMSE archive as dimse://AET@host:port")
        return DimseSource(
            match[1],
            match[2].strip("[]"),
            int(match[3]),
            calling_ae=calling_ae,
            retrieve=retrieve,
            move_port=move_port,
            timeout=timeout,
        )
    if spec.startswith(("http://", "https://")):
        return DicomwebSource(spec, timeout=timeout)
    if "://" in spec:
        raise ArchiveError(
            spec, "unknown scheme: use a folder, a DICOMDIR, dimse://AET@host:port or http(s)://"
        )
    return FolderSource(Path(spec))


class FolderSource:
    """Studies in a folder tree or on DICOMDIR media.

    A folder is scanned recursively for ``*.dcm`` files and files with no extension or a
    numeric one (files named by their UID); a DICOMDIR's referenced files are read. Only
    headers are read, up to the pixel data. Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        path = path.expanduser().absolute()
        self.name = f"folder:{path}"
        if path.is_file():
            try:
                directory = dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError) as exc:
                raise ArchiveError(self.name, f"not a DICOMDIR ({exc})") from exc
            meta = directory.get("file_meta", Dataset())
            if meta.get("MediaStorageSOPClassUID") != "1.2.840.10008.1.3.10":
                raise ArchiveError(self.name, "not a DICOMDIR: give a folder or a DICOMDIR file")
        elif not path.is_dir():
            raise ArchiveError(self.name, "no such folder or DICOMDIR")
        self.path = path
        self._lock = threading.Lock()
        self._index: dict[str, list[tuple[Path, str, ArchiveStudy]]] | None = None

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        """Scans the folder again; the studies are those with an instance of an image class."""
        index = self._scan()
        return _select([instances[0][2] for instances in index.values()], since)

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image files where they are, not copied: not under ``folder`` (which is
        created, for the same contract as the other sources), nor named by their UID. A caller
        that deletes what ``fetch`` returned must not do so for a folder source."""
        with self._lock:
            index = self._index
        if index is None or study.study_instance_uid not in index:
            index = self._scan()
        if study.study_instance_uid not in index:
            raise ArchiveError(
                self.name, "no image instance of this study here", study=study.study_instance_uid
            )
        folder.mkdir(parents=True, exist_ok=True)
        return sorted(path for path, _, _ in index[study.study_instance_uid])

    def _scan(self) -> dict[str, list[tuple[Path, str, ArchiveStudy]]]:
        index: dict[str, list[tuple[Path, str, ArchiveStudy]]] = {}
        seen: set[str] = set()
        for path in self._candidates():
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError, EOFError, ValueError) as exc:
                if path.suffix.lower() == ".dcm":
                    logger.warning("Skipped %s: not readable as DICOM (%s)", path, exc)
                continue
            if str(ds.get("SOPClassUID", "")) not in IMAGE_SOP_CLASSES:
                continue
            sop, study = str(ds.get("SOPInstanceUID", "")), _study(ds)
            if not sop or not study.study_instance_uid:
                logger.warning("Skipped %s: no SOP Instance UID or Study Instance UID", path)
                continue
            if sop in seen:
                logger.warning("Skipped %s: another file holds instance %s", path, sop)
                continue
            seen.add(sop)
            index.setdefault(study.study_instance_uid, []).append((path, sop, study))
        with self._lock:
            self._index = index
        return index

    def _candidates(self) -> Iterator[Path]:
        if self.path.is_file():
            try:
                files = [Path(instance.path) for instance in FileSet(self.path)]
            except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
                raise ArchiveError(self.name, f"cannot read the DICOMDIR ({exc})") from exc
            yield from sorted(files)
            return
        for path in sorted(self.path.rglob("*")):
            suffix = path.suffix.lower()
            dicom_name = suffix in ("", ".dcm") or suffix[1:].isdigit()
            if dicom_name and not path.name.startswith(".") and path.is_file():
                yield path


class DimseSource:
    """A PACS queried by C-FIND (Study Root) and retrieved from by C-GET or C-MOVE.

    A fetch first lists the study's instances (C-FIND at SERIES, then IMAGE level) so that only
    image instances are asked for: a series of images is retrieved whole, a series that mixes in
    other classes by a list of SOP Instance UIDs. Every listed image must arrive.

    Thread-safe: each call opens its own associations; C-MOVE fetches are serialised because
    they share the Storage SCP port.

    Attributes
    ----------
    move_port:
        The port the C-MOVE Storage SCP listens on, chosen when 0 was asked for; register
        ``calling_ae`` at ``move_host:move_port`` as a DICOM destination in the archive
        (Orthanc: ``DicomModalities``) before fetching.
    """

    def __init__(
        self,
        ae_title: str,
        host: str,
        port: int,
        *,
        calling_ae: str = "LUSPACS",
        retrieve: Literal["move", "get"] = "get",
        move_port: int = 0,
        move_host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> None:
        self.name = f"dimse:{ae_title}@{host}:{port}"
        self._ae_title, self._host, self._port = ae_title, host, port
        self._calling_ae, self._retrieve, self._timeout = calling_ae, retrieve, timeout
        self.move_host = move_host
        if retrieve == "move" and move_port == 0:
            move_port = _free_port(move_host)
        self.move_port = move_port
        self._move_lock = threading.Lock()

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        query = _identifier("STUDY", StudyInstanceUID="", PatientID="", StudyDescription="")
        query.StudyDate = f"{since:%Y%m%d}-" if since else ""
        query.ModalitiesInStudy = "US"
        with self._association([(StudyRootQueryRetrieveInformationModelFind, None)]) as assoc:
            answers = self._find(assoc, query, "")
        found: dict[str, ArchiveStudy] = {}
        for answer in answers:
            modalities = _values(answer, "ModalitiesInStudy")
            # Checked here too: an archive may ignore a matching key it does not support.
            if not modalities or "US" in modalities:
                study = _study(answer)
                found.setdefault(study.study_instance_uid, study)
        return _select(found.values(), since)

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image instances written durably as ``folder/<SOPInstanceUID>.dcm``.

        Raises
        ------
        ArchiveError
            The archive refuses or drops an association, a C-FIND, C-GET or C-MOVE ends with a
            failure or with failed sub-operations, or a listed image does not arrive. Files
            that arrived before stay in ``folder``.
        """
        uid = study.study_instance_uid
        requests, expected = self._plan(uid)
        folder.mkdir(parents=True, exist_ok=True)
        receiver = _Receiver(uid, folder)
        if requests and self._retrieve == "get":
            self._get(uid, requests, receiver)
        elif requests:
            with self._move_lock:
                self._move(uid, requests, receiver)
        missing = sorted(expected - receiver.received.keys())
        if missing:
            raise ArchiveError(
                self.name,
                f"{len(missing)} of {len(expected)} image instances did not arrive although the "
                f"retrieve succeeded: {_some(missing)}",
                study=uid,
            )
        return sorted(receiver.received.values())

    def _plan(self, uid: str) -> tuple[list[Dataset], set[str]]:
        """The C-GET/C-MOVE identifiers that ask for exactly the study's image instances."""
        requests: list[Dataset] = []
        expected: set[str] = set()
        with self._association(
            [(StudyRootQueryRetrieveInformationModelFind, None)], study=uid
        ) as assoc:
            query = _identifier("SERIES", StudyInstanceUID=uid, SeriesInstanceUID="")
            answers = self._find(assoc, query, uid)
            series = sorted(
                {str(s.SeriesInstanceUID) for s in answers if s.get("SeriesInstanceUID")}
            )
            if not series:
                raise ArchiveError(self.name, "C-FIND found no series in this study", study=uid)
            for series_uid in series:
                query = _identifier(
                    "IMAGE",
                    StudyInstanceUID=uid,
                    SeriesInstanceUID=series_uid,
                    SOPInstanceUID="",
                    SOPClassUID="",
                )
                instances = self._find(assoc, query, uid)
                # An archive that does not return the SOP class: ask, and let C-GET/C-MOVE tell.
                images = sorted(
                    str(i.SOPInstanceUID)
                    for i in instances
                    if i.get("SOPInstanceUID")
                    and (
                        str(i.get("SOPClassUID", "")) in IMAGE_SOP_CLASSES
                        or not i.get("SOPClassUID")
                    )
                )
                if not images:
                    continue
                expected.update(images)
                request = _identifier("SERIES", StudyInstanceUID=uid, SeriesInstanceUID=series_uid)
                if len(images) < len(instances):
                    request.QueryRetrieveLevel = "IMAGE"
                    request.SOPInstanceUID = images
                requests.append(request)
        return requests, expected

    def _get(self, uid: str, requests: Sequence[Dataset], receiver: _Receiver) -> None:
        contexts: list[tuple[str, Sequence[str] | None]] = [
            (StudyRootQueryRetrieveInformationModelGet, None)
        ]
        contexts += [(sop, [syntax]) for sop in IMAGE_SOP_CLASSES for syntax in _RETRIEVE_SYNTAXES]
        with self._association(
            contexts,
            roles=[build_role(sop, scp_role=True) for sop in IMAGE_SOP_CLASSES],
            handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
            study=uid,
        ) as assoc:
            for request in requests:
                model = StudyRootQueryRetrieveInformationModelGet
                self._check_retrieve("C-GET", assoc.send_c_get(request, model), uid, receiver)

    def _move(self, uid: str, requests: Sequence[Dataset], receiver: _Receiver) -> None:
        ae = _application_entity(self._calling_ae, self._timeout)
        for sop in IMAGE_SOP_CLASSES:
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        where = f"{self.move_host}:{self.move_port}"
        try:
            server = cast(
                ThreadedAssociationServer,
                ae.start_server(
                    (self.move_host, self.move_port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
                ),
            )
        except OSError as exc:
            raise ArchiveError(
                self.name, f"cannot listen on {where} for C-MOVE ({exc})", study=uid
            ) from exc
        try:
            with self._association(
                [(StudyRootQueryRetrieveInformationModelMove, None)], study=uid
            ) as assoc:
                for request in requests:
                    responses = assoc.send_c_move(
                        request, self._calling_ae, StudyRootQueryRetrieveInformationModelMove
                    )
                    self._check_retrieve("C-MOVE", responses, uid, receiver)
        finally:
            server.shutdown()

    def _check_retrieve(
        self,
        operation: str,
        responses: Iterable[tuple[Dataset, Dataset | None]],
        uid: str,
        receiver: _Receiver,
    ) -> None:
        """Returns when every sub-operation succeeded; raises saying what failed otherwise."""
        for status, identifier in responses:
            if "Status" not in status:
                raise ArchiveError(
                    self.name,
                    f"{operation}: no response (association aborted or no answer within "
                    f"{self._timeout:g} s)",
                    study=uid,
                )
            code = int(status.Status)
            if code in _PENDING:
                continue
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if code == 0x0000 and failed == 0:
                return
            counts = ", ".join(
                f"{int(status.get(f'NumberOf{kind}Suboperations', 0) or 0)} {kind.lower()}"
                for kind in ("Completed", "Failed", "Warning")
            )
            detail = f"{operation} ended with status {_status(status)}: sub-operations {counts}"
            if identifier is not None and identifier.get("FailedSOPInstanceUIDList"):
                detail += f"; failed: {_some(_values(identifier, 'FailedSOPInstanceUIDList'))}"
            if receiver.problems:
                detail += f"; here: {_some(receiver.problems)}"
            if operation == "C-MOVE" and not receiver.received:
                detail += (
                    f"; is AE {self._calling_ae!r} at {self.move_host}:{self.move_port} a "
                    "known destination of the archive (Orthanc: DicomModalities)?"
                )
            raise ArchiveError(self.name, detail, study=uid)
        raise ArchiveError(self.name, f"{operation}: the archive sent no final status", study=uid)

    def _find(self, assoc: Association, query: Dataset, uid: str) -> list[Dataset]:
        answers: list[Dataset] = []
        level = query.QueryRetrieveLevel
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if "Status" not in status:
                raise ArchiveError(
                    self.name,
                    f"C-FIND at {level} level: no response (association aborted or no answer "
                    f"within {self._timeout:g} s)",
                    study=uid,
                )
            code = int(status.Status)
            if code == 0x0000:
                return answers
            if code not in _PENDING:
                raise ArchiveError(
                    self.name,
                    f"C-FIND at {level} level failed with status {_status(status)}",
                    study=uid,
                )
            if identifier is not None:
                answers.append(identifier)
        raise ArchiveError(self.name, f"C-FIND at {level} level: no final status", study=uid)

    @contextmanager
    def _association(
        self,
        contexts: Sequence[tuple[str, Sequence[str] | None]],
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[Any] = (),
        study: str = "",
    ) -> Iterator[Association]:
        """An established association, released at exit, or ArchiveError saying why not."""
        ae = _application_entity(self._calling_ae, self._timeout)
        for abstract_syntax, syntaxes in contexts:
            if syntaxes:
                ae.add_requested_context(abstract_syntax, syntaxes)
            else:
                ae.add_requested_context(abstract_syntax)
        connected: list[bool] = []
        assoc = ae.associate(
            self._host,
            self._port,
            ae_title=self._ae_title,
            ext_neg=list(roles) or None,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True)), *handlers],
        )
        if not assoc.is_established:
            where = f"{self._ae_title}@{self._host}:{self._port}"
            answer = assoc.acceptor.primitive
            if assoc.is_rejected and answer is not None:
                reason = (
                    f"association rejected by {where}: {answer.reason_str} ({answer.result_str}); "
                    f"check the AE title and that the archive accepts {self._calling_ae!r}"
                )
            elif not connected:
                reason = (
                    f"cannot connect to {where} (connection refused, host unreachable or no "
                    f"answer within {self._timeout:g} s): is the archive running?"
                )
            else:
                reason = f"association with {where} aborted during negotiation"
            raise ArchiveError(self.name, reason, study=study)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()


class _Receiver:
    """Writes the instances a C-GET or C-MOVE brings; refuses what was not asked for."""

    def __init__(self, study: str, folder: Path) -> None:
        self.study = study
        self.folder = folder
        self.received: dict[str, Path] = {}
        self.problems: list[str] = []

    def handle_store(self, event: evt.Event) -> int:
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
        try:
            study = str(event.dataset.StudyInstanceUID)
        except Exception as exc:  # a malformed dataset must never escape into pynetdicom
            return self._refuse(_STORE_CANNOT_UNDERSTAND, f"{sop}: unreadable dataset ({exc})")
        if sop_class not in IMAGE_SOP_CLASSES or study != self.study or not _UID.fullmatch(sop):
            return self._refuse(
                _STORE_CANNOT_UNDERSTAND, f"{sop}: not an image of this study (class {sop_class})"
            )
        path = self.folder / f"{sop}.dcm"
        try:
            with durable_file(path) as f:
                f.write(event.encoded_dataset(include_meta=True))
        except OSError as exc:
            return self._refuse(_STORE_OUT_OF_RESOURCES, f"{sop}: cannot write {path} ({exc})")
        self.received[sop] = path
        return _STORE_OK

    def _refuse(self, status: int, problem: str) -> int:
        logger.warning("Refused an instance of study %s: %s", self.study, problem)
        self.problems.append(problem)
        return status


class DicomwebSource:
    """A DICOMweb server: QIDO-RS to list, WADO-RS to retrieve instance by instance.

    One instance per request keeps memory to one cine. Proxies from the environment are used
    except for loopback. Thread-safe (no state between calls).
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = f"dicomweb:{self.base_url}"
        self._timeout = timeout
        loopback = urlsplit(self.base_url).hostname in _LOOPBACK
        self._opener: OpenerDirector = (
            build_opener(ProxyHandler({})) if loopback else build_opener()
        )

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        params = [("ModalitiesInStudy", "US"), ("includefield", "StudyDescription")]
        if since:
            params.append(("StudyDate", f"{since:%Y%m%d}-"))
        found: dict[str, ArchiveStudy] = {}
        for item in self._query("/studies", params, key="0020000D"):
            modalities = _json_values(item, "00080061")
            if not modalities or "US" in modalities:
                study = ArchiveStudy(
                    study_instance_uid=_json_value(item, "0020000D"),
                    patient_id=_json_value(item, "00100020"),
                    study_date=_date(_json_value(item, "00080020")),
                    description=_json_value(item, "00081030"),
                )
                found.setdefault(study.study_instance_uid, study)
        return _select(found.values(), since)

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
            except (InvalidDicomError, EOFError, ValueError) as exc:
                raise ArchiveError(
                    self.name, f"{url} answered no DICOM Part 10 file ({exc})", study=uid
                ) from exc
            if header.get("SOPInstanceUID") != sop:
                raise ArchiveError(
                    self.name, f"{url} answered instance {header.get('SOPInstanceUID')}", study=uid
                )
            if str(header.get("SOPClassUID", "")) not in IMAGE_SOP_CLASSES:
                continue
            path = folder / f"{sop}.dcm"
            with durable_file(path) as f:
                f.write(parts[0])
            paths.append(path)
        return sorted(paths)

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
        request = Request(url, headers={"Accept": accept})
        try:
            with self._opener.open(request, timeout=self._timeout) as answer:
                return answer.read(), answer.headers.get("Content-Type", "")
        except HTTPError as exc:
            text = " ".join(exc.read(300).decode(errors="replace").split())
            detail = f": {text[:200]}" if text else ""
            raise ArchiveError(
                self.name, f"GET {url} answered HTTP {exc.code} {exc.reason}{detail}", study=study
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


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _application_entity(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.maximum_pdu_size = 0  # no limit: cines are large
    return ae


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _values(ds: Dataset, keyword: str) -> list[str]:
    """A possibly multi-valued attribute as strings; [] when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _study(ds: Dataset) -> ArchiveStudy:
    return ArchiveStudy(
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_date=_date(str(ds.get("StudyDate", "") or "")),
        description=str(ds.get("StudyDescription", "") or ""),
    )


def _date(value: str) -> str:
    """DICOM DA as YYYYMMDD, from the ACR-NEMA YYYY.MM.DD too; "" when it is neither."""
    digits = value.strip().replace(".", "")
    return digits if re.fullmatch(r"[0-9]{8}", digits) else ""


def _select(studies: Iterable[ArchiveStudy], since: datetime.date | None) -> list[ArchiveStudy]:
    """Studies from ``since`` on (checked here too, as archives match dates loosely), sorted."""
    first = f"{since:%Y%m%d}" if since else ""
    chosen = [s for s in studies if s.study_instance_uid and (not first or s.study_date >= first)]
    return sorted(chosen, key=lambda s: (s.study_date, s.study_instance_uid))


def _status(status: Dataset) -> str:
    code = int(status.Status)
    comment = f", {status.ErrorComment}" if status.get("ErrorComment") else ""
    return f"0x{code:04X} ({code_to_category(code)}{comment})"


def _some(items: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _checked_uid(value: str, archive: str, uid: str) -> str:
    if len(value) > 64 or not _UID.fullmatch(value):
        raise ArchiveError(archive, f"the archive answered an invalid UID {value!r}", study=uid)
    return value


def _json_values(item: dict[str, Any], tag: str) -> list[str]:
    """An attribute of a DICOM JSON object (PS3.18 F.2) as strings; [] when absent."""
    element = item.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [str(v) for v in values if v is not None]


def _json_value(item: dict[str, Any], tag: str) -> str:
    values = _json_values(item, tag)
    return values[0] if values else ""
