"""Severity training, evaluation and inference end to end on a tiny simulated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lus_pacs.domain import NotAssessableReason, Quality
from lus_pacs.errors import AnnotationError
from lus_pacs.families.severity.evaluate import evaluate_severity, markdown_tables
from lus_pacs.families.severity.inference import SeverityModel
from lus_pacs.families.severity.network import FRAME_SCORERS, SeverityNet
from lus_pacs.families.severity.train import (
    Frames,
    near_transition,
    train_aggregator,
    train_severity,
)
from lus_pacs.records import (
    AssessmentRecord,
    BLinesRecord,
    CineRecord,
    QualityRecord,
    SeverityRecord,
    SourceRecord,
    StudySummary,
)
from lus_pacs.training.annotated import read_frame_score_cines
from lus_pacs.training.annotations import FrameScore, write_frame_scores
from lus_pacs.training.simulated import find_simulated
from tests.tools import run_cli


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two patients to train on and one more (with score 2-3 frames, so that the crop montage
    is drawn) for the aggregator and evaluation."""
    args = ["--frames", "12", "--fps", "10", "--workers", "2"]
    train = tmp_path_factory.mktemp("sev-train")
    run_cli("synth", "--out", str(train), "--patients", "2", "--seed", "11", *args)
    more = tmp_path_factory.mktemp("sev-more")
    run_cli("synth", "--out", str(more), "--patients", "1", "--seed", "13", *args)
    return train, more


@pytest.mark.parametrize("variant", ["reg_stn_sord", "cnn_ce"])
def test_train_write_load_predict_evaluate(
    exams: tuple[Path, Path], tmp_path: Path, variant: str
) -> None:
    train, more = exams
    result = train_severity(
        train, tmp_path, epochs=1, seed=0, variant=variant, every=4, n_folds=2,
        aggregator_data=more, progress=False,
    )  # fmt: skip
    assert 0.0 <= result.frame["setting1_f1"] <= 1.0
    assert set(result.aggregators.mean) == {"uninorm", "max_argmax", "argmax_mean"}
    assert result.counts["patients_aggregator"] == 2  # fold 0 of train + the extra patient

    model = SeverityModel.load(tmp_path)
    assert isinstance(model.network.scorer, FRAME_SCORERS[variant])
    sim = find_simulated(more)[0]
    found = model.predict(sim.load())
    assert len(found.frame_scores) == sim.n_frames
    assert sum(found.probabilities) == pytest.approx(1.0, abs=1e-3)
    assert found.frame_scores[found.top_frame - 1] == max(found.frame_scores)
    if variant == "reg_stn_sord":
        assert found.box is not None
        x0, y0, x1, y1 = found.box
        r = sim.load().region
        assert r.x0 <= x0 < x1 <= r.x1
        assert r.y0 <= y0 < y1 <= r.y1
    else:
        assert found.box is None

    plots = tmp_path / "plots"
    metrics = evaluate_severity(tmp_path, more, plots=plots, progress=False)
    assert metrics["frame_setting1_n"] > 0
    assert len(metrics["neutral_elements"]) == 4
    table = markdown_tables({variant: metrics})
    assert "| uninorm |" in table
    severe = any(
        f.severity is not None and f.severity >= 2 for c in find_simulated(more) for f in c.frames
    )
    if variant == "reg_stn_sord" and severe:  # a montage of score 2-3 frames' crops
        with Image.open(plots / "stn_crops.png") as image:
            assert image.width == 4 * 260
    else:
        assert not (plots / "stn_crops.png").exists()


def test_setting_2_drops_frames_around_score_changes() -> None:
    scores = [0, 0, 0, 0, 2, 2, 2, 2, 2, 2]
    frames = Frames(
        x=torch.zeros(0),
        score=torch.tensor(scores),
        cine=np.zeros(10, dtype=np.intp),
        frame=np.arange(1, 11, dtype=np.intp),
    )
    near = near_transition(frames, margin=2)
    # The score changes at frame 5: frames 3, 4 before it and 5, 6 from it are dropped.
    assert np.flatnonzero(near).tolist() == [2, 3, 4, 5]


def test_the_uninorm_learns_from_clip_scores() -> None:
    rng = np.random.default_rng(0)
    clips, scores = [], []
    for score in (0, 1, 2, 3) * 4:
        p = rng.dirichlet(np.ones(4), size=8) * 0.3
        p[:, score] += 0.7  # frames lean towards the clip's score
        clips.append(p / p.sum(axis=1, keepdims=True))
        scores.append(score)
    aggregator, losses = train_aggregator(clips, scores)
    assert min(losses) < losses[0]
    assert not torch.allclose(aggregator.neutral_elements, torch.full((4,), 0.5))


def _record(zone: str, uid: str, **parts: object) -> CineRecord:
    source = SourceRecord(uid, "1.2.9", "1.2.3", "P", zone, 10, None)
    return CineRecord(source, parts, (), (), {}, {})


def test_study_summary_sums_the_zone_scores() -> None:
    def record(zone: str, score: int | None, b_lines: bool = False) -> CineRecord:
        parts: dict[str, object] = {"b_lines": BLinesRecord(b_lines, 0.5, (), None)}
        if score is not None:
            parts["severity"] = SeverityRecord(score, (0.25, 0.25, 0.25, 0.25), (score,), 1, None)
        return _record(zone, f"1.2.3.{zone}.{score}", **parts)

    records = [record("R1", 1), record("R1", 2, True), record("L2", 3), record("L3", None)]
    summary = StudySummary.of("1.2.3", records)
    assert summary.lus_score is not None
    assert summary.lus_score.per_zone == {"L2": 3, "R1": 2}
    assert summary.lus_score.total == 5
    assert summary.lus_score.zones_scored == 2
    assert summary.lus_score.zones_scanned == 3  # L3 was scanned, not scored
    assert summary.zones == ("L2", "L3", "R1")
    assert summary.b_line_zones == ("R1",)
    assert summary.zone_cines["R1"] == ("1.2.3.R1.1", "1.2.3.R1.2")
    assert StudySummary.of("1.2.3", [record("R1", None)]).lus_score is None
    assert summary.poor_zones is None  # no key-frame model ran
    assert "poor_zones" not in json.loads(summary.dumps())
    assert StudySummary.loads(summary.dumps()) == summary
    # Cines of no known zone are listed, and scored in none: they may repeat a scored zone
    # (before, "?" took its cines' highest score into the total and 3 into the maximum).
    unzoned = StudySummary.of("1.2.3", [*records, record("", 3)])
    assert unzoned.zones == ("?", "L2", "L3", "R1")
    assert unzoned.lus_score == summary.lus_score


def test_study_summary_lists_the_zones_without_a_usable_cine() -> None:
    def record(zone: str, flag: Quality | None) -> CineRecord:
        uid = f"1.2.{zone}.{flag}"
        if flag is None:
            return _record(zone, uid)
        return _record(zone, uid, quality=QualityRecord(flag, (), 1, 0.5, (0.5,)))

    records = [
        record("R1", Quality.POOR),
        record("R1", Quality.USABLE),  # one good cine is enough
        record("R2", Quality.POOR),
        record("R2", Quality.POOR),
        record("L1", None),  # not assessed: not to scan again
        record("L2", Quality.POOR),
        record("L2", None),
    ]
    summary = StudySummary.of("1.2", records)
    assert summary.poor_zones == ("L2", "R2")
    assert summary.quality_zones == ("L2", "R1", "R2")  # L1 was not assessed


def test_study_summary_leaves_zones_not_assessable_out_of_the_score() -> None:
    readable = AssessmentRecord(True, (), 0.9)
    echo = AssessmentRecord(False, (NotAssessableReason.NOT_LUNG,), 0.1)
    severity = SeverityRecord(2, (0.25, 0.25, 0.25, 0.25), (2,), 1, None)
    records = [
        _record("R1", "1.2.R1", assessment=readable, severity=severity),
        _record("R2", "1.2.R2.a", assessment=echo),  # no lung model ran on it
        _record("L1", "1.2.L1.a", assessment=echo),
        _record("L1", "1.2.L1.b", assessment=readable, severity=severity),
    ]
    summary = StudySummary.of("1.2", records)
    assert summary.not_assessable == {
        "1.2.R2.a": (NotAssessableReason.NOT_LUNG,),
        "1.2.L1.a": (NotAssessableReason.NOT_LUNG,),
    }
    assert summary.not_assessable_zones == ("R2",)  # L1 has a readable cine
    assert summary.lus_score is not None
    assert summary.lus_score.per_zone == {"L1": 2, "R1": 2}
    assert summary.lus_score.total == 4
    assert summary.lus_score.zones_scanned == 3
    assert StudySummary.loads(summary.dumps()) == summary
    # Without an assessment the keys stay out.
    assert StudySummary.of("1.2", [_record("R1", "u")]).not_assessable is None


def test_a_severity_net_round_trips_its_state() -> None:
    net = SeverityNet("stn_sord")
    twin = SeverityNet("stn_sord")
    twin.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 200, 260) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x).logits, twin.eval()(x).logits)


def test_train_and_evaluate_severity_are_commands(exams: tuple[Path, Path], tmp_path: Path) -> None:
    train, more = exams
    args = ["--epochs", "1", "--seed", "0", "--every", "6", "--folds", "2", "--variant", "cnn_sord"]
    run_cli(
        "train", "severity", "--data", str(train), "--out", str(tmp_path),
        "--aggregator-data", str(more), *args,
    )  # fmt: skip
    assert (tmp_path / "models" / "model.pt").is_file()
    table = run_cli("evaluate", "severity", "--bundle", str(tmp_path), "--simulated", str(more))
    lines = table.stdout.splitlines()
    assert any(
        line.startswith("| Frame scorer | F1 (Setting 1) | F1 (Setting 2)") for line in lines
    )
    for aggregator in ("uninorm", "max_argmax", "argmax_mean"):
        assert any(f"| {tmp_path.name} | {aggregator} |" in line for line in lines)


def test_keeping_a_frame_scorer_trains_only_the_aggregator(
    exams: tuple[Path, Path], tmp_path: Path
) -> None:
    train, more = exams
    common: dict = {"epochs": 1, "seed": 0, "every": 6, "n_folds": 2, "aggregator_data": more}
    first = train_severity(train, tmp_path / "a", variant="stn_sord", progress=False, **common)
    again = train_severity(
        train, tmp_path / "b", frame_scorer=tmp_path / "a", progress=False, **common
    )
    assert again.frame == first.frame  # the same frame scorer on the same frames
    a = SeverityModel.load(tmp_path / "a").network
    b = SeverityModel.load(tmp_path / "b").network
    assert b.variant == "stn_sord"
    for key, value in a.scorer.state_dict().items():
        assert torch.equal(value, b.scorer.state_dict()[key])


def test_a_frame_score_csv_trains_like_the_truth_it_was_written_from(
    exams: tuple[Path, Path], tmp_path: Path
) -> None:
    train, more = exams
    sims = find_simulated(train)
    table = tmp_path / "scores.csv"
    write_frame_scores(
        table,
        [
            FrameScore(str(s.dicom.relative_to(train)), f.frame, f.severity)
            for s in sims
            for f in s.frames
            if f.severity is not None
        ],
    )
    cines = read_frame_score_cines(table, root=train)
    assert [c.dicom for c in cines] == [s.dicom for s in sims]
    for cine, sim in zip(cines, sims, strict=True):
        assert [f.severity for f in cine.frames] == [f.severity for f in sim.frames]
        assert (cine.severity, cine.patient_id) == (sim.severity, sim.patient_id)
    common: dict = {"epochs": 1, "seed": 0, "every": 6, "n_folds": 2, "aggregator_data": more}
    from_csv = train_severity(
        None, None, frame_scores=[table], frame_scores_root=train, progress=False, **common
    )
    from_truth = train_severity(train, None, progress=False, **common)
    assert from_csv.frame == from_truth.frame


def test_a_frame_score_csv_naming_a_missing_cine_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "scores.csv"
    write_frame_scores(table, [FrameScore("gone/R1.dcm", 1, 2)])
    with pytest.raises(AnnotationError, match=r"gone/R1\.dcm"):
        read_frame_score_cines(table)


def test_a_zone_is_scored_from_its_usable_cines_and_no_zone_counts_as_one() -> None:
    """A poor cine (rib shadow) scoring 3 beside a usable one scoring 1 set the zone's 3; two
    cines of no zone with B-lines beside R1 made the summary SR read "zones with B-lines: 2"
    of 2 scanned."""
    from pydicom import Dataset

    from lus_pacs.encode import codes
    from lus_pacs.encode.summary import encode_study_summary
    from tests.encode import tree

    def record(zone: str, uid: str, score: int, flag: Quality, b_lines: bool) -> CineRecord:
        return _record(
            zone,
            uid,
            severity=SeverityRecord(score, (0.25, 0.25, 0.25, 0.25), (score,), 1, None),
            quality=QualityRecord(flag, (), 1, 0.5, (0.5,)),
            b_lines=BLinesRecord(b_lines, 0.5, (), None),
        )

    records = [
        record("R1", "1.2.3.1", 1, Quality.USABLE, True),
        record("R1", "1.2.3.2", 3, Quality.POOR, True),
        record("L1", "1.2.3.3", 2, Quality.POOR, False),  # only poor ones: scored from them
        record("", "1.2.3.4", 3, Quality.USABLE, True),
        record("", "1.2.3.5", 3, Quality.POOR, True),
    ]
    summary = StudySummary.of("1.2.3", records)
    assert summary.lus_score is not None
    assert summary.lus_score.per_zone == {"L1": 2, "R1": 1}

    def header(uid: str) -> Dataset:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.9", "US"
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "P", "X^Y", "20260101", "1000"
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = 10
        return ds

    sr = encode_study_summary(summary, [header(r.source.sop_instance_uid) for r in records])
    counts = {
        name.meaning: float(item.MeasuredValueSequence[0].NumericValue)
        for name in (codes.ZONES_SCANNED, codes.ZONES_WITH_B_LINES, codes.ZONES_WITHOUT_USABLE_CINE)
        for item in tree.named(sr, name)
    }
    assert counts == {
        codes.ZONES_SCANNED.meaning: 2,
        codes.ZONES_WITH_B_LINES.meaning: 1,  # R1; the cines of no zone may be R1's
        codes.ZONES_WITHOUT_USABLE_CINE.meaning: 1,  # L1; "?" is no zone to scan again
    }
