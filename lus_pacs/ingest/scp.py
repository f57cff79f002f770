"""The node's DICOM listener: C-ECHO, and C-STORE of ultrasound cines.

:func:`start_listener` builds the application entity, its presentation contexts and handlers,
and starts it in the background. The C-STORE handler does one thing: write the instance durably
(temp file, fsync, rename), record it through the callable it was given, then answer 0x0000.
Nothing is acknowledged that is not on disk and queued; processing happens elsewhere, off the
association threads.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import BinaryIO

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from lus_pacs.dicom_vocabulary import (
    CANNOT_UNDERSTAND,
    CHANGED_INSTANCE,
    IMAGE_SOP_CLASSES,
    MISMATCHED_CLASS,
    OUT_OF_RESOURCES,
    REFUSED_SOP_CLASS,
    SUCCESS,
    is_uid,
)
from lus_pacs.domain import Instance, Received
from lus_pacs.durable import durable_file
from lus_pacs.errors import ConfigError, describe
from lus_pacs.imaging.decode import decodable_syntaxes, inflates_past
from lus_pacs.ingest.audit import AuditEvent, AuditLog
from lus_pacs.settings import Settings
from lus_pacs.tls import server_context

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
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        self._record = record
        self._on_stored = on_stored
        self._on_study_complete = on_study_complete
        self._audit = audit
        self._studies: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._bound = {ae: _addresses(hosts) for ae, hosts in settings.calling_ae_hosts.items()}
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._starting: collections.Counter[str] = collections.Counter()
        """Per address: connections admitted whose association thread is not started yet
        (pynetdicom lists an association only once its thread runs)."""
        self._admitting = threading.Lock()
        """One held while an instance's file is written and recorded: the same content on
        two associations at once must not remove the file the other recorded."""

    def audit(self, event: AuditEvent, outcome: str, **facts: object) -> None:
        if self._audit is not None:
            self._audit.write(event, outcome, **facts)

    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_requested(self, event: evt.Event) -> None:
        """Reject an association whose calling AE title is bound to other addresses
        (``calling_ae_hosts``), before pynetdicom negotiates it."""
        assoc = event.assoc
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "")).strip()
        address = plain_address(assoc.requestor.address)
        allowed = self._bound.get(calling)
        if allowed is None or address in allowed:
            return
        reason = f"calling AE {calling} may associate only from {', '.join(sorted(allowed))}"
        log.warning("Rejected an association from %s at %s: %s", calling, address, reason)
        self.audit(
            AuditEvent.ASSOCIATION,
            "rejected",
            calling_ae=calling,
            address=address,
            reason=reason,
        )
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, user: calling AE not recognised
        # Wait for the rejection to go out, as pynetdicom's own rejections do: the association
        # closes the socket at once, and the scanner read "peer aborted" (a network fault, to
        # be retried) instead of "calling AE title not recognised" (a setting to correct).
        assoc.kill()

    def handle_accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        self.audit(
            AuditEvent.ASSOCIATION,
            "accepted",
            calling_ae=str(requestor.ae_title).strip(),
            called_ae=str(event.assoc.acceptor.ae_title).strip(),
            address=requestor.address,
            port=requestor.port,
        )

    def handle_store(self, event: evt.Event) -> int | Dataset:
        facts: dict[str, object] = {}
        status = self._store(event, facts)
        # The association was not idle while the node stored: pynetdicom restarts its idle
        # timer only when a PDU arrives, so a slow write or a locked job store counted against
        # network_timeout_s as the sender's silence, and the association was aborted under
        # the sender's next instance.
        timer = getattr(event.assoc.dul, "_idle_timer", None)  # pynetdicom 3.0's
        if timer is not None:
            timer.restart()
        code = int(status.Status) if isinstance(status, Dataset) else status
        comment = str(status.get("ErrorComment", "")) if isinstance(status, Dataset) else ""
        outcome = facts.pop("outcome", "received" if code == SUCCESS else "refused")
        self.audit(
            AuditEvent.INSTANCE,
            str(outcome),
            sop_instance_uid=str(getattr(event.request, "AffectedSOPInstanceUID", "")),
            sop_class_uid=str(getattr(event.request, "AffectedSOPClassUID", "")),
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            address=event.assoc.requestor.address,
            status=f"0x{code:04X}",
            reason=facts.pop("reason", comment or None),
            **facts,
        )
        return status

    def _store(self, event: evt.Event, facts: dict[str, object]) -> int | Dataset:
        """Store the instance; what the audit line needs beyond the status goes in ``facts``
        (``outcome`` when it is not plain received or refused, ``reason``, ``patient_id``,
        ``study_instance_uid``)."""
        request = event.request
        sop_class = str(getattr(request, "AffectedSOPClassUID", ""))
        sop_instance = str(getattr(request, "AffectedSOPInstanceUID", ""))
        calling = event.assoc.requestor.ae_title
        if sop_class not in IMAGE_SOP_CLASSES:
            name = UID(sop_class).name
            facts["reason"] = f"{name} is not processed"
            if self._settings.unsupported_sop_class == "ignore":
                log.info("Ignored %s from %s: %s is not processed", sop_instance, calling, name)
                facts["outcome"] = "ignored"
                return SUCCESS
            log.warning("Refused %s from %s: %s is not processed", sop_instance, calling, name)
            return REFUSED_SOP_CLASS
        limit = self._settings.max_instance_bytes
        raw = getattr(event.request, "DataSet", None)
        size = _size(raw)
        reserve = self._settings.min_free_bytes
        free = free_bytes(self._settings) if reserve else None
        if free is not None and free - size < reserve:
            log.error(
                "Refused %s from %s: the disk is nearly full (%d bytes free, min_free_bytes %d)",
                sop_instance,
                calling,
                free,
                self._settings.min_free_bytes,
            )
            facts["reason"] = "the node's disk is nearly full (min_free_bytes)"
            full = Dataset()
            full.Status = OUT_OF_RESOURCES
            full.ErrorComment = "the node's disk is nearly full"
            return full
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
        if event.context.transfer_syntax == DeflatedExplicitVRLittleEndian and _inflates_past(
            raw, min(limit, max(INFLATION_ALLOWED, MAX_INFLATION * size))
        ):
            # pynetdicom inflates a deflated data set whole to read it: a few MB of zeros would
            # take GB of the node's memory before any limit is looked at.
            log.warning(
                "Refused %s from %s: its deflated data set inflates past %d times its size "
                "(and %d MiB) or past the limit of %d (max_instance_bytes)",
                sop_instance,
                calling,
                MAX_INFLATION,
                INFLATION_ALLOWED >> 20,
                limit,
            )
            facts["reason"] = "its deflated data set inflates past the node's limits"
            over = Dataset()
            over.Status = OUT_OF_RESOURCES
            over.ErrorComment = "inflates past the node's limits"
            return over
        try:
            ds = event.dataset
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            named = str(ds.get("SOPInstanceUID", ""))
            facts["patient_id"] = str(ds.get("PatientID", ""))
            facts["study_instance_uid"] = study
            content = content_digest(ds)
        except Exception as exc:  # a malformed dataset must never escape into pynetdicom
            log.warning("Refused %s from %s: unreadable dataset (%s)", sop_instance, calling, exc)
            facts["reason"] = f"unreadable dataset ({exc})"
            return CANNOT_UNDERSTAND
        for refusal, wrong in (
            (CANNOT_UNDERSTAND, _identity_problem(sop_instance, named, study, series)),
            (MISMATCHED_CLASS, _class_problem(sop_class, str(ds.get("SOPClassUID", "")))),
            # Refused now, not acknowledged to fail later: the sender learns no results come.
            (OUT_OF_RESOURCES, _over_cine_limits(ds, self._settings)),
        ):
            if wrong is not None:
                reason, comment = wrong
                log.warning("Refused %s from %s: %s", sop_instance, calling, reason)
                facts["reason"] = reason
                refused = Dataset()
                refused.Status = refusal
                refused.ErrorComment = comment
                return refused
        # Named by its content too: other content under a known UID never overwrites the copy
        # its results were made from.
        name = f"{_safe(sop_instance)}-{content[:16]}.dcm"
        path = self._settings.incoming_dir / _safe(study) / name
        with self._stripes[hash(name) % _STRIPES]:
            kept = path.exists()  # this content came before: that copy stays whatever happens
            try:
                with durable_file(path) as f:
                    f.write(event.encoded_dataset(include_meta=True))
                instance = Instance(sop_instance, sop_class, study, series, calling, path, content)
                received = self._record(instance)
            except Exception as exc:  # disk full, database locked: the sender retries later
                log.error("Could not store %s from %s: %s", sop_instance, calling, exc)
                facts["reason"] = f"could not be stored ({exc})"
                if not kept:  # no row names it: nothing would ever process or remove it
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                return OUT_OF_RESOURCES
        if received is Received.REFUSED:
            if not kept:
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
        facts["outcome"] = received.value
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
        (and one of the associations) for ever. And bound each PDU (:func:`_bounded_reads`):
        pynetdicom reads a PDU whole, of the length its header declares."""
        connection = getattr(event.assoc.dul.socket, "socket", None)
        if connection is not None:
            connection.settimeout(self._settings.network_timeout_s)
        if event.assoc.dul.socket is not None:
            _bounded_reads(event.assoc.dul.socket, self._settings.network_timeout_s)

    def refuses(self, peer: str, connection: socket.socket, ae: AE) -> bool:
        """Whether the new ``connection`` from ``peer`` is refused because that address holds
        :attr:`~lus_pacs.settings.Settings.max_associations_per_peer` associations already
        (one host may not take every association: the others' scanners must get in); a
        refused connection is logged, audited and shut. One admitted holds its place until
        :meth:`started` (a burst of connections all counted the associations of before them:
        19 held against a limit of 16)."""
        limit = self._settings.max_associations_per_peer
        with self._admitting:
            held = self._starting[peer] + sum(
                1
                for other in ae.active_associations
                if other.is_acceptor and other.requestor.address == peer
            )
            if held < limit:
                self._starting[peer] += 1
        if held >= limit:
            log.warning(
                "Refused a connection from %s: it holds %d associations already "
                "(max_associations_per_peer = %d)",
                peer,
                held,
                limit,
            )
            self.audit(
                AuditEvent.CONNECTION,
                "refused",
                address=peer,
                reason=f"holds {held} associations (max_associations_per_peer = {limit})",
            )
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            return True
        return False

    def started(self, peer: str) -> None:
        """The association of a connection :meth:`refuses` admitted runs (or never will): it
        is counted among the active ones now."""
        with self._admitting:
            self._starting[peer] -= 1
            if self._starting[peer] <= 0:
                del self._starting[peer]

    def speaks_tls(self, peer: str, connection: socket.socket) -> bool:
        """Whether a new connection to this plain listener opens with a TLS handshake (a
        scanner set up for DICOM TLS): logged and audited with the fix named, and shut. Its
        bytes read as PDUs of an unknown type, and the connection waited out the network
        timeout with pynetdicom's log lines only. No DICOM PDU type is 0x16."""
        connection.settimeout(self._settings.network_timeout_s)
        try:
            first = connection.recv(1, socket.MSG_PEEK)
        except OSError:  # silent or gone: pynetdicom's timeouts and log deal with it
            return False
        if first != _TLS_HANDSHAKE:
            return False
        reason = (
            "it opened with a TLS handshake: this listener speaks plain DICOM (set the "
            "scanner's DICOM TLS off, or give the listener its certificate: [tls] in the settings)"
        )
        log.warning("Refused a connection from %s: %s", peer, reason)
        self.audit(AuditEvent.CONNECTION, "refused", address=peer, reason=reason)
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        return True

    def handshake(self, peer: str, connection: ssl.SSLSocket) -> bool:
        """Whether the TLS handshake of a new connection from ``peer`` succeeds within
        :attr:`~lus_pacs.settings.Settings.network_timeout_s`; a failure is logged and
        audited with its reason (the connection is then closed)."""
        connection.settimeout(self._settings.network_timeout_s)
        try:
            connection.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            reason = f"TLS handshake failed: {describe(exc)}"
            log.warning("Refused a connection from %s: %s", peer, reason)
            self.audit(AuditEvent.CONNECTION, "refused", address=peer, reason=reason)
            return False
        return True

    def handle_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        answer = event.assoc.acceptor.primitive
        reason = _REJECTIONS.get(
            (getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)),
            "rejected",
        )
        log.warning(
            "Rejected an association from %s at %s:%s: %s",
            requestor.ae_title or "(no AE title)",
            requestor.address,
            requestor.port,
            reason,
        )
        self.audit(
            AuditEvent.ASSOCIATION,
            "rejected",
            calling_ae=str(requestor.ae_title).strip(),
            called_ae=str(getattr(requestor.primitive, "called_ae_title", "")).strip(),
            address=requestor.address,
            port=requestor.port,
            reason=reason,
        )

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self.handle_connection),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_released),
        ]


class _PeerLimitedRequest(RequestHandler):
    """pynetdicom's handler of an accepted connection, which first asks the receiver whether
    the connection's address may have one more association (:meth:`Receiver.refuses`).

    A refused connection gets no association at all. Refused from an association instead (at
    its connection event), it stayed counted as active, and so held one of the peer's and
    the listener's associations, until the ACSE timeout: pynetdicom's acceptor waits that long
    for an A-ASSOCIATE-RQ even on a closed socket, so a peer retrying faster kept itself out;
    and an A-ASSOCIATE-RQ already on the wire could still be negotiated."""

    def __init__(
        self,
        receiver: Receiver,
        request: socket.socket,
        client_address: tuple[str, int],
        server: ThreadedAssociationServer,
    ) -> None:
        self._receiver = receiver
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        peer = str(self.client_address[0])
        if self._receiver.refuses(peer, self.request, self.ae):
            return
        try:
            if isinstance(self.request, ssl.SSLSocket):
                if not self._receiver.handshake(peer, self.request):
                    return
            elif self._receiver.speaks_tls(peer, self.request):
                return
            super().handle()  # returns once the association's thread has started
        finally:
            self._receiver.started(peer)


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
    audit: AuditLog | None = None,
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

    audit:
        Where every association, instance and refusal is recorded.

    Returns
    -------
    Listener
        The running listener.

    Raises
    ------
    ConfigError
        The address is not loopback and no calling AE is allowed, and the settings do not say
        ``accept_any_calling_ae``; or an address in ``calling_ae_hosts`` does not resolve.
    OSError
        The address cannot be bound (port in use, unknown host).
    """
    check_exposure(settings)
    for name in _PEER_LOGGERS:
        peer_log = logging.getLogger(name)
        if _PEER_NOISE not in peer_log.filters:
            peer_log.addFilter(_PEER_NOISE)
    receiver = Receiver(settings, record, on_stored, on_study_complete, audit)
    server = _make_ae(settings).start_server(
        (settings.host, settings.port),
        block=False,
        evt_handlers=receiver.handlers(),
        ssl_context=server_context(settings.tls, handshake_later=True) if settings.tls else None,
    )
    # pynetdicom returns None only when blocking; the server's socket is set once bound.
    if server is None or server.socket is None:
        raise RuntimeError("the DICOM listener did not start")
    server.socket.listen(listen_backlog(settings))
    # socketserver makes each connection's handler by calling this with the connection.
    server.RequestHandlerClass = partial(_PeerLimitedRequest, receiver)
    return Listener(server)


LISTEN_BACKLOG = 128
"""Connections the kernel queues for the listener to accept, at least."""
_TLS_HANDSHAKE = b"\x16"
"""The first byte of a TLS connection (a handshake record)."""
MAX_PDU_BYTES = 1 << 20
"""The largest PDU the listener takes (1 MiB): a cine comes in PDUs of at most this, each
restarting the idle timer (``network_timeout_s``), so even a slow link delivers a large cine.
dcmtk's senders use 16 kB."""


_PDU_HEADER_SLACK = 64 * 1024
"""Beyond :data:`MAX_PDU_BYTES`, what a PDU of another kind may hold (an association request
lists its contexts: a few kB)."""
MIN_PDU_RATE = 8 * 1024
"""Bytes a second a PDU must come at, beyond the idle timer: a peer that drips one byte
within every ``network_timeout_s`` held its association (one of a peer's slots) for good."""
MAX_INFLATION = 100
"""Times its size a deflated data set may inflate to beyond :data:`INFLATION_ALLOWED` (a real
image rarely 20): a few MB of zeros inflated to GB before a limit of the node's size was
reached."""
INFLATION_ALLOWED = 64 * 2**20
"""What any deflated data set may inflate to (a mostly black cine deflates far)."""


def _bounded_reads(association_socket: AssociationSocket, idle_s: float) -> None:
    """Make ``association_socket`` (pynetdicom's) refuse a PDU longer than the node announced
    (pynetdicom reads it whole, of the length its header declares, up to 4 GiB: a bare
    connection, before any AE title is checked, took the node's memory), and one that comes
    slower than :data:`MIN_PDU_RATE`. Either ends the connection (pynetdicom's event for a
    transport closed: the association is aborted)."""
    limit = MAX_PDU_BYTES + _PDU_HEADER_SLACK

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            log.warning(
                "Closed a connection that sent a PDU of %d bytes, over the %d the node takes "
                "(%d announced)",
                nr_bytes,
                limit,
                MAX_PDU_BYTES,
            )
            raise OSError(f"a PDU of {nr_bytes} bytes, over the limit of {limit}")
        deadline = time.monotonic() + idle_s + nr_bytes / MIN_PDU_RATE
        data = bytearray()
        while len(data) < nr_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"a PDU of {nr_bytes} bytes not received in time")
            connection = association_socket.socket
            if connection is None:  # closed meanwhile
                return data
            chunk = connection.recv(min(65536, nr_bytes - len(data)))
            if not chunk:  # closed: what came (pynetdicom's reading says the PDU is short)
                return data
            data.extend(chunk)
        return data

    association_socket.recv = recv  # type: ignore[method-assign]


def listen_backlog(settings: Settings) -> int:
    """The listening socket's backlog: :data:`LISTEN_BACKLOG`, or
    :attr:`~lus_pacs.settings.Settings.max_associations` where that is more.

    pynetdicom's server listens with the backlog of Python's ``socketserver``, 5: in a burst of
    more connections than that (scanners pushing at once, a PACS opening parallel associations,
    a peer flooding the port) the kernel drops the rest's handshakes until the queue drains and
    the peers retry (after 1, 2, 4 s...): 40 connections took 6 s to connect, reaching the node
    late and in bunches, and a bunch of idle ones can fill
    :attr:`~lus_pacs.settings.Settings.max_associations_per_peer` again after the earlier ones
    timed out. Listening again on the bound socket sets the new backlog (Linux; the kernel caps
    it at ``net.core.somaxconn``)."""
    return max(LISTEN_BACKLOG, settings.max_associations)


def _make_ae(settings: Settings) -> AE:
    """The application entity: every storage class is accepted at association so that an
    unsupported instance gets a precise C-STORE status instead of a rejected context. The
    classes read as cines only in the transfer syntaxes their pixels can be decoded in
    (:func:`~lus_pacs.imaging.decode.decodable_syntaxes`: no MPEG or HEVC video)."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None and context.abstract_syntax not in IMAGE_SOP_CLASSES:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    readable = decodable_syntaxes(ALL_TRANSFER_SYNTAXES)
    for sop_class in IMAGE_SOP_CLASSES:  # retired US classes are not in pynetdicom's list
        ae.add_supported_context(sop_class, readable)
    if settings.allowed_aes:
        ae.require_calling_aet = list(settings.allowed_aes)
    else:
        log.warning("No calling-AE allow-list configured: any AE may send to %s", ae.ae_title)
    ae.require_called_aet = True  # an association must call this node by its AE title
    # Not unlimited: a sender that takes "no limit" at its word sends a cine as one PDU, and
    # pynetdicom restarts its idle timer per PDU received, so a large cine over a slow link
    # was aborted by network_timeout_s mid-transfer and could never arrive.
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    return ae


def free_bytes(settings: Settings) -> int | None:
    """Free bytes of the file system the node keeps its data on; None when it cannot be
    read."""
    folder = settings.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # before the first instance made it
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


IN_CONTAINER = "LUS_PACS_IN_CONTAINER"
"""Set (to 1) by the image: the node runs in a container, whose loopback no scanner reaches."""


def check_exposure(settings: Settings) -> None:
    """Refuse to listen on an address other than loopback with no calling AE allowed (anyone
    on the network could send), unless the settings accept it in so many words; and, in the
    container (:data:`IN_CONTAINER`), to listen on loopback, where no scanner reaches it.

    Raises
    ------
    ConfigError
        Naming the two ways out.
    """
    if os.environ.get(IN_CONTAINER) and _loopback(settings.host):
        # A settings file mounted over config/container.toml that leaves host out falls back
        # to loopback: the published port reaches nothing, while the health check, which asks
        # over loopback, stays green.
        raise ConfigError(
            f"Refusing to listen on {settings.host} inside the container: the published DICOM "
            'port would reach nothing. Set host = "0.0.0.0" (start your settings from a copy '
            "of config/container.toml: keys left out take the defaults for a machine, not for "
            "the container)."
        )
    if settings.allowed_aes or settings.accept_any_calling_ae or _loopback(settings.host):
        return
    raise ConfigError(
        f"Refusing to listen on {settings.host or 'every address'}:{settings.port} with no "
        "calling-AE allow-list: any host on the network could send to the node. List the "
        'scanners in the settings (allowed_calling_aes = ["US1", ...], and optionally their '
        'addresses: [calling_ae_hosts] US1 = ["10.0.0.5"]), or set accept_any_calling_ae = '
        "true to accept any sender."
    )


def _loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host or None, None)}
    except OSError:
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in found
    )


def plain_address(address: str) -> str:
    """``address`` as the listener compares it: an IPv4 peer of a dual-stack listener (host
    "::") is seen as ``::ffff:a.b.c.d``, its IPv4 address here; other text as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def _over_cine_limits(ds: Dataset, settings: Settings) -> tuple[str, str] | None:
    """Why a cine's header puts it over ``max_cine_frames`` or ``max_cine_pixels`` (the log's
    reason and the status's error comment), or None; a header that does not say is left to
    the decoder, which counts what the Pixel Data holds."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        pixels = frames * int(ds.Rows) * int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None
    if frames > settings.max_cine_frames:
        limit = settings.max_cine_frames
        reason = f"{frames} frames is over the limit of {limit} (max_cine_frames)"
        return reason, f"{frames} frames is over the node's max_cine_frames"
    if pixels > settings.max_cine_pixels:
        limit = settings.max_cine_pixels
        reason = f"{pixels} pixels is over the limit of {limit} (max_cine_pixels)"
        return reason, "over the node's max_cine_pixels: send shorter loops"
    return None


def _addresses(hosts: tuple[str, ...]) -> frozenset[str]:
    """The IP addresses of ``hosts`` (IP addresses or names, resolved once at start)."""
    found: set[str] = set()
    for host in hosts:
        try:
            found |= {plain_address(str(info[4][0])) for info in socket.getaddrinfo(host, None)}
        except OSError as exc:
            raise ConfigError(f"calling_ae_hosts: {host!r} does not resolve ({exc}).") from exc
    return frozenset(found)


_REJECTIONS: dict[tuple[object, object], str] = {
    (0x01, 0x02): "no reason given",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x03, 0x02): "too many associations (max_associations)",
    (0x02, 0x01): "no reason given (ACSE)",
    (0x02, 0x02): "protocol version not supported",
}
"""Why an association was rejected, by (result source, diagnostic) of the A-ASSOCIATE-RJ."""


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


_STRIPES = 64
"""Locks instances are written under, chosen by file name."""


def _size(raw: BinaryIO | None) -> int:
    """The size of a received data set's bytes (pynetdicom's buffer), read where they lie."""
    if not isinstance(raw, io.BytesIO):
        return 0
    with raw.getbuffer() as view:
        return view.nbytes


CONTENT_DIGEST_PREFIX = "c-"
"""Marks a digest of what an instance says (:func:`content_digest`): one without it is of the
bytes as received, stored by a node before 2026-12-07."""


def content_digest(ds: Dataset) -> str:
    """SHA-256 of what a received data set says, not of how it was encoded: its elements but
    the Pixel Data written in Implicit VR Little Endian (which holds no VR to differ by), then
    the Pixel Data's bytes as received (not copied). The same instance sent again in another
    uncompressed syntax (a PACS forwarding a scanner's cine in Implicit VR) is the same
    content; other pixels, other compressed bytes or another value of any element are not."""
    digest = hashlib.sha256()
    header = Dataset()
    for element in ds.elements():  # as read: no value converted that need not be
        if element.tag != _PIXEL_DATA:
            header[element.tag] = element
    encoded = DicomBytesIO()
    encoded.is_implicit_VR, encoded.is_little_endian = True, True
    write_dataset(encoded, header)
    digest.update(encoded.getvalue())
    if _PIXEL_DATA in ds:
        pixels = ds.get_item(_PIXEL_DATA).value
        digest.update(pixels if isinstance(pixels, bytes | bytearray) else b"")
    return CONTENT_DIGEST_PREFIX + digest.hexdigest()


_PIXEL_DATA = 0x7FE00010


def _inflates_past(raw: BinaryIO | None, limit: int) -> bool:
    """:func:`~lus_pacs.imaging.decode.inflates_past` of pynetdicom's buffer, read from its
    start and left there for pynetdicom."""
    if not isinstance(raw, io.BytesIO):
        return False
    raw.seek(0)
    try:
        return inflates_past(raw, limit)
    except zlib.error:  # not a deflate stream: refused as unreadable when it is read
        return False
    finally:
        raw.seek(0)


def _identity_problem(
    requested: str, named: str, study: str, series: str
) -> tuple[str, str] | None:
    """Why an instance cannot be stored under its identity (the reason for the log and the
    audit trail, and a comment of at most 64 characters for the sender), or None. Its UIDs name
    its folder, its job and its results' references: each must have a UID's form
    (:func:`~lus_pacs.dicom_vocabulary.is_uid`), and the data set's SOP Instance UID must be the
    one the request announced (jobs are keyed by the one, results made from the other)."""
    for name, uid in (
        ("SOP Instance UID", named),
        ("Study Instance UID", study),
        ("Series Instance UID", series),
    ):
        if not is_uid(uid):
            return f"its {name} {uid[:80]!r} is not a valid UID", f"{name} is not a valid UID"
    if named != requested:
        return (
            f"its data set's SOP Instance UID {named} is not the request's Affected SOP "
            f"Instance UID {requested}",
            "SOP Instance UID differs from the request's",
        )
    return None


def _class_problem(requested: str, named: str) -> tuple[str, str] | None:
    """Why a data set of another SOP class than the request announced is refused (the reason,
    and the comment for the sender), or None. One without a SOP Class UID is taken as the
    request's class."""
    if not named or named == requested:
        return None
    return (
        f"its data set's SOP Class UID {named[:80]} is not the request's Affected SOP Class "
        f"UID {requested}",
        "SOP Class UID differs from the request's",
    )


def _safe(uid: str) -> str:
    return "".join(c for c in uid if c.isdigit() or c == ".") or "unknown"
