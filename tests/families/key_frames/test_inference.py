"""The key-frame model (paper 004): overlay removal, the decision from frame probabilities, and
the shipped bundle on simulated poor cines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lus_pacs.domain import ModelInfo, PoorReason, Quality
from lus_pacs.families.key_frames.evaluate import truth_quality
from lus_pacs.families.key_frames.inference import KeyFrameModel, decide, frame_images
from lus_pacs.families.key_frames.network import OUTPUTS, FrameOutput
from lus_pacs.families.key_frames.similarity import masked_tissue
from lus_pacs.imaging.decode import read_cine
from lus_pacs.imaging.writer import CineSyntax
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.training.simulated import find_simulated
from lus_pacs.validate import validate
from tests.tools import run_cli

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "key_frames"
INFO = ModelInfo("key_frames", "test", "key frames")


def _probabilities(keep: list[float], **reasons: list[float]) -> np.ndarray:
    out = np.zeros((len(keep), len(OUTPUTS)), np.float32)
    out[:, OUTPUTS.index(FrameOutput.KEEP)] = keep
    for name, values in reasons.items():
        out[:, OUTPUTS.index(FrameOutput(name))] = values
    return out


def test_usable_cine_keeps_its_best_frame_and_has_no_reasons() -> None:
    found = decide(_probabilities([0.2, 0.7, 0.9, 0.4], rib_shadow=[0.9] * 4), INFO)
    assert found.quality is Quality.USABLE
    assert found.best_frame == 3
    assert found.reasons == ()
    assert found.frame_scores == pytest.approx((0.2, 0.7, 0.9, 0.4))


def test_poor_cine_gives_the_reasons_most_frames_show_strongest_first() -> None:
    found = decide(
        _probabilities(
            [0.1, 0.3, 0.2],
            no_contact=[0.2, 0.1, 0.3],
            rib_shadow=[0.9, 0.8, 0.3],
            no_pleura=[0.9, 0.9, 0.9],
        ),
        INFO,
    )
    assert found.quality is Quality.POOR
    assert found.best_frame == 2  # still the best of a poor lot, for review
    assert found.reasons == (PoorReason.NO_PLEURA, PoorReason.RIB_SHADOW)


def test_static_marker_inside_the_declared_region_is_masked(tmp_path: Path) -> None:
    """A marker burned into the rectangle of SequenceOfUltrasoundRegions, outside the sector,
    is removed; the moving tissue is not."""
    synthesize(tmp_path, SynthOptions(patients=1, seed=5, frames=8, syntax=CineSyntax.EXPLICIT))
    path = sorted(tmp_path.glob("*/*.dcm"))[0]
    ds = pydicom.dcmread(path)
    region = read_cine(path).region
    pixels = ds.pixel_array.copy()
    y, x = region.y0 + 4, region.x0 + 4
    pixels[:, y : y + 6, x : x + 20] = 255
    ds.PixelData = pixels.tobytes()
    marked = tmp_path / "marked.dcm"
    ds.save_as(marked)

    cine = read_cine(marked)
    assert cine.region == region  # still the declared region
    tissue = masked_tissue(cine)
    assert (tissue[:, 4:10, 4:24] == 0).all(), "the marker is still there"
    moving = np.ptp(cine.tissue(), axis=0) > 20
    assert moving.sum() > 1000
    assert (tissue[:, moving] == cine.tissue()[:, moving]).all(), "tissue was masked"
    assert (cine.tissue()[:, 4:10, 4:24] == 255).all()  # the raw frames keep it
    assert frame_images(cine).shape == (cine.n_frames, 256, 256)


@pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="no key-frame bundle")
def test_poor_cines_are_flagged_with_the_right_reason(tmp_path: Path) -> None:
    """Every zone spoiled: the probe lifted for the whole loop, or a rib over the pleura."""
    synthesize(tmp_path, SynthOptions(patients=2, seed=7, frames=12, poor_share=1.0, workers=2))
    model = KeyFrameModel.load(BUNDLE)
    checked, right = 0, 0
    for sim in find_simulated(tmp_path):
        quality, reasons = truth_quality(sim)
        if quality is not Quality.POOR or not reasons:
            continue
        checked += 1
        found = model.predict(sim.load())
        right += (
            found.quality is Quality.POOR and bool(found.reasons) and (found.reasons[0] in reasons)
        )
    assert checked >= 8
    assert right / checked >= 0.9, f"{right} of {checked} poor cines flagged with their reason"


@pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="no key-frame bundle")
def test_the_kos_carries_the_quality_chosen_frame(synth_exams: Path, tmp_path: Path) -> None:
    """`lus-pacs process` with the key-frame, B-line and severity models: the KOS of a usable
    cine is titled Best In Set, its frame numbers are frames of the source and include the
    chosen frame, and the objects pass dciodvfy and dcentvfy."""
    cine = sorted(synth_exams.glob("*/*.dcm"))[0]
    config = tmp_path / "lus-pacs.toml"
    config.write_text(
        'models = ["key_frames", "b_lines", "severity"]\noutput_kinds = ["sr", "kos", "pr"]\n'
    )
    out = tmp_path / "out"
    run_cli("process", str(cine), "--out", str(out), "--config", str(config))
    (record,) = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    quality = record["quality"]
    assert quality["flag"] in {q.value for q in Quality}
    n_frames = int(pydicom.dcmread(cine, stop_before_pixels=True).NumberOfFrames)
    assert len(quality["frame_scores"]) == n_frames
    assert record["key_frames"][0] == {"frame": quality["best_frame"], "reason": "best"}

    (kos_path,) = out.glob("kos-*.dcm")
    kos = pydicom.dcmread(kos_path)
    title = kos.ConceptNameCodeSequence[0]
    expected = "113013" if quality["flag"] == "usable" else "113000"  # Best In Set, Of Interest
    assert (title.CodeValue, title.CodingSchemeDesignator) == (expected, "DCM")
    in_content = [
        int(item.ReferencedSOPSequence[0].ReferencedFrameNumber)
        for item in kos.ContentSequence
        if item.ValueType == "IMAGE"
    ]
    assert set(in_content) <= set(range(1, n_frames + 1))
    assert quality["best_frame"] in in_content
    assert set(in_content) == {k["frame"] for k in record["key_frames"]}
    report = validate([cine, out])
    assert report.ok, [str(v) for v in report.failed]


@pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="no key-frame bundle")
def test_the_chosen_frame_is_a_high_value_frame(tmp_path: Path) -> None:
    """Patients the model never saw (another seed than its data): in at least 90 % of the
    cines that have a high-value frame, the best frame is one, clearly more often than a
    frame drawn at random would be (the issue's target; the card's held-out figure is 100 %)."""
    synthesize(tmp_path, SynthOptions(patients=3, seed=8, frames=16, poor_share=0.25, workers=2))
    model = KeyFrameModel.load(BUNDLE)
    chosen, chance = [], []
    for sim in find_simulated(tmp_path):
        good = [f.high_value for f in sim.frames]
        if not any(good):
            continue
        found = model.predict(sim.load())
        chosen.append(good[found.best_frame - 1])
        chance.append(np.mean(good))
    assert len(chosen) >= 8
    assert np.mean(chosen) >= 0.9, f"{sum(chosen)} of {len(chosen)} chosen frames high-value"
    assert np.mean(chosen) > np.mean(chance), "no better than a frame drawn at random"
