"""Simulated exams load as training data, with their truth, split by patient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lus_pacs.domain import RegionSource
from lus_pacs.errors import AnnotationError
from lus_pacs.training.simulated import find_simulated
from lus_pacs.training.splits import split_by_group


def test_every_cine_loads_with_its_truth(synth_exams: Path) -> None:
    cines = find_simulated(synth_exams)
    assert len(cines) == 18
    assert len({c.patient_id for c in cines}) == 3
    for item in cines[::5]:
        cine = item.load()
        assert cine.n_frames == item.n_frames == 60
        assert cine.timing.fps == pytest.approx(item.fps, rel=1e-4)
        assert cine.source.zone == item.zone
        assert cine.region.source is RegionSource.DICOM
        truth_region = json.loads(item.truth.read_text())["region"]
        assert (cine.region.x0, cine.region.y0, cine.region.x1, cine.region.y1) == (
            truth_region["x0"],
            truth_region["y0"],
            truth_region["x1"],
            truth_region["y1"],
        )
        assert item.masks().shape == cine.frames.shape
        assert item.b_lines == bool(item.b_line_frames)


def test_folds_keep_patients_whole(synth_exams: Path) -> None:
    cines = find_simulated(synth_exams)
    folds = split_by_group(cines, key=lambda c: c.patient_id, n_folds=3)
    patients = [{c.patient_id for c in fold} for fold in folds]
    assert all(len(p) == 1 for p in patients)
    assert len(set.union(*patients)) == 3


def test_a_foreign_sidecar_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "P1"
    folder.mkdir()
    (folder / "R1.truth.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(AnnotationError, match=r"R1\.truth\.json: schema 'other/9'"):
        find_simulated(tmp_path)
