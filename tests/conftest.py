"""Fixtures shared by every test folder: simulated exams made once per session with the CLI."""

from __future__ import annotations

import faulthandler
import fcntl
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from lus_pacs.ingest.video import ImportReport
from tests.tools import run_cli

HANG_S = float(os.environ.get("LUS_PACS_TEST_HANG_S", "900"))
"""A test still running this long after it started (its fixtures included) is stopped with its
process, every thread's stack written out. pytest-timeout (pyproject: 600 s) fails a test that
hangs in Python; this ends one it cannot reach (a thread stuck in C with the interpreter's lock,
a teardown that hangs after the timeout), where CI's limit ended the run with no word of where.
pytest-xdist replaces the test process and the run goes on. ($LUS_PACS_TEST_HANG_S: another
limit, for the test of this.)"""

_HANGS = Path(__file__).resolve().parents[1] / "build" / "test-hangs"
_hang_file: IO[str] | None = None
_hang_path: Path | None = None
"""A pytest-xdist worker's file for a hung test's stacks (None in a run of one process)."""


def pytest_configure(config: pytest.Config) -> None:
    """A test process of pytest-xdist writes a hung test's stacks to a file of its own, which
    the run's summary prints (its standard error comes out anywhere in the log); a run in one
    process writes them to its standard error (a copy: capture is suspended here)."""
    global _hang_file, _hang_path  # noqa: PLW0603 (one per test process)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _HANGS.mkdir(parents=True, exist_ok=True)
        _hang_path = _HANGS / f"{os.getpid()}.txt"
        _hang_file = _hang_path.open("w")
    else:
        _hang_file = os.fdopen(os.dup(2), "w")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _hang_file is not None:
        _hang_file.close()
    if _hang_path is not None:
        _hang_path.unlink(missing_ok=True)  # the worker ended: no hang


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    if _hang_file is None:
        return (yield)
    if _hang_path is not None:  # the worker's file names the test its stacks belong to
        _hang_file.seek(0)
        _hang_file.truncate()
        _hang_file.write(f"{item.nodeid} still running after {HANG_S:g} s; its process ended:\n")
        _hang_file.flush()
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=_hang_file)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    """Armed again after a failure: pytest's faulthandler plugin cancels the process's one
    timer there (before a debugger), and the teardown that follows is what may hang."""
    if _hang_file is not None:
        faulthandler.dump_traceback_later(HANG_S, exit=True, file=_hang_file)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The stacks of tests that hung in test processes that have ended (pytest-xdist's)."""
    for path in sorted(_HANGS.glob("*.txt")) if _HANGS.is_dir() else []:
        if _alive(int(path.stem)):
            continue  # another run's
        if text := path.read_text():
            terminalreporter.section("hung tests", sep="=", red=True, bold=True)
            terminalreporter.write(text)
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def synth_exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The acceptance set: ``lus-pacs synth --patients 3 --seed 1`` (convex, 6 zones, JPEG)."""
    out = tmp_path_factory.mktemp("synth")
    run_cli("synth", "--out", str(out), "--patients", "3", "--seed", "1", "--workers", "2")
    return out


@pytest.fixture(scope="session")
def linear_exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small linear-probe set, where B-lines are vertical in the image."""
    out = tmp_path_factory.mktemp("linear")
    run_cli(
        "synth",
        "--out",
        str(out),
        "--patients",
        "4",
        "--seed",
        "7",
        "--probe",
        "linear",
        "--frames",
        "24",
        "--zones",
        "6",
        "--workers",
        "2",
    )
    return out


@pytest.fixture(scope="session")
def pocus_dir() -> Path:
    """The real POCUS clips: $LUS_PACS_POCUS_DIR, else ``<repo root>/../shared/data/pocus``."""
    env = os.environ.get("LUS_PACS_POCUS_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/data/pocus"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"POCUS clips not found at {folder} (set LUS_PACS_POCUS_DIR)")
    return folder


@dataclass(frozen=True)
class PocusCache:
    """Every POCUS clip imported (RLE, monochrome) into ``cache_dir``, and how long it took."""

    pocus_dir: Path
    cache_dir: Path
    report: ImportReport
    seconds: float


@pytest.fixture(scope="session")
def pocus_cache(pocus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PocusCache:
    from lus_pacs.training.pocus import cache_clips, read_labels

    clips = read_labels(pocus_dir / "labels.csv")
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        cache_dir = tmp_path_factory.mktemp("pocus-cache")
        start = time.perf_counter()
        report = cache_clips(clips, pocus_dir, cache_dir, progress=False, workers=2)
        return PocusCache(pocus_dir, cache_dir, report, time.perf_counter() - start)
    # One import for the run's test processes (80 s each on two cores): the first makes it in
    # the run's own temporary folder, the others wait for it and reuse its files.
    cache_dir = tmp_path_factory.getbasetemp().parent / "pocus-cache"
    cache_dir.mkdir(exist_ok=True)
    with (cache_dir.parent / "pocus-cache.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.perf_counter()
        report = cache_clips(clips, pocus_dir, cache_dir, progress=False, workers=2)
    return PocusCache(pocus_dir, cache_dir, report, time.perf_counter() - start)
