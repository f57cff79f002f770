"""The assessment: still images and non-lung views are not assessable, lung cines are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from lus_pacs.domain import NotAssessableReason
from lus_pacs.families.assessment.inference import Assessor, apex_ratio, echo_texture
from lus_pacs.imaging.decode import read_cine
from tests.conftest import PocusCache

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "assessment"


@pytest.fixture(scope="module")
def assessor() -> Assessor:
    return Assessor.load(BUNDLE)


def _pydicom(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


@pytest.mark.parametrize(
    "name", ["US1_UNCR.dcm", "OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "examples_rgb_color.dcm"]
)
def test_a_still_image_is_not_assessable(assessor: Assessor, name: str) -> None:
    found = assessor.assess(read_cine(_pydicom(name)))
    assert not found.assessable
    assert found.reasons == (NotAssessableReason.STILL_IMAGE,)


def test_an_echocardiogram_is_not_lung(assessor: Assessor) -> None:
    # pydicom's 120-frame cardiac cine: a phased-array sector that starts at a point.
    cine = read_cine(_pydicom("color3d_jpeg_baseline.dcm"))
    assert apex_ratio(cine) <= assessor.apex_width
    found = assessor.assess(cine)
    assert found.reasons == (NotAssessableReason.NOT_LUNG,)
    assert found.apex_ratio is not None
    assert found.apex_ratio <= assessor.apex_width


@pytest.mark.parametrize("probe", ["convex", "linear"])
def test_simulated_lung_cines_are_assessable(
    assessor: Assessor, probe: str, tmp_path: Path
) -> None:
    from tests.tools import run_cli

    run_cli(
        "synth", "--out", str(tmp_path), "--patients", "1", "--zones", "6", "--frames", "8",
        "--seed", "5", "--probe", probe,
    )  # fmt: skip
    paths = sorted(tmp_path.glob("*/*.dcm"))
    assert len(paths) == 6
    for path in paths:
        found = assessor.assess(read_cine(path))
        assert found.assessable, (path.name, found)
        assert found.apex_ratio is not None
        assert found.apex_ratio > assessor.apex_width


@pytest.mark.pocus
def test_real_lung_clips_are_assessable(assessor: Assessor, pocus_cache: PocusCache) -> None:
    """Real lung clips are called not assessable in at most 5 % of cases (issue 18)."""
    dicoms = sorted(pocus_cache.cache_dir.glob("*.dcm"))
    assert len(dicoms) >= 120
    verdicts = [assessor.assess(read_cine(path)).assessable for path in dicoms]
    assert np.mean(verdicts) >= 0.95, f"{len(verdicts) - sum(verdicts)} of {len(verdicts)}"


def test_a_blank_cine_is_not_assessable_and_a_dim_one_is(
    assessor: Assessor, synth_exams: Path, tmp_path: Path
) -> None:
    """A probe in the air, a frozen black or a uniform grey screen: before, the gate passed
    them (their scan area fills the view, so it is no cardiac sector) and the lung models
    read B-lines and a severity score from nothing."""
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm"))).frames
    assert lung.ndim == 3  # grey frames
    variants = {
        "black": np.zeros_like(lung),
        "grey": np.full_like(lung, 128),
        "dim": lung // 8,  # the same cine at a low gain
    }
    found = {
        name: assessor.assess(read_cine(write_cine(tmp_path / f"{name}.dcm", frames, "rle")))
        for name, frames in variants.items()
    }
    assert found["black"].reasons == (NotAssessableReason.BLANK,)
    assert found["grey"].reasons == (NotAssessableReason.BLANK,)
    assert found["dim"].assessable, found["dim"]
    assert echo_texture(read_cine(tmp_path / "dim.dcm")) > 2 * assessor.min_texture
