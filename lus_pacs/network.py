"""The application entity of an association this node opens (export, archive retrieval).

Only :mod:`lus_pacs.ingest` and :mod:`lus_pacs.export` import this module: they are the stages
that touch the network.
"""

from __future__ import annotations

from pynetdicom import AE


def application_entity(ae_title: str, timeout: float, *, unlimited_pdu: bool = False) -> AE:
    """An application entity whose every network wait is bounded.

    Parameters
    ----------
    ae_title:
        This node's (calling) AE title.
    timeout:
        Seconds allowed for the TCP connection, association negotiation, each DIMSE response
        and network silence.
    unlimited_pdu:
        Accept PDUs of any size: for an entity that receives cines (C-GET, C-MOVE).

    Returns
    -------
    AE
        With no presentation context yet: the caller adds those it needs.
    """
    ae = AE(ae_title=ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    if unlimited_pdu:
        ae.maximum_pdu_size = 0  # cines are large
    return ae
