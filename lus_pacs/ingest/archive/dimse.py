"""A PACS over DIMSE: C-FIND (Study Root) to list, C-GET or C-MOVE to retrieve."""

from __future__ import annotations

import datetime
import logging
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import pydicom.uid
from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category
from pynetdicom.transport import ThreadedAssociationServer

from lus_pacs.dicom_vocabulary import (
    CANNOT_UNDERSTAND,
    IMAGE_SOP_CLASSES,
    OUT_OF_RESOURCES,
    PENDING,
    SUCCESS,
)
from lus_pacs.errors import ArchiveError
from lus_pacs.imaging.decode import decodable_syntaxes
from lus_pacs.ingest.archive.common import (
    UID,
    ArchiveStudy,
    dataset_study,
    instance_path,
    select_ultrasound,
    write_instance,
)
from lus_pacs.network import application_entity
from lus_pacs.settings import TlsFiles
from lus_pacs.tls import client_context, server_context

logger = logging.getLogger(__name__)

_RETRIEVE_SYNTAXES = tuple(decodable_syntaxes(ALL_TRANSFER_SYNTAXES))[:16]
"""Syntaxes a C-GET takes images in, each in its own presentation context, so the archive finds
the one it stores an instance in and sends it unchanged instead of transcoding it: those the
node decodes (HTJ2K among them; an HTJ2K cine failed its whole study, as no context took it,
while contexts went to MPEG and HEVC, which the node cannot read). 7 SOP classes x at most 16
syntaxes + the C-GET context + :data:`_OTHER_CLASSES` fit the 128 contexts of an association."""

_OTHER_CLASSES = (
    pydicom.uid.BasicTextSRStorage,
    pydicom.uid.EnhancedSRStorage,
    pydicom.uid.ComprehensiveSRStorage,
    pydicom.uid.Comprehensive3DSRStorage,
    pydicom.uid.ExtensibleSRStorage,
    pydicom.uid.KeyObjectSelectionDocumentStorage,
    pydicom.uid.SegmentationStorage,
    pydicom.uid.GrayscaleSoftcopyPresentationStateStorage,
    pydicom.uid.ColorSoftcopyPresentationStateStorage,
    pydicom.uid.EncapsulatedPDFStorage,
)
"""Classes of the results and documents an ultrasound study also holds (earlier results of this
node among them), taken and dropped when they come: an archive whose image-level C-FIND leaves
the SOP class out is asked for every instance, and one of these refused failed the study."""


class DimseSource:
    """A PACS queried by C-FIND (Study Root) and retrieved from by C-GET or C-MOVE.

    A fetch first lists the study's instances (C-FIND at SERIES, then IMAGE level) so that only
    image instances are asked for: a series of images is retrieved whole, a series that mixes in
    other classes by a list of SOP Instance UIDs. Every listed image must arrive.

    Thread-safe: each call opens its own associations; C-MOVE fetches are serialised because
    they share the Storage SCP port.

    With ``tls`` every association is DICOM TLS (the archive's certificate verified against
    ``tls.ca_bundle`` and its host name, ``tls.certificate`` presented when given), and the
    C-MOVE Storage SCP speaks TLS too (it needs ``certificate`` and ``private_key``).

    Attributes
    ----------
    move_port:
        The port the C-MOVE Storage SCP listens on, chosen when 0 was asked for; register
        ``calling_ae`` at ``move_host:move_port`` as a DICOM destination in the archive
        (Orthanc: ``DicomModalities``) before fetching.
    """

    skipped: tuple[tuple[str, str], ...] = ()

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
        tls: TlsFiles | None = None,
    ) -> None:
        self.name = f"dimse:{ae_title}@{host}:{port}"
        self._tls = tls
        self._ae_title, self._host, self._port = ae_title, host, port
        self._calling_ae, self._retrieve, self._timeout = calling_ae, retrieve, timeout
        self.move_host = move_host
        if retrieve == "move" and move_port == 0:
            move_port = _free_port(move_host)
        self.move_port = move_port
        self._move_lock = threading.Lock()

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        """The ultrasound studies (from ``since`` on). An archive that cuts its answer short
        (more matches than it returns: Orthanc's ``LimitFindResults`` ends with Cancel, others
        say Out of Resources) is asked again by halves of the date range, down to single days:
        before, such a PACS could not be re-processed at all. Studies with no date are not
        matched by a date range: an archive cut short loses those, and says so in the log.

        Raises
        ------
        ArchiveError
            The archive fails the query, or cuts short the answer for a single day.
        """
        with self._association([(StudyRootQueryRetrieveInformationModelFind, None)]) as assoc:
            try:
                answers = self._find(assoc, _study_query(f"{since:%Y%m%d}-" if since else ""), "")
            except _CutShort:
                first = since or _EARLIEST
                logger.warning(
                    "%s cut its study list short; asking again by date ranges from %s (studies "
                    "without a date are not listed then)",
                    self.name,
                    first,
                )
                answers = self._by_dates(assoc, first, datetime.date.today())
        return select_ultrasound(
            ((_values(answer, "ModalitiesInStudy"), dataset_study(answer)) for answer in answers),
            since,
        )

    def _by_dates(
        self, assoc: Association, first: datetime.date, last: datetime.date
    ) -> list[Dataset]:
        """The studies from ``first`` to ``last``, the range halved where the answer is cut
        short."""
        span = f"{first:%Y%m%d}-{last:%Y%m%d}"
        try:
            return self._find(assoc, _study_query(span), "")
        except _CutShort as exc:
            if first >= last:
                raise ArchiveError(
                    self.name,
                    f"C-FIND cut short the studies of {first:%Y-%m-%d} alone ({exc}): raise "
                    "the archive's limit of answers (Orthanc: LimitFindResults)",
                ) from exc
        middle = first + (last - first) // 2
        return [
            *self._by_dates(assoc, first, middle),
            *self._by_dates(assoc, middle + datetime.timedelta(days=1), last),
        ]

    def listed_instances(self, study: ArchiveStudy) -> frozenset[str] | None:
        return None  # its study list names no instances: finding them is a query per study

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
        missing = sorted(expected - receiver.received.keys() - receiver.dropped)
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
        contexts += [(sop, None) for sop in _OTHER_CLASSES]
        with self._association(
            contexts,
            roles=[build_role(sop, scp_role=True) for sop in (*IMAGE_SOP_CLASSES, *_OTHER_CLASSES)],
            handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
            study=uid,
        ) as assoc:
            for request in requests:
                model = StudyRootQueryRetrieveInformationModelGet
                self._check_retrieve("C-GET", assoc.send_c_get(request, model), uid, receiver)

    def _move(self, uid: str, requests: Sequence[Dataset], receiver: _Receiver) -> None:
        ae = application_entity(self._calling_ae, self._timeout, unlimited_pdu=True)
        for sop in (*IMAGE_SOP_CLASSES, *_OTHER_CLASSES):
            ae.add_supported_context(sop, ALL_TRANSFER_SYNTAXES)
        where = f"{self.move_host}:{self.move_port}"
        try:
            server = cast(
                ThreadedAssociationServer,
                ae.start_server(
                    (self.move_host, self.move_port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, receiver.handle_store)],
                    ssl_context=None if self._tls is None else server_context(self._tls),
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
                raise self._no_response(operation, uid)
            code = int(status.Status)
            if code in PENDING:
                continue
            failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
            if code == SUCCESS and failed == 0:
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
                raise self._no_response(f"C-FIND at {level} level", uid)
            code = int(status.Status)
            if code == SUCCESS:
                return answers
            if code in _CUT_SHORT and level == "STUDY":
                raise _CutShort(_status(status))
            if code not in PENDING:
                raise ArchiveError(
                    self.name,
                    f"C-FIND at {level} level failed with status {_status(status)}",
                    study=uid,
                )
            if identifier is not None:
                answers.append(identifier)
        raise ArchiveError(self.name, f"C-FIND at {level} level: no final status", study=uid)

    def _no_response(self, operation: str, uid: str) -> ArchiveError:
        return ArchiveError(
            self.name,
            f"{operation}: no response (association aborted or no answer within "
            f"{self._timeout:g} s)",
            study=uid,
        )

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
        ae = application_entity(self._calling_ae, self._timeout, unlimited_pdu=True)
        for abstract_syntax, syntaxes in contexts:
            if syntaxes:
                ae.add_requested_context(abstract_syntax, syntaxes)
            else:
                ae.add_requested_context(abstract_syntax)
        connected: list[bool] = []
        tls_args = None
        if self._tls is not None:
            tls_args = (client_context(self._tls), self._tls.server_name or self._host)
        assoc = ae.associate(
            self._host,
            self._port,
            ae_title=self._ae_title,
            ext_neg=list(roles) or None,
            tls_args=tls_args,
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
        service = contexts[0][0]  # the query or retrieve model; storage contexts follow it
        if not any(cx.abstract_syntax == service for cx in assoc.accepted_contexts):
            assoc.release()
            other = {
                StudyRootQueryRetrieveInformationModelGet: "; use --retrieve move",
                StudyRootQueryRetrieveInformationModelMove: "; use --retrieve get",
            }.get(service, "")
            raise ArchiveError(
                self.name,
                f"{self._ae_title}@{self._host}:{self._port} does not offer "
                f"{pydicom.uid.UID(service).name}{other}",
                study=study,
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()


class _Receiver:
    """Writes the images a C-GET or C-MOVE brings, drops the study's other instances
    (:data:`_OTHER_CLASSES`), refuses what was not asked for."""

    def __init__(self, study: str, folder: Path) -> None:
        self.study = study
        self.folder = folder
        self.received: dict[str, Path] = {}
        self.dropped: set[str] = set()
        """Instances of the study that are no images: taken, not written."""
        self.problems: list[str] = []

    def handle_store(self, event: evt.Event) -> int:
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
        try:
            study = str(event.dataset.StudyInstanceUID)
        except Exception as exc:  # a malformed dataset must never escape into pynetdicom
            return self._refuse(CANNOT_UNDERSTAND, f"{sop}: unreadable dataset ({exc})")
        if sop_class in _OTHER_CLASSES and study == self.study:
            self.dropped.add(sop)
            return SUCCESS
        if sop_class not in IMAGE_SOP_CLASSES or study != self.study or not UID.fullmatch(sop):
            return self._refuse(
                CANNOT_UNDERSTAND, f"{sop}: not an image of this study (class {sop_class})"
            )
        try:
            path = write_instance(self.folder, sop, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            where = instance_path(self.folder, sop)
            return self._refuse(OUT_OF_RESOURCES, f"{sop}: cannot write {where} ({exc})")
        self.received[sop] = path
        return SUCCESS

    def _refuse(self, status: int, problem: str) -> int:
        logger.warning("Refused an instance of study %s: %s", self.study, problem)
        self.problems.append(problem)
        return status


_CUT_SHORT = (0xFE00, OUT_OF_RESOURCES)
"""C-FIND statuses an archive ends a study list with when it has more matches than it sends."""
_EARLIEST = datetime.date(1900, 1, 1)
"""Where the halving of the date ranges starts when the run gives no ``since``."""


class _CutShort(Exception):  # noqa: N818 (a signal between two methods, not an error shown)
    """A C-FIND answer ended before every match was sent."""


def _study_query(dates: str) -> Dataset:
    query = _identifier("STUDY", StudyInstanceUID="", PatientID="", StudyDescription="")
    query.StudyDate = dates
    query.ModalitiesInStudy = "US"
    return query


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def _status(status: Dataset) -> str:
    code = int(status.Status)
    comment = f", {status.ErrorComment}" if status.get("ErrorComment") else ""
    return f"0x{code:04X} ({code_to_category(code)}{comment})"


def _some(items: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
