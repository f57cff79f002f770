"""The DICOM validators the encode tests run on what they write: the product's own checks
(``lus_pacs.validate``), one tool at a time so a test can say which one it means."""

from __future__ import annotations

from lus_pacs.validate import Verdict, dcentvfy, dciodvfy, dcmpschk, dsrdump

__all__ = ["Verdict", "dcentvfy", "dciodvfy", "dcmpschk", "dsrdump"]
