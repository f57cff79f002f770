"""The papers' annotation formats read back what the simulator wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lus_pacs.errors import AnnotationError
from lus_pacs.training.annotations import (
    BACKGROUND,
    read_frame_scores,
    read_labelme,
    read_via,
)


def test_via_gives_back_the_b_line_frames(synth_exams: Path) -> None:
    clips = {c.file: c for c in read_via(synth_exams / "annotations" / "b_lines_via.json")}
    assert len(clips) == 18
    for truth_path in synth_exams.glob("*/*.truth.json"):
        truth = json.loads(truth_path.read_text())
        clip = clips[f"{truth['patient_id']}/{truth['file']}"]
        assert list(clip.b_line_frames) == truth["clip"]["b_line_frames"]
        assert clip.n_frames == truth["n_frames"]


def test_labelme_polygons_rasterise_to_the_masks(synth_exams: Path) -> None:
    files = sorted((synth_exams / "annotations" / "labelme").glob("*/*.json"))
    assert files
    for path in files[::7]:
        frame = read_labelme(path)
        assert frame.frame is not None
        patient, zone = path.parent.name, path.stem.split("_f")[0]
        truth = np.load(synth_exams / patient / f"{zone}.masks.npz")["masks"][frame.frame - 1]
        fg_true, fg_read = truth != BACKGROUND, frame.mask != BACKGROUND
        if fg_true.sum() < 100:
            continue
        iou = (fg_true & fg_read).sum() / (fg_true | fg_read).sum()
        assert iou > 0.8, path
        agree = (truth[fg_true & fg_read] == frame.mask[fg_true & fg_read]).mean()
        assert agree > 0.9, path


def test_frame_scores_csv(synth_exams: Path) -> None:
    rows = read_frame_scores(synth_exams / "annotations" / "frame_scores.csv")
    truth = json.loads(next(synth_exams.glob("*/R1.truth.json")).read_text())
    mine = [r for r in rows if r.file == f"{truth['patient_id']}/R1.dcm"]
    expected = [f["severity"] for f in truth["frames"] if f["severity"] is not None]
    assert [r.score for r in mine] == expected


def test_bad_annotation_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    csv = tmp_path / "scores.csv"
    csv.write_text("file,frame,score\na.dcm,0,2\n")
    with pytest.raises(AnnotationError, match="1-based"):
        read_frame_scores(csv)
    labelme = tmp_path / "f.json"
    labelme.write_text(
        json.dumps(
            {
                "imageHeight": 4,
                "imageWidth": 4,
                "shapes": [
                    {"label": "cat", "points": [[0, 0], [1, 1], [0, 1]], "shape_type": "polygon"}
                ],
            }
        )
    )
    with pytest.raises(AnnotationError, match="score0"):
        read_labelme(labelme)
