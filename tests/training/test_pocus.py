"""The real POCUS clips: every one imports to DICOM or is refused with a reason, and loads for
training the way scanner data does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lus_pacs.errors import UnreadableImageError
from lus_pacs.training.pocus import PocusLabel, load_clip, read_labels, source_group
from tests.conftest import PocusCache

pytestmark = pytest.mark.pocus


def test_labels_sheet(pocus_dir: Path) -> None:
    clips = read_labels(pocus_dir / "labels.csv")
    assert len(clips) == 130
    # The dataset README counts 124 convex + 6 linear "usable" clips; the sheet marks 9 linear.
    assert Counter(c.probe.value for c in clips) == {"convex": 121, "linear": 9}
    assert sum(bool(c.b_lines) for c in clips) == 25
    assert sum(bool(c.consolidations) for c in clips) == 39
    assert {c.label for c in clips} == set(PocusLabel)
    assert len({c.group for c in clips}) >= 10


def test_every_clip_imports_or_is_refused_with_a_reason(pocus_cache: PocusCache) -> None:
    report = pocus_cache.report
    assert len(report.imported) + len(report.refused) == 130
    assert all(refusal.reason for refusal in report.refused)
    assert len(report.imported) >= 125


def test_every_imported_clip_loads_for_training(pocus_cache: PocusCache) -> None:
    clips = {c.file: c for c in read_labels(pocus_cache.pocus_dir / "labels.csv")}
    imported = {i.source for i in pocus_cache.report.imported}
    rates = []
    for file, clip in clips.items():
        if pocus_cache.pocus_dir / file not in imported:
            continue
        try:
            cine = load_clip(clip, pocus_cache.pocus_dir, pocus_cache.cache_dir)
        except UnreadableImageError as exc:  # pragma: no cover - reported with the clip
            pytest.fail(f"{file} imported but does not load: {exc}")
        assert cine.n_frames >= 1, file
        assert cine.timing.fps is not None, file
        rates.append(cine.timing.fps / clip.fps)
        tissue = cine.tissue()
        assert tissue.size >= 0.1 * cine.frames[0].size, file
    # The sheet's rate and the file's agree for nearly every clip (a few sheets are off).
    assert sum(0.8 < r < 1.25 for r in rates) >= 0.9 * len(rates)


def test_groups_are_publishers_not_upstream_folders() -> None:
    assert source_group("videos/Cov-Atlas+(44).gif") == "pocusatlas"
    assert source_group("videos/Pneu_Avi_1.avi".lower()) == "northumbria"
    assert source_group("videos/Cov-grep-7543.mp4") == "grepmed"
    assert source_group("videos/convex/pneu-gred-6.gif") == "grepmed"  # GrepMed misspelt
    assert source_group("videos/convex/Cov-grepmed2.mp4") == "grepmed"
    assert source_group("videos/convex/Reg-Youtube.mp4") == "youtube"
    assert source_group("videos/linear/Reg-nephropocus.mp4") == "everydayultrasound"
    assert source_group("videos/convex/Reg-nephropocus.mp4") == "nephropocus"
    assert source_group("videos/linear/Reg-NormalLung.mp4") == "criticalcarenorthampton"
    assert source_group("videos/convex/Pneu_AIR BRONC2.mov") == "bja-education"
