"""The real POCUS clips and their DICOM cache, built once per test session."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lus_pacs.ingest.video import ImportReport


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
    cache_dir = tmp_path_factory.mktemp("pocus-cache")
    start = time.perf_counter()
    report = cache_clips(clips, pocus_dir, cache_dir, progress=False)
    return PocusCache(pocus_dir, cache_dir, report, time.perf_counter() - start)
