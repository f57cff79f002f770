"""Fixtures shared by every test folder: simulated exams made once per session with the CLI."""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lus_pacs.ingest.video import ImportReport
from tests.tools import run_cli


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
