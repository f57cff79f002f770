"""The node's DICOM listener: C-ECHO, and C-STORE of ultrasound cines.

:func:`start_listener` builds the application entity, its presentation contexts and handlers,
and starts it in the background. The C-STORE handler does one thing: write the instance durably
(temp file, fsync, rename), record it through the callable it was given, then answer 0x0000.
Nothing is acknowledged that is not on disk and queued; processing happens elsewhere, off the
association threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from lus_pacs.dicom_vocabulary import (
    CANNOT_UNDERSTAND,
    CHANGED_INSTANCE,
    IMAGE_SOP_CLASSES,
    OUT_OF_RESOURCES,
    REFUSED_SOP_CLASS,
    SUCCESS,
)
from lus_pacs.domain import Instance, Received
from lus_pacs.durable import durable_file
from lus_pacs.errors import describe
from lus_pacs.settings import Settings

log = logging.getLogger(__name__)


class Receiver:
    """The event handlers of one listener, with what they need passed in.

    Parameters
    ----------
    settings:
        The node's settings (incoming folder, unsupported-class policy).
    record:
        Records a stored instance and queues its job, before the instance is acknowledged, and
        says what it made of it (:class:`~lus_pacs.domain.Received`): an instance received
        again with other content is reprocessed or refused, as the settings say.
    on_stored:
        Called after an instance is acknowledged, to wake the worker.
    on_study_complete:
        Called with the studies an association sent, when it is released.
    """

    def __init__(
        self,
        settings: Settings,
        record: Callable[[Instance], Received],
        on_stored: Callable[[], None],
        on_study_complete: Callable[[list[str]], None],
    ) -> None:
        self._settings = settings
        self._record = record
        self._on_stored = on_stored
        self._on_study_complete = on_study_complete
        self._studies: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_store(self, event: evt.Event) -> int | Dataset:
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", ""))
        sop_instance = str(getattr(request, "AffectedSOPInstanceUID", ""))
        calling = event.assoc.requestor.ae_title
        if sop_class not in IMAGE_SOP_CLASSES:
            name = UID(sop_class).name
            if self._settings.unsupported_sop_class == "ignore":
                log.info("Ignored %s from %s: %s is not processed", sop_instance, calling, name)
                return SUCCESS
            log.warning("Refused %s from %s: %s is not processed", sop_instance, calling, name)
            return REFUSED_SOP_CLASS
        limit = self._settings.max_instance_bytes
        size, content = _size_and_digest(getattr(event.request, "DataSet", None))
        if size > limit:
            log.warning(
                "Refused %s from %s: %d bytes is over the limit of %d (max_instance_bytes)",
                sop_instance,
                calling,
                size,
                limit,
            )
            over = Dataset()
            over.Status = OUT_OF_RESOURCES
            over.ErrorComment = "over the node's max_instance_bytes"
            return over
        try:
            ds = event.dataset
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # a malformed dataset must never escape into pynetdicom
            log.warning("Refused %s from %s: unreadable dataset (%s)", sop_instance, calling, exc)
            return CANNOT_UNDERSTAND
        try:
            # Named by its content too: other content under a known UID never overwrites the
            # copy its results were made from.
            name = f"{_safe(sop_instance)}-{content[:16]}.dcm"
            path = self._settings.incoming_dir / _safe(study) / name
            with durable_file(path) as f:
                f.write(event.encoded_dataset(include_meta=True))
            instance = Instance(sop_instance, sop_class, study, series, calling, path, content)
            received = self._record(instance)
        except Exception as exc:  # disk full, database locked: the sender retries later
            log.error("Could not store %s from %s: %s", sop_instance, calling, exc)
            return OUT_OF_RESOURCES
        if received is Received.REFUSED:
            path.unlink(missing_ok=True)
            log.warning(
                "Refused %s from %s: received before with other content (changed_instance = "
                "refuse); the stored copy and its results are kept",
                sop_instance,
                calling,
            )
            status = Dataset()
            status.Status = CHANGED_INSTANCE
            status.ErrorComment = "SOP Instance UID received before with other content"
            return status
        with self._lock:
            self._studies.setdefault(id(event.assoc), set()).add(study)
        if received is Received.REPLACED:
            log.warning(
                "Stored %s from %s again with other content: its earlier results are marked "
                "replaced; new results, with new UIDs, follow",
                sop_instance,
                calling,
            )
        else:
            log.info(
                "Stored %s (%s) from %s%s",
                sop_instance,
                IMAGE_SOP_CLASSES[sop_class],
                calling,
                "; already processed with these models" if received is Received.KNOWN else "",
            )
        if received is not Received.KNOWN:
            self._on_stored()
        return SUCCESS

    def handle_released(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        if studies:
            self._on_study_complete(sorted(studies))

    def handle_connection(self, event: evt.Event) -> None:
        """Bound every read of a new connection: pynetdicom leaves the accepted socket
        blocking, so a peer that sends part of a PDU and stays silent would hold its thread
        (and one of the associations) for ever."""
        connection = getattr(event.assoc.dul.socket, "socket", None)
        if connection is None:
            return
        connection.settimeout(self._settings.network_timeout_s)
        # One host may not take every association: the others' scanners must get in.
        peer = event.assoc.requestor.address
        held = sum(
            1
            for other in event.assoc.ae.active_associations
            if other.is_acceptor and other.requestor.address == peer
        )
        limit = self._settings.max_associations_per_peer
        if held >= limit:
            log.warning(
                "Refused a connection from %s: it holds %d associations already "
                "(max_associations_per_peer = %d)",
                peer,
                held,
                limit,
            )
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "Rejected an association from %s at %s:%s",
            requestor.ae_title or "(no AE title)",
            requestor.address,
            requestor.port,
        )

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.handle_connection),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_released),
        ]


class Listener:
    """A running listener; ``port`` is the bound port, :meth:`stop` closes it."""

    def __init__(self, server: ThreadedAssociationServer) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting associations and end those in progress."""
        self._server.shutdown()


def start_listener(
    settings: Settings,
    *,
    record: Callable[[Instance], Received],
    on_stored: Callable[[], None],
    on_study_complete: Callable[[list[str]], None],
) -> Listener:
    """Listen on ``settings.host``:``settings.port`` (0: any free port) in background threads.

    Parameters
    ----------
    settings:
        AE title, address, calling-AE allow-list, incoming folder, unsupported-class policy.
    record:
        Records a stored instance and queues its job; says what it made of it. See
        :class:`Receiver`.
    on_stored:
        Called after a new instance is recorded, to wake the worker.
    on_study_complete:
        Called with the studies an association sent, when it is released or aborted.

    Returns
    -------
    Listener
        The running listener.

    Raises
    ------
    OSError
        The address cannot be bound (port in use, unknown host).
    """
    for name in _PEER_LOGGERS:
        peer_log = logging.getLogger(name)
        if _PEER_NOISE not in peer_log.filters:
            peer_log.addFilter(_PEER_NOISE)
    receiver = Receiver(settings, record, on_stored, on_study_complete)
    server = _make_ae(settings).start_server(
        (settings.host, settings.port), block=False, evt_handlers=receiver.handlers()
    )
    if server is None:  # pynetdicom returns None only when blocking
        raise RuntimeError("the DICOM listener did not start")
    return Listener(server)


def _make_ae(settings: Settings) -> AE:
    """The application entity: every storage class is accepted at association so that an
    unsupported instance gets a precise C-STORE status instead of a rejected context."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    for sop_class in IMAGE_SOP_CLASSES:  # retired US classes are not in pynetdicom's list
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    if settings.allowed_calling_aes:
        ae.require_calling_aet = list(settings.allowed_calling_aes)
    else:
        log.warning("No calling-AE allow-list configured: any AE may send to %s", ae.ae_title)
    ae.maximum_pdu_size = 0  # no limit: cines are large
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    return ae


class _PeerNoise(logging.Filter):
    """pynetdicom's reports of a misbehaving peer, made fit for an operator's log: a socket
    error is one line, without a traceback; and one connection's flood of the same complaint (a
    stream of garbage gives one "Unknown PDU type" line per 6 bytes) stops after a few lines."""

    KEEP = 3
    """Lines of one complaint logged per connection; the next says that more were dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: OrderedDict[tuple[int | None, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError):  # TimeoutError and the connection errors are OSErrors
            record.msg, record.args = f"peer connection: {describe(error)}", ()
            record.exc_info, record.exc_text = None, None
        key = (record.thread, str(record.msg)[:24])
        with self._lock:
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            self._seen.move_to_end(key)
            while len(self._seen) > 1024:
                self._seen.popitem(last=False)
        if seen == self.KEEP + 1:
            record.msg, record.args = f"{record.getMessage()} (more like it not logged)", ()
        return seen <= self.KEEP + 1


_PEER_NOISE = _PeerNoise()
_PEER_LOGGERS = ("pynetdicom.dul", "pynetdicom.transport", "pynetdicom.fsm")


def _size_and_digest(raw: BinaryIO | None) -> tuple[int, str]:
    """Size and SHA-256 of a received data set's bytes (pynetdicom's buffer), read where they
    lie: no copy of a cine of hundreds of MB on the association's thread."""
    if not isinstance(raw, io.BytesIO):
        return 0, hashlib.sha256(b"").hexdigest()
    with raw.getbuffer() as view:
        return view.nbytes, hashlib.sha256(view).hexdigest()


def _safe(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".") or "unknown"
