from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lus_pacs.errors import AnnotationError
from lus_pacs.families.b_lines.train import train_b_lines
from lus_pacs.training.annotated import read_via_cines
from lus_pacs.training.annotations import ClipBLines, write_via
from lus_pacs.training.simulated import find_simulated
from tests.tools import run_cli


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("via-exams")
    args = ["--patients", "2", "--seed", "8", "--frames", "20", "--fps", "10", "--workers", "2"]
    run_cli("synth", "--out", str(out), *args)
    return out


def test_the_simulators_via_project_reads_as_its_truth(exams: Path) -> None:
    truth = {c.dicom: c for c in find_simulated(exams)}
    annotated = read_via_cines(exams / "annotations" / "b_lines_via.json", root=exams)
    assert {c.dicom for c in annotated} == set(truth)
    assert any(c.b_line_frames for c in annotated)
    for cine in annotated:
        sim = truth[cine.dicom]
        assert cine.b_line_frames == sim.b_line_frames
        assert (cine.patient_id, cine.n_frames, cine.fps) == (sim.patient_id, sim.n_frames, sim.fps)


def test_train_on_a_via_project_alone(exams: Path, tmp_path: Path) -> None:
    # The project lists the cines in the order training reads simulated data, so that the
    # batches are the same.
    project = tmp_path / "site.json"
    clips = [
        ClipBLines(str(c.dicom.relative_to(exams)), c.fps, c.n_frames, c.b_line_frames)
        for c in find_simulated(exams)
    ]
    write_via(project, clips)
    common: dict[str, Any] = {
        "epochs": 1, "seed": 1, "arch": "c2d_att", "n_folds": 2, "progress": False
    }  # fmt: skip
    via = train_b_lines(None, tmp_path / "via", via=[project], via_root=exams, **common)
    sim = train_b_lines(exams, tmp_path / "sim", **common)
    # Same cines, same frame labels, same split: the same windows and the same metrics.
    assert via == pytest.approx(sim, nan_ok=True)
    data = json.loads((tmp_path / "via/configs/metadata.json").read_text())["training"]["data"]
    assert data["via"] == ["site.json"]
    assert data["root"] is None
    assert (data["patients_train"], data["patients_validation"]) == (1, 1)


def test_a_via_project_naming_a_missing_or_too_short_cine_is_refused(
    exams: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.json"
    write_via(missing, [ClipBLines("nowhere/R1.dcm", 10.0, 20, (3, 4))])
    with pytest.raises(AnnotationError, match=r"nowhere/R1\.dcm"):
        read_via_cines(missing, root=exams)
    first = find_simulated(exams)[0]
    outside = tmp_path / "outside.json"
    name = str(first.dicom.relative_to(exams))
    write_via(outside, [ClipBLines(name, first.fps, first.n_frames, (first.n_frames + 5,))])
    with pytest.raises(AnnotationError, match="B-line frames"):
        read_via_cines(outside, root=exams)
