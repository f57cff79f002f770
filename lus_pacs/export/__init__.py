"""Sending results out of the node: DIMSE C-STORE to PACS (``dimse``)."""
