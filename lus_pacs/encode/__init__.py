"""DICOM result objects made from :class:`lus_pacs.domain.Findings`: SR and KOS.

The only package that imports highdicom; its functions take and return pydicom datasets.
"""

from lus_pacs.encode.kos import encode_kos
from lus_pacs.encode.sr import encode_sr

__all__ = ["encode_kos", "encode_sr"]
