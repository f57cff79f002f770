"""DICOM identifiers the node speaks: the SOP classes read as cines and the DIMSE statuses
answered or expected. Plain constants, importable by any stage (no network library here)."""

from __future__ import annotations

import re

IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
"""The SOP classes read as cines: ultrasound, and the secondary captures of exported loops."""
MULTI_FRAME_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.3.1",
        "1.2.840.10008.5.1.4.1.1.3",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
"""Those of them whose instances hold several frames (one fragment each, when compressed)."""

SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)
"""C-FIND, C-GET and C-MOVE: more responses follow."""
REFUSED_SOP_CLASS = 0x0122
"""Refused: SOP Class not supported."""
DUPLICATE_SOP_INSTANCE = 0x0111
"""A destination that refuses an instance it holds already answers this (C-STORE status, or a
STOW-RS Failure Reason) when results are sent again, after a restart or over one more
association after a partial failure. Result UIDs derive from the source's content, the model
versions and the kind, so it holds this very object: the delivery is made."""
OUT_OF_RESOURCES = 0xA700
MISMATCHED_CLASS = 0xA900
"""Error: data set does not match SOP Class (its SOP Class UID is not the request's)."""
CANNOT_UNDERSTAND = 0xC000
CHANGED_INSTANCE = 0xC111
"""Error (cannot understand, in the range C-STORE allows): the instance's UID was received
before with other content, and the settings refuse such instances. The error comment says so."""


_UID_FORM = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid(value: str) -> bool:
    """Whether ``value`` has the form of a UID: components of digits joined by single dots, at
    most 64 characters (PS3.5 9.1). Components with a leading zero, which PS3.5 forbids but
    some scanners write, pass: they name an instance as well and harm nothing downstream.
    What fails (an empty UID, a slash, spaces, ``..``, 65 characters or more) could not name a
    folder safely nor be written into a valid result object."""
    return len(value) <= 64 and _UID_FORM.fullmatch(value) is not None
