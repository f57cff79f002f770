"""The shipped consolidation bundle in the node's stages: a simulated cine with a known
consolidation comes back with an SR box on a frame where the consolidation is, overlapping it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lus_pacs.encode.readback import read_cine_sr
from lus_pacs.families.consolidation.inference import iou
from lus_pacs.validate import validate
from tests.tools import run_cli

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "consolidation"

pytestmark = pytest.mark.skipif(
    not (BUNDLE / "models" / "model.pt").is_file(), reason="no consolidation bundle"
)


def _clearest_consolidation(exams: Path) -> dict:
    """The cine whose consolidation is largest (by its biggest true box): chosen from the truth
    alone, before the model runs."""

    def size(truth: dict) -> int:
        return max(
            (
                (b[2] - b[0]) * (b[3] - b[1])
                for f in truth["frames"]
                for b in f["consolidation_boxes"]
            ),
            default=0,
        )

    truths = [json.loads(p.read_text()) for p in sorted(exams.glob("*/*.truth.json"))]
    found = [t for t in truths if t["clip"]["consolidation"]]
    assert found, "the acceptance exams hold no consolidation"
    return max(found, key=size)


def _process(synth_exams: Path, tmp_path: Path) -> tuple[dict, dict, Path, Path]:
    """The clearest simulated consolidation through ``lus-pacs process`` (SR and PR)."""
    truth = _clearest_consolidation(synth_exams)
    cine = synth_exams / truth["patient_id"] / truth["file"]
    config = tmp_path / "lus-pacs.toml"
    config.write_text('models = ["consolidation"]\noutput_kinds = ["sr", "pr"]\n')
    out = tmp_path / "out"
    run_cli("process", str(cine), "--out", str(out), "--config", str(config))
    (record,) = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    return truth, record, cine, out


def test_a_known_consolidation_comes_back_as_sr_boxes_on_its_frames(
    synth_exams: Path, tmp_path: Path
) -> None:
    truth, record, cine, out = _process(synth_exams, tmp_path)
    assert record["consolidation"]["present"], record["consolidation"]
    (sr,) = out.glob("sr-*.dcm")
    back = read_cine_sr(sr)["consolidation"]
    assert back["present"]
    assert back["boxes"] == record["consolidation"]["boxes"]
    assert back["boxes"], "no saliency box"
    with_consolidation = {f["frame"] for f in truth["frames"] if f["consolidation_boxes"]}
    assert {b["frame"] for b in back["boxes"]} <= with_consolidation
    report = validate([cine, out])
    assert report.ok, [str(v) for v in report.failed]


def test_an_sr_box_overlaps_the_true_consolidation(synth_exams: Path, tmp_path: Path) -> None:
    truth, record, _, _ = _process(synth_exams, tmp_path)
    true_boxes = {f["frame"]: f["consolidation_boxes"] for f in truth["frames"]}
    hits = [
        b
        for b in record["consolidation"]["boxes"]
        if any(iou(tuple(b["box"]), tuple(t)) > 0 for t in true_boxes.get(b["frame"], []))
    ]
    assert hits, record["consolidation"]["boxes"]


def test_the_clip_is_made_of_intact_frames(synth_exams: Path) -> None:
    """The consolidation network read every frame of its clip, damaged ones too (grey where
    their data ended): at the gate's limit of a quarter damaged, p moved 0.01 -> 0.14."""
    from dataclasses import replace

    from lus_pacs.families.consolidation.clips import cine_indices, frame_indices
    from lus_pacs.imaging.decode import read_cine

    cine = read_cine(next(synth_exams.glob("*/R1.dcm")))
    assert (cine_indices(cine) == frame_indices(cine.n_frames)).all()  # no damage: as before
    damaged = replace(cine, damaged={f: "cut short" for f in range(1, cine.n_frames + 1, 4)})
    picked = cine_indices(damaged)
    assert len(picked) == len(frame_indices(cine.n_frames))
    assert not set((picked + 1).tolist()) & set(damaged.damaged)


def test_a_short_cine_gets_its_boxes_on_distinct_frames(synth_exams: Path) -> None:
    """A cine of fewer frames than the clip (16) repeats them in it: the most salient clip
    frames were copies of one frame, whose boxes came two or three times (the same box
    twice, at times), in place of the next frame's."""
    from dataclasses import replace

    from lus_pacs.families.consolidation.inference import ConsolidationModel
    from lus_pacs.imaging.decode import read_cine

    model = replace(ConsolidationModel.load(BUNDLE), threshold=0.0)  # boxes whatever p is
    for path in sorted(synth_exams.glob("*/*.dcm"))[:4]:
        cine = read_cine(path)
        found = model.predict(replace(cine, frames=cine.frames[:2]))
        frames = [b.frame for b in found.boxes]
        assert len({(b.frame, b.box) for b in found.boxes}) == len(found.boxes), path
        assert set(frames) == {1, 2}, (path.name, frames)
