"""Real command-line tools the tests drive: the project's own CLI and dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lus-pacs`` command (the console script beside this Python)."""
    exe = Path(sys.executable).with_name("lus-pacs")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (it exits 0 even when there are some)."""
    tool = shutil.which("dciodvfy") or str(Path(sys.executable).with_name("dciodvfy"))
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
