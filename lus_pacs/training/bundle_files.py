"""Helpers shared by the bundle writers of every model family."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(doc: Any) -> Any:
    """``doc`` with every NaN replaced by None, recursively (JSON has no NaN)."""
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(v) for v in doc]
    if isinstance(doc, float) and math.isnan(doc):
        return None
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` indented, with a final newline (the bundles are read by people too)."""
    path.write_text(json.dumps(doc, indent=4) + "\n")
