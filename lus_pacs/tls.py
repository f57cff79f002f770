"""TLS contexts of the node's DICOM associations (PS3.15 Annex B secure transport): the
listener's, and a client's for a destination or archive, from PEM files named in the settings.

Both require TLS 1.2 or later. The listener presents its certificate and, with a CA bundle,
verifies the scanners' certificates (required unless the settings say otherwise); a client
verifies the peer's certificate against its CA bundle (or the system's) and its host name, and
presents its own certificate when one is given.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from lus_pacs.errors import ConfigError
from lus_pacs.settings import TlsFiles


class HandshakeLater(ssl.SSLContext):
    """A server context whose sockets are wrapped without their handshake, which the
    connection's own thread then does (:meth:`ssl.SSLSocket.do_handshake`, under a timeout).

    pynetdicom wraps each accepted connection in its accept loop, and a blocking handshake
    there waits on the peer: one silent TCP connection held every later connection, scanners'
    included, for as long as it stayed open."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def server_context(tls: TlsFiles, *, handshake_later: bool = False) -> ssl.SSLContext:
    """The listener's context: its certificate and key, the clients' CA bundle; a
    :class:`HandshakeLater` with ``handshake_later``, whose user does each handshake.

    Raises
    ------
    ConfigError
        A file is missing or not PEM of the right kind, or client certificates are required
        without a CA bundle to verify them.
    """
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("tls: the listener needs certificate and private_key (PEM files).")
    if tls.require_peer_certificate and tls.ca_bundle is None:
        raise ConfigError(
            "tls: require_peer_certificate needs a ca_bundle that signed the scanners' "
            "certificates (or set require_peer_certificate = false)."
        )
    kind = HandshakeLater if handshake_later else ssl.SSLContext
    context = kind(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else ssl.CERT_NONE
    return context


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client's context: the peer verified against ``ca_bundle`` (the system's CAs when
    None), with its host name checked; the client's own certificate presented when given.

    Raises
    ------
    ConfigError
        A file is missing or not PEM of the right kind.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_bundle is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load(context, tls)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load(context: ssl.SSLContext, tls: TlsFiles) -> None:
    try:
        if tls.ca_bundle is not None:
            context.load_verify_locations(cafile=tls.ca_bundle)
        if tls.certificate is not None:
            context.load_cert_chain(tls.certificate, tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls: cannot load {tls.certificate}, {tls.private_key} or {tls.ca_bundle}: {exc}"
        ) from exc


def certificate_expiry(path: Path) -> float | None:
    """When the first certificate of the PEM file at ``path`` stops being valid (seconds since
    the epoch); None when it cannot be read so. Python's own decoder of certificates is the
    one its tests use (``ssl._ssl._test_decode_cert``): the image carries no other."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        return float(ssl.cert_time_to_seconds(decode(str(path))["notAfter"]))
    except (OSError, ValueError, KeyError, TypeError, ssl.SSLError):
        return None
