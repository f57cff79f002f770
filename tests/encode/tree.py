"""Walking an SR content tree as written to disk, without highdicom's help."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset
from pydicom.sr.coding import Code


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item under ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from items(item)


def named(node: Dataset, code: Code) -> list[Dataset]:
    """The content items under ``node`` whose concept name is ``code``."""
    # pydicom's Code.__eq__ raises on None, so unnamed items are skipped first.
    return [item for item in items(node) if (name := concept(item)) is not None and name == code]


def concept(item: Dataset) -> Code | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    return _code(names[0])


def code_value(item: Dataset) -> Code:
    return _code(item.ConceptCodeSequence[0])


def frames(item: Dataset) -> list[int]:
    """The frame numbers an IMAGE item references (empty: the whole instance)."""
    ref = item.ReferencedSOPSequence[0]
    value = ref.get("ReferencedFrameNumber")
    if value is None:
        return []
    return [int(v) for v in value] if ref["ReferencedFrameNumber"].VM > 1 else [int(value)]


def _code(ds: Dataset) -> Code:
    return Code(ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning)
