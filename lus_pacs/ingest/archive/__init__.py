"""Ultrasound studies in an archive, found and brought to a local folder for reprocessing.

Three kinds of archive, one interface (:class:`ArchiveSource`): a folder or DICOMDIR, a PACS over
DIMSE (C-FIND, then C-GET or C-MOVE) and a DICOMweb server (QIDO-RS, WADO-RS). Only image
instances the node reads (:data:`~lus_pacs.dicom_vocabulary.IMAGE_SOP_CLASSES`) are brought: the
results of an earlier run (SR, SEG, KOS) that sit in the same study stay in the archive. Every
instance arrives byte for byte as the archive stores it (no transcoding), and a study that does
not arrive completely raises :class:`~lus_pacs.errors.ArchiveError`: a reprocessing run must never
score an exam on part of its cines without saying so.

One module a kind: :mod:`.folder`, :mod:`.dimse` and :mod:`.dicomweb`; what they share is in
:mod:`.common`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lus_pacs.credentials import authorisation
from lus_pacs.errors import ArchiveError, ConfigError
from lus_pacs.ingest.archive.common import ArchiveSource, ArchiveStudy
from lus_pacs.ingest.archive.dicomweb import DicomwebSource
from lus_pacs.ingest.archive.dimse import DimseSource
from lus_pacs.ingest.archive.folder import FolderSource
from lus_pacs.settings import DicomDestination, WebDestination

__all__ = [
    "ArchiveSource",
    "ArchiveStudy",
    "DicomwebSource",
    "DimseSource",
    "FolderSource",
    "open_source",
]


def open_source(
    spec: str,
    *,
    calling_ae: str = "LUSPACS",
    retrieve: Literal["move", "get"] = "get",
    move_port: int = 0,
    move_host: str = "127.0.0.1",
    timeout: float = 30.0,
    dicom_nodes: Sequence[DicomDestination] = (),
    web_servers: Sequence[WebDestination] = (),
) -> ArchiveSource:
    """The archive ``spec`` names; nothing is contacted or scanned until it is used (but
    credentials are read).

    Parameters
    ----------
    spec:
        A folder (scanned recursively) or a DICOMDIR file; ``dimse://AET@host:port``, a PACS
        queried by C-FIND; ``http(s)://host/dicom-web``, the base URL of a DICOMweb server;
        ``dimse://NAME`` or ``dicomweb://NAME``, one of ``dicom_nodes`` or ``web_servers`` by
        name, with its DICOM TLS or its credentials and CA bundle.
    calling_ae:
        Our AE title towards a DIMSE archive, and the C-MOVE destination with ``retrieve="move"``.
    retrieve:
        How a DIMSE archive sends images: ``get`` (C-GET, on the same association) or ``move``
        (C-MOVE to a Storage SCP this source runs on ``move_host:move_port`` for each fetch).
    move_port:
        The port of that Storage SCP; 0 picks a free port now (see :attr:`DimseSource.move_port`).
        The archive must know ``calling_ae`` at this host and port.
    move_host:
        The address that Storage SCP listens on: loopback by default; an address the archive
        can reach (or ``0.0.0.0``) for a PACS on another machine.
    timeout:
        Seconds allowed for connecting and for each DIMSE or HTTP response.
    dicom_nodes, web_servers:
        The DICOM nodes and DICOMweb servers of the settings (``destinations``,
        ``web_destinations``): a PACS is often where results go and where archives come from.

    Raises
    ------
    ArchiveError
        ``spec`` is none of these forms, names no configured node, a credential cannot be read,
        or the folder or DICOMDIR does not exist.
    """
    if retrieve not in ("move", "get"):
        raise ArchiveError(spec, f"retrieve must be 'get' or 'move', not {retrieve!r}")
    named = re.fullmatch(r"(dimse|dicomweb)://([^@:/]+)/?", spec)
    if named is not None:
        return _configured(
            named[1], named[2], dicom_nodes, web_servers,
            calling_ae=calling_ae, retrieve=retrieve, move_port=move_port,
            move_host=move_host, timeout=timeout,
        )  # fmt: skip
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
            move_host=move_host,
            timeout=timeout,
        )
    if spec.startswith(("http://", "https://")):
        if "@" in spec:
            # urllib took them for part of the host: nothing was reached, and the error printed
            # the password (any "@": a password holding "#", "?" or "/" ends the authority
            # before its "@", and urllib sees no user).
            scheme, _, rest = spec.partition("://")
            shown = f"{scheme}://{rest.rpartition('@')[2]}"
            raise ArchiveError(
                shown,
                "credentials in the URL are not used (and would be logged): name the server "
                "in [[web_destinations]] with password_file or token_file, and reprocess "
                "dicomweb://NAME",
            )
        return DicomwebSource(spec, timeout=timeout)
    if "://" in spec:
        raise ArchiveError(
            spec, "unknown scheme: use a folder, a DICOMDIR, dimse://AET@host:port or http(s)://"
        )
    return FolderSource(Path(spec))


def _configured(
    scheme: str,
    name: str,
    dicom_nodes: Sequence[DicomDestination],
    web_servers: Sequence[WebDestination],
    *,
    calling_ae: str,
    retrieve: Literal["move", "get"],
    move_port: int,
    move_host: str,
    timeout: float,
) -> ArchiveSource:
    """The archive of a configured DICOM node or DICOMweb server, with its TLS or credentials."""
    spec = f"{scheme}://{name}"
    if scheme == "dimse":
        node = next((n for n in dicom_nodes if n.name == name), None)
        if node is None:
            known = [n.name for n in dicom_nodes]
            raise ArchiveError(
                spec, f"no DICOM node {name!r} in the settings' destinations {known}"
            )
        tls = node.tls
        if tls is not None and retrieve == "move" and not (tls.certificate and tls.private_key):
            raise ArchiveError(
                spec,
                f"C-MOVE over TLS needs this node's certificate and private_key in {name}'s "
                "[tls]: the archive connects to our receiver, which presents them (and, with "
                "require_peer_certificate, checks the archive's against ca_bundle)",
            )
        return DimseSource(
            node.ae_title, node.host, node.port, calling_ae=calling_ae, retrieve=retrieve,
            move_port=move_port, move_host=move_host, timeout=timeout, tls=node.tls,
        )  # fmt: skip
    server = next((w for w in web_servers if w.name == name), None)
    if server is None:
        known = [w.name for w in web_servers]
        raise ArchiveError(
            spec, f"no DICOMweb server {name!r} in the settings' web_destinations {known}"
        )
    try:
        headers = authorisation(server)
    except ConfigError as exc:
        raise ArchiveError(spec, str(exc)) from exc
    return DicomwebSource(
        server.url, timeout=server.timeout_s, headers=headers, ca_bundle=server.ca_bundle
    )
