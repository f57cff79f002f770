"""The suite's own watchdog (tests/conftest.py): a test that hangs out of pytest-timeout's reach
ends its test process, the run goes on to its summary and names it with its stacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGING = """
import time

import pytest


@pytest.fixture
def hangs_in_teardown():
    yield
    time.sleep(120)


@pytest.mark.timeout(0)
def test_hangs():
    time.sleep(120)


@pytest.mark.timeout(0)
def test_fails_then_hangs_in_teardown(hangs_in_teardown):
    assert False


def test_after():
    pass
"""


def test_a_hung_test_ends_its_worker_and_the_summary_names_it(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    env = {**os.environ, "LUS_PACS_TEST_HANG_S": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-n",
            "1",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_hanging.py"),
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    # each hung test failed (the teardown one twice: its assert, its crash); the last one ran
    assert "3 failed, 1 passed" in out, out
    summary = out.split("hung tests", 1)[1]
    assert "test_hanging.py::test_hangs still running after 3 s" in summary
    assert 'test_hanging.py", line 15 in test_hangs' in summary  # its time.sleep
    # the teardown after a failure is guarded too (pytest's faulthandler plugin cancelled it)
    assert "test_fails_then_hangs_in_teardown still running" in summary
    assert "in hangs_in_teardown" in summary
