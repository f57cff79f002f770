"""Reading a cine's SR back: the key frames with their reasons and the key-frame model's quality
flag come out as the pipeline records them, and the objects that carry them pass validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lus_pacs.domain import KeyFrame, KeyFrameReason, PoorReason
from lus_pacs.encode import encode_kos, encode_sr
from lus_pacs.encode.pstate import encode_presentation_state
from lus_pacs.encode.readback import read_cine_sr
from lus_pacs.validate import validate
from tests.encode.conftest import (
    B_LINE_KEY_FRAME,
    BEST_FRAME,
    KEY_FRAME_MODEL,
    KEY_FRAMES,
    MODEL,
    POOR_REASONS,
    Source,
)

pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')

RECORDED_KEY_FRAMES = [
    {"frame": BEST_FRAME, "reason": "best"},
    {"frame": B_LINE_KEY_FRAME, "reason": "b_lines"},
    {"frame": B_LINE_KEY_FRAME, "reason": "severity"},
]
"""``KEY_FRAMES`` as the pipeline records them: in the reasons' order (best, B-lines, severity),
frame 5 twice."""


def _sr(cine: Source, tmp_path: Path, reasons: tuple[PoorReason, ...] | None) -> Path:
    findings = cine.findings(key_frames=KEY_FRAMES, key_frame_model=cine.key_frame_model(reasons))
    path = tmp_path / "sr.dcm"
    encode_sr(findings, cine.header).save_as(path, enforce_file_format=True)
    return path


def test_key_frames_read_back_in_order_with_their_reasons(cine: Source, tmp_path: Path) -> None:
    back = read_cine_sr(_sr(cine, tmp_path, None))

    order = list(KeyFrameReason)
    in_order = sorted(KEY_FRAMES, key=lambda k: order.index(k.reason))
    assert [k.frame for k in in_order] == [k["frame"] for k in RECORDED_KEY_FRAMES]
    assert back["key_frames"] == RECORDED_KEY_FRAMES
    assert back["b_lines"]["key_frame"] == B_LINE_KEY_FRAME
    assert back["b_lines"]["key_frames"] == [B_LINE_KEY_FRAME, BEST_FRAME]
    assert back["models"] == {MODEL.name: MODEL.version, KEY_FRAME_MODEL.name: "0.2.0"}


def test_key_frames_keep_the_pipelines_order_not_the_frames(
    right_cine: Source, tmp_path: Path
) -> None:
    chosen = (
        KeyFrame(BEST_FRAME, KeyFrameReason.BEST),
        KeyFrame(B_LINE_KEY_FRAME, KeyFrameReason.B_LINES),
    )
    path = tmp_path / "sr.dcm"
    encode_sr(right_cine.findings(key_frames=chosen), right_cine.header).save_as(
        path, enforce_file_format=True
    )

    back = read_cine_sr(path)
    assert back["key_frames"] == [
        {"frame": BEST_FRAME, "reason": "best"},
        {"frame": B_LINE_KEY_FRAME, "reason": "b_lines"},
    ]
    assert back["b_lines"]["key_frame"] == B_LINE_KEY_FRAME


def test_a_usable_cine_reads_back_usable(cine: Source, tmp_path: Path) -> None:
    back = read_cine_sr(_sr(cine, tmp_path, None))

    model = cine.key_frame_model()
    assert back["quality"] == {
        "flag": "usable",
        "reasons": [],
        "best_frame": BEST_FRAME,
        "probability": pytest.approx(model.frame_scores[BEST_FRAME - 1]),
    }


@pytest.mark.parametrize(
    "reasons", [POOR_REASONS, POOR_REASONS[::-1], (PoorReason.NO_PLEURA,), ()], ids=str
)
def test_a_poor_cine_reads_back_its_reasons_strongest_first(
    right_cine: Source, reasons: tuple[PoorReason, ...], tmp_path: Path
) -> None:
    back = read_cine_sr(_sr(right_cine, tmp_path, reasons))

    assert back["quality"]["flag"] == "poor"
    assert back["quality"]["reasons"] == [r.value for r in reasons]
    assert back["quality"]["best_frame"] == BEST_FRAME
    assert back["quality"]["probability"] == pytest.approx(0.31)


def test_without_the_key_frame_model_no_quality_reads_back(
    right_cine: Source, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    findings = right_cine.findings(key_frames=KEY_FRAMES)
    encode_sr(findings, right_cine.header).save_as(path, enforce_file_format=True)

    back = read_cine_sr(path)
    assert "quality" not in back
    assert back["key_frames"] == RECORDED_KEY_FRAMES
    assert KEY_FRAME_MODEL.name not in back["models"]


def test_no_key_frames_read_back_as_none(right_cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    encode_sr(right_cine.findings(), right_cine.header).save_as(path, enforce_file_format=True)

    back = read_cine_sr(path)
    assert "key_frames" not in back
    assert back["b_lines"]["key_frame"] is None


def test_objects_of_a_poor_cine_pass_lus_pacs_validate(cine: Source, tmp_path: Path) -> None:
    findings = cine.findings(
        key_frames=KEY_FRAMES, key_frame_model=cine.key_frame_model(POOR_REASONS)
    )
    paths = [cine.path]
    for kind, dataset in (
        ("sr", encode_sr(findings, cine.header)),
        ("kos", encode_kos(findings, cine.header)),
        ("pr", encode_presentation_state(findings, cine.header)),
    ):
        assert dataset is not None, kind
        paths.append(tmp_path / f"{kind}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)

    report = validate(paths)
    assert report.ok, "\n".join(map(str, report.failed))
    tools = [v.tool for v in report.verdicts]
    assert Counter(tools) == {"dciodvfy": 4, "dsrdump": 2, "dcmpschk": 1, "dcentvfy": 1}
