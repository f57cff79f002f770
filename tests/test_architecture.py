"""The seams of docs/architecture.md hold: import-linter's contracts pass on the package as it
is, and fail on a copy with a forbidden import planted in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "lus_pacs", tmp_path / "lus_pacs", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_the_package() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("encode/common.py", "import torch", "Only the model families and the inference runtime"),
        ("families/b_lines/inference.py", "import highdicom", "Only encode/ imports highdicom"),
        ("pipeline.py", "import pynetdicom", "Only ingest/ and export/ talk to the network"),
        ("encode/kos.py", "import lus_pacs.export.dimse", "The stages do not import each other"),
    ],
)
def test_a_planted_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    root = _copy(tmp_path)
    path = root / "lus_pacs" / module
    text = path.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    path.write_text(f"{head}from __future__ import annotations\n\n{planted}\n{rest}")
    result = _lint(root)
    assert result.returncode == 1, result.stdout
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(broken)]
    assert verdicts, result.stdout
    assert " BROKEN" in verdicts[0], verdicts[0]
    assert "3 kept, 1 broken." in result.stdout
