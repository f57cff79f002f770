"""C-STORE and C-ECHO to one DICOM destination: one attempt, over one or a few associations.

Retries and backoff belong to the job store, which records each attempt durably; this module only
says, for one attempt, what was delivered, or raises :class:`ExportError` saying what was not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, VerificationPresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from lus_pacs.dicom_vocabulary import DUPLICATE_SOP_INSTANCE, SUCCESS
from lus_pacs.errors import ConfigError, ExportError
from lus_pacs.network import application_entity
from lus_pacs.settings import DicomDestination
from lus_pacs.tls import client_context

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128
"""Presentation contexts one association can propose (PS3.8: odd context IDs 1..255)."""

_DELIVERED = ("Success", "Warning")
"""Status categories that mean the destination kept the instance (0xB000, 0xB006, 0xB007 warn)."""

_CLASS_NOT_SUPPORTED = 0x0122
"""C-STORE "Refused: SOP Class not supported": the destination will not take the class later
either."""


@dataclass(frozen=True)
class _Item:
    """One instance to send, described before the association opens."""

    source: Dataset | Path
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID

    @property
    def label(self) -> str:
        where = f" from {self.source}" if isinstance(self.source, Path) else ""
        return f"{self.sop_class.name} {self.sop_instance}{where}"


def store(
    datasets_or_paths: Sequence[Dataset | Path],
    destination: DicomDestination,
    *,
    calling_ae: str,
    timeout: float = 30.0,
) -> list[int]:
    """Send instances to ``destination`` by C-STORE, over up to ``destination.associations``
    associations at once (the instances dealt among them in turn).

    A PACS that takes each instance slowly (Orthanc: about 90 ms, most of it making the instance
    durable) takes a result set of five in about a third of the time over four associations
    than over one (``bench/realtime.py --e2e``). Every association must deliver: one that fails
    fails the call, and the caller sends the whole set again (the instances already stored come
    back under the same UIDs, which a PACS keeps once).

    Each SOP class is proposed with the instance's own transfer syntax, Explicit VR Little Endian
    and Implicit VR Little Endian (the default every SCP must take, and all some take), as
    separate presentation contexts, so the destination can accept any. A compressed instance
    whose own syntax is refused is decompressed and sent in the uncompressed syntax accepted.

    Parameters
    ----------
    datasets_or_paths:
        Datasets (with ``file_meta.TransferSyntaxUID``) or DICOM files to send, in order.
    destination:
        The node to send to.
    calling_ae:
        This node's AE title.
    timeout:
        Seconds allowed for the TCP connection, association negotiation and each response.

    Returns
    -------
    list[int]
        The C-STORE status of each instance, in input order: 0x0000, or a warning such as 0xB000,
        0xB006 or 0xB007 (the destination kept the instance).

    Raises
    ------
    ExportError
        An input cannot be read, the association is refused, rejected or aborted, or any instance
        is not delivered (failure status, no accepted presentation context, no response). The
        message names the destination, its AE title, host:port and each SOP Instance UID.
        ``final`` when every instance not delivered was refused in a way the same attempt meets
        again (its SOP class taken in no presentation context, or answered 0x0122): the rest
        were delivered, and sending them again for a day would change nothing.
    """
    if not datasets_or_paths:
        return []
    items = [_describe(source, destination) for source in datasets_or_paths]
    lanes = min(destination.associations, len(items))
    if lanes == 1:
        statuses = _store_on_one(items, destination, calling_ae, timeout)
    else:
        dealt = [list(range(lane, len(items), lanes)) for lane in range(lanes)]
        with ThreadPoolExecutor(lanes, thread_name_prefix=f"store-{destination.name}") as pool:
            futures = [
                pool.submit(
                    _store_on_one, [items[i] for i in lane], destination, calling_ae, timeout
                )
                for lane in dealt
            ]
        errors: list[BaseException | None] = [f.exception() for f in futures]
        refused = [lane for lane, e in enumerate(errors) if isinstance(e, _NotAssociatedError)]
        late: list[int] = []
        late_codes: list[int] = []
        answered = any(getattr(errors[lane], "rejected", False) for lane in refused)
        if refused and (len(refused) < lanes or answered):
            # The destination took some associations but not all, or refused them at once (a
            # limit of associations): what the refused ones carried goes over one more
            # association, after the others.
            logger.warning(
                "%s took %d of %d associations at once (set associations = %d for it): %s",
                _where(destination),
                lanes - len(refused),
                lanes,
                max(1, lanes - len(refused)),
                errors[refused[0]],
            )
            late = [i for lane in refused for i in dealt[lane]]
            try:
                late_codes = _store_late([items[i] for i in late], destination, calling_ae, timeout)
                for lane in refused:
                    errors[lane] = None
            except ExportError as exc:
                for lane in refused:
                    errors[lane] = exc
        failed = [e for e in errors if e is not None]
        if failed:
            if len(failed) == 1 or not all(isinstance(e, ExportError) for e in failed):
                raise failed[0]
            reasons = dict.fromkeys(e.reason for e in failed if isinstance(e, ExportError))
            raise ExportError(
                destination.name,
                "; ".join(reasons),
                unavailable=all(isinstance(e, ExportError) and e.unavailable for e in failed),
                final=all(isinstance(e, ExportError) and e.final for e in failed),
            )
        statuses = [0] * len(items)
        for lane, future in enumerate(futures):
            if lane not in refused:
                for index, code in zip(dealt[lane], future.result(), strict=True):
                    statuses[index] = code
        for index, code in zip(late, late_codes, strict=True):
            statuses[index] = code
    logger.info("sent %d instances to %s", len(items), _where(destination))
    return statuses


def _store_late(
    items: Sequence[_Item], destination: DicomDestination, calling_ae: str, timeout: float
) -> list[int]:
    """:func:`_store_on_one` for what refused associations carried: a destination may still
    count an association it has just released, so a refusal is tried again twice, 0.5 s apart."""
    for _ in range(2):
        try:
            return _store_on_one(items, destination, calling_ae, timeout)
        except _NotAssociatedError:
            time.sleep(0.5)
    return _store_on_one(items, destination, calling_ae, timeout)


def _store_on_one(
    items: Sequence[_Item], destination: DicomDestination, calling_ae: str, timeout: float
) -> list[int]:
    """C-STORE ``items`` over one association (see :func:`store`): their statuses, in order."""
    contexts = _contexts(items)
    if len(contexts) > MAX_CONTEXTS:
        raise ExportError(
            destination.name,
            f"{len(contexts)} presentation contexts needed (SOP class x transfer syntax), "
            f"one association allows {MAX_CONTEXTS}: send fewer SOP classes per call",
        )
    ae = application_entity(calling_ae, timeout)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])

    assoc = _associate(ae, destination)
    statuses: list[int] = []
    failures: list[str] = []
    refused: list[str] = []  # failures the same attempt meets again (see store's Raises)
    try:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        for item in items:
            if not assoc.is_established:
                raise ExportError(
                    destination.name,
                    f"association with {_where(destination)} ended (aborted by the peer) after "
                    f"{len(statuses)} of {len(items)} instances were delivered",
                )
            try:
                payload = _payload(item, accepted)
            except (OSError, ValueError, RuntimeError, NotImplementedError) as exc:
                refused.append(
                    f"{item.label}: only uncompressed was accepted and decompressing failed: {exc}"
                )
                continue
            if payload is None:
                refused.append(
                    f"{item.label}: no presentation context accepted for it in "
                    f"{item.transfer_syntax.name} or an uncompressed syntax"
                )
                continue
            try:
                status = assoc.send_c_store(payload)
            except ValueError as exc:
                # pynetdicom cannot encode it in the accepted transfer syntax.
                refused.append(f"{item.label}: cannot be encoded for sending: {exc}")
                continue
            except RuntimeError as exc:  # the peer aborted since the check above
                raise ExportError(
                    destination.name,
                    f"association with {_where(destination)} ended ({exc}) after "
                    f"{len(statuses)} of {len(items)} instances were delivered",
                ) from exc
            if "Status" not in status:
                raise ExportError(
                    destination.name,
                    f"{_where(destination)} sent no C-STORE response for {item.label} "
                    f"(association aborted or no answer within {timeout:g} s); "
                    f"{len(statuses)} of {len(items)} instances were delivered before",
                )
            code = int(status.Status)
            category = code_to_category(code)
            if code == DUPLICATE_SOP_INSTANCE:
                logger.info("%s holds %s already", _where(destination), item.sop_instance)
            elif category not in _DELIVERED:
                comment = f", {status.ErrorComment}" if "ErrorComment" in status else ""
                reason = f"{item.label}: status 0x{code:04X} ({category}{comment})"
                (refused if code == _CLASS_NOT_SUPPORTED else failures).append(reason)
                continue
            if category == "Warning":
                logger.warning(
                    "%s kept %s with warning status 0x%04X",
                    _where(destination),
                    item.sop_instance,
                    code,
                )
            statuses.append(code)
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()

    if failures or refused:
        not_taken = failures + refused
        raise ExportError(
            destination.name,
            f"{_where(destination)} did not take {len(not_taken)} of {len(items)} instances: "
            + "; ".join(not_taken)
            + ("" if failures else f"; the other {len(statuses)} were delivered{_NOT_AGAIN}"),
            final=not failures,
        )
    return statuses


_NOT_AGAIN = (
    "; the same attempt would meet it again: let the destination take these classes (then "
    "lus-pacs retry), or leave their kinds out for it (its output_kinds)"
)
"""What a refusal the same attempt would meet again says to do."""


def echo(destination: DicomDestination, *, calling_ae: str, timeout: float = 10.0) -> bool:
    """Whether ``destination`` answers a C-ECHO with success; the reason it does not is logged."""
    ae = application_entity(calling_ae, timeout)
    ae.requested_contexts = VerificationPresentationContexts
    try:
        assoc = _associate(ae, destination)
    except ExportError as exc:
        logger.warning("C-ECHO: %s", exc)
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    if "Status" not in status:
        logger.warning("C-ECHO: no response from %s", _where(destination))
        return False
    if int(status.Status) != SUCCESS:
        logger.warning("C-ECHO: %s answered 0x%04X", _where(destination), int(status.Status))
        return False
    return True


def _where(destination: DicomDestination) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _describe(source: Dataset | Path, destination: DicomDestination) -> _Item:
    """What is sent, read before the association so a bad input never opens one."""
    header: Dataset
    meta: Dataset
    if isinstance(source, Path):
        try:
            header = dcmread(source, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise ExportError(destination.name, f"cannot read {source}: {exc}") from exc
        meta = header.file_meta
        name = str(source)
    else:
        header = source
        meta = source.get("file_meta", Dataset())
        name = f"dataset {source.get('SOPInstanceUID', '(no SOP Instance UID)')}"
    missing = [kw for kw in ("SOPClassUID", "SOPInstanceUID") if kw not in header]
    if "TransferSyntaxUID" not in meta:
        missing.append("file_meta.TransferSyntaxUID")
    if missing:
        raise ExportError(
            destination.name,
            f"{name} lacks {', '.join(missing)}: set them before sending "
            "(a transfer syntax is needed to negotiate the presentation context)",
        )
    return _Item(
        source=source,
        sop_class=UID(header.SOPClassUID),
        sop_instance=UID(header.SOPInstanceUID),
        transfer_syntax=UID(meta.TransferSyntaxUID),
    )


def _contexts(items: Sequence[_Item]) -> list[tuple[UID, UID]]:
    """(SOP class, transfer syntax) pairs to propose, each as its own presentation context."""
    pairs: dict[tuple[UID, UID], None] = {}
    for item in items:
        pairs[item.sop_class, item.transfer_syntax] = None
        pairs[item.sop_class, ExplicitVRLittleEndian] = None
        pairs[item.sop_class, ImplicitVRLittleEndian] = None
    return list(pairs)


def _associate(ae: AE, destination: DicomDestination) -> Association:
    """An established association, or ExportError saying which step failed."""
    connected: list[bool] = []

    def opened(event: evt.Event) -> None:
        connected.append(True)
        # pynetdicom clears the socket's timeout once connected: a destination that stops
        # reading (its storage stalled, the connection kept open) would hold the send, and
        # the abort after it, for good, and every later result of that destination with it.
        connection = getattr(event.assoc.dul.socket, "socket", None)
        if connection is not None:
            connection.settimeout(ae.network_timeout)

    tls = destination.tls
    try:
        context = client_context(tls) if tls else None
    except ConfigError as exc:  # its files missing or unreadable (a mount lost, a rotation)
        raise ExportError(destination.name, str(exc), unavailable=True) from exc
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, opened)],
        tls_args=(context, tls.server_name or destination.host) if context and tls else None,
    )
    if assoc.is_established:
        return assoc
    where = _where(destination)
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        reason = (
            f"association rejected by {where}: {answer.reason_str} "
            f"({answer.result_str}, source: {answer.source_str}); check the destination's "
            f"AE title and that it accepts calling AE {ae.ae_title!r}"
        )
    elif not connected:
        reason = (
            f"cannot connect to {where} (connection refused, host unreachable or no answer "
            f"within {ae.connection_timeout:g} s"
            + (", or the TLS handshake failed: check its certificate and ca_bundle" if tls else "")
            + "): is the destination running?"
        )
    elif assoc.rejected_contexts and not assoc.accepted_contexts:
        # The destination does not take these classes (a PACS without SEG): no limit of
        # associations, so not one more association for them, and no advice to set one.
        offered = sorted({UID(cx.abstract_syntax or "").name for cx in assoc.rejected_contexts})
        raise ExportError(
            destination.name,
            f"{where} accepted no presentation context (offered: {', '.join(offered)})"
            + _NOT_AGAIN,
            final=True,
        )
    else:
        reason = (
            f"association with {where} aborted during negotiation "
            f"(or no answer within {ae.acse_timeout:g} s)"
        )
    raise _NotAssociatedError(destination.name, reason, rejected=assoc.is_rejected)


class _NotAssociatedError(ExportError):
    """No association could be made: nothing of this attempt was sent on it, and nothing else
    would be (the destination is unavailable). ``rejected``: the destination answered, and said
    no (a limit of associations, a wrong AE title)."""

    def __init__(self, destination: str, reason: str, *, rejected: bool) -> None:
        super().__init__(destination, reason, unavailable=True)
        self.rejected = rejected


def _payload(item: _Item, accepted: set[tuple[str, str]]) -> Dataset | Path | None:
    """What to hand to C-STORE given the accepted contexts, or None if none fits."""
    own = item.transfer_syntax
    if (item.sop_class, own) in accepted:
        return item.source
    uncompressed = {
        ts for sop, ts in accepted if sop == item.sop_class and not UID(ts).is_compressed
    }
    if not uncompressed:
        return None
    if not own.is_compressed:
        # pynetdicom re-encodes between implicit and explicit VR little endian.
        return item.source
    # Decompressed to explicit VR little endian, which pynetdicom re-encodes as above.
    dataset = dcmread(item.source) if isinstance(item.source, Path) else item.source.copy()
    # The same instance in another transfer syntax: its UID stays (pydicom would make a new one,
    # and the SR's references and the PACS's copy of an earlier attempt would miss it).
    dataset.decompress(generate_instance_uid=False)
    return dataset
