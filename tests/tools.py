"""Real command-line tools the tests drive: the project's own CLI and dciodvfy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lus_pacs.validate import dciodvfy


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lus-pacs`` command (the console script beside this Python)."""
    exe = Path(sys.executable).with_name("lus-pacs")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (it exits 0 even when there are some)."""
    return dciodvfy(path).errors
