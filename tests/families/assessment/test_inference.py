"""The assessment: still images and non-lung views are not assessable, lung cines are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from lus_pacs.domain import NotAssessableReason, Region
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
    ("name", "doppler"),
    [
        ("US1_UNCR.dcm", True),
        ("OBXXXX1A.dcm", False),
        ("gdcm-US-ALOKA-16.dcm", False),
        ("examples_rgb_color.dcm", True),
    ],
)
def test_a_still_image_is_not_assessable(assessor: Assessor, name: str, doppler: bool) -> None:
    """Two are a scanner's power Doppler of a lymph node (GE, an orange flow map over about a
    tenth of the tissue): colour flow as well (since assessment 0.5.0); the palette colour
    images' few coloured pixels are not."""
    found = assessor.assess(read_cine(_pydicom(name)))
    assert not found.assessable
    expected = [NotAssessableReason.STILL_IMAGE]
    if doppler:
        expected.append(NotAssessableReason.COLOUR_FLOW)
    assert found.reasons == tuple(expected)


@pytest.mark.parametrize("name", ["color3d_jpeg_baseline.dcm", "examples_ybr_color.dcm"])
def test_an_echocardiogram_is_not_lung(assessor: Assessor, name: str) -> None:
    """pydicom's cardiac cines: phased-array sectors that start at a point. The 30-frame one
    declares regions of a 640 x 480 image over its 320 x 240 pixels: clipped, they cut the
    apex off and its B-lines were "present" with consolidation boxes."""
    cine = read_cine(_pydicom(name))
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
    noise = np.random.default_rng(3).integers(0, 7, size=lung.shape, dtype=np.uint8)
    variants = {
        "black": np.zeros_like(lung),
        "grey": np.full_like(lung, 128),
        "dim": lung // 8,  # the same cine at a low gain
        "dark": noise,  # a black screen's codec noise: B-lines "present", severity 2
    }
    found = {
        name: assessor.assess(read_cine(write_cine(tmp_path / f"{name}.dcm", frames, "rle")))
        for name, frames in variants.items()
    }
    # Neither moves: a still image as well (since 0.4.0).
    assert found["black"].reasons == (NotAssessableReason.STILL_IMAGE, NotAssessableReason.BLANK)
    assert found["grey"].reasons == (NotAssessableReason.STILL_IMAGE, NotAssessableReason.BLANK)
    assert found["dark"].reasons == (NotAssessableReason.STILL_IMAGE, NotAssessableReason.BLANK)
    assert found["dim"].assessable, found["dim"]
    assert echo_texture(read_cine(tmp_path / "dim.dcm")) > 2 * assessor.min_texture


def test_noise_at_any_level_is_not_assessable(
    assessor: Assessor, synth_exams: Path, tmp_path: Path
) -> None:
    """Random noise over the whole grey range moves, has texture and level, and its
    measurements lie within the reference's reach: it passed every check and got B-lines
    present and severity 2 (a probe in air at a high gain shows such noise). Its neighbouring
    pixels are unrelated, as speckle's never are."""
    from lus_pacs.families.assessment.inference import speckle_correlation
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm"))).frames
    rng = np.random.default_rng(5)
    variants = {
        "full": rng.integers(0, 256, size=lung.shape, dtype=np.uint8),
        "dark": rng.integers(0, 41, size=lung.shape, dtype=np.uint8),
        "rayleigh": np.clip(rng.rayleigh(40, size=lung.shape), 0, 255).astype(np.uint8),
    }
    for name, frames in variants.items():
        cine = read_cine(write_cine(tmp_path / f"{name}.dcm", frames, "rle"))
        found = assessor.assess(cine)
        assert NotAssessableReason.BLANK in found.reasons, (name, found)
        assert speckle_correlation(cine) < assessor.min_speckle
    lung_cine = read_cine(next(synth_exams.glob("*/R1.dcm")))
    assert speckle_correlation(lung_cine) > 2 * assessor.min_speckle  # a lung, by far


@pytest.mark.parametrize("shape", [(4, 4), (30, 600), (600, 30)])
def test_a_scan_area_too_small_to_read_is_not_assessable(
    assessor: Assessor, synth_exams: Path, tmp_path: Path, shape: tuple[int, int]
) -> None:
    """A 4 x 4 thumbnail got B-lines present and severity 3; a strip of 30 x 1200 the same
    and a consolidation."""
    import cv2

    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm"))).frames
    small = np.stack([cv2.resize(f, shape[::-1], interpolation=cv2.INTER_AREA) for f in lung])
    found = assessor.assess(read_cine(write_cine(tmp_path / "small.dcm", small, "rle")))
    assert NotAssessableReason.TOO_SMALL in found.reasons, found


def test_a_frozen_loop_with_a_live_frame_beside_it_is_a_still_image(
    assessor: Assessor, tmp_path: Path
) -> None:
    """A scanner's freeze stored as a loop, with a frame of the live image before it: the
    region finder saw it move, and the lung models read its 29 identical frames (B-lines
    present, consolidation, severity 3). The live loop it came from is assessable."""
    from dataclasses import replace

    from tests.tools import run_cli

    run_cli("synth", "--out", str(tmp_path), "--patients", "1", "--zones", "6", "--frames", "30",
            "--seed", "5")  # fmt: skip
    path = sorted(tmp_path.glob("*/*.dcm"))[0]
    live = read_cine(path)
    assert assessor.assess(live).assessable
    frozen_once = np.concatenate([live.frames[3:4], np.repeat(live.frames[14:15], 29, axis=0)])
    # Mostly a freeze: 20 repeats of one frame, then a third of a second of the live loop.
    mostly = np.concatenate([np.repeat(live.frames[14:15], 20, 0), live.frames[:10]])
    for frames in (frozen_once, mostly):
        cine = replace(live, frames=frames)
        assert cine.moving  # what the still check alone looked at
        found = assessor.assess(cine)
        assert NotAssessableReason.STILL_IMAGE in found.reasons, found
    # The live loop stored at twice its rate (every frame twice) moves: half its frames
    # repeat the one before, but no image is held.
    doubled = replace(live, frames=np.repeat(live.frames, 2, axis=0))
    assert assessor.assess(doubled).assessable


def test_every_threshold_of_the_bundle_is_required(tmp_path: Path) -> None:
    """A threshold left out of the bundle turned its check off without a word (the version
    still said the check was there)."""
    import json
    import shutil

    from lus_pacs.errors import ModelError

    required = (
        "min_texture",
        "min_level",
        "min_side",
        "max_damaged_share",
        "use_quality",
        "max_colour_share",
        "min_speckle",
        "max_frozen_share",
    )
    for key in (*required, "max_deviation", "measurement_reference"):
        bundle = tmp_path / key / "assessment"
        shutil.copytree(BUNDLE, bundle)
        config = bundle / "configs" / "inference.json"
        values = json.loads(config.read_text())
        del values[key]
        config.write_text(json.dumps(values))
        with pytest.raises(ModelError, match=key):
            Assessor.load(bundle)


def test_a_cine_whose_measurements_no_lung_clip_has_is_out_of_range(
    assessor: Assessor, synth_exams: Path, tmp_path: Path
) -> None:
    """A sector drawn in a strip at the bottom of a declared full-frame region: its far-field
    brightness lies over a thousand standard deviations from the real clips' (which stay
    within 7.3), and the heads gave a certain "no B-lines" (p 0.00) and score 0 (p 1.00)."""
    import cv2

    from lus_pacs.imaging.writer import UltrasoundRegion
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm")))
    assert assessor.deviation(lung) < assessor.max_deviation
    strip = np.zeros((lung.n_frames, 480, 640), np.uint8)
    for i, frame in enumerate(lung.tissue()):
        strip[i, 380:] = cv2.resize(frame, (640, 100), interpolation=cv2.INTER_AREA)
    whole = UltrasoundRegion(0, 0, 639, 479, 0.01, 0.01)
    cine = read_cine(write_cine(tmp_path / "strip.dcm", strip, "rle", regions=[whole]))
    found = assessor.assess(cine)
    assert found.reasons == (NotAssessableReason.OUT_OF_RANGE,), found
    assert assessor.deviation(cine) > 10 * assessor.max_deviation


def _colour_box(grey: np.ndarray, region: Region, seed: int) -> np.ndarray:
    """``grey`` as RGB with colour flow drawn in a box over the middle quarter of
    ``region``: red and blue blobs that change from frame to frame, as a scanner draws it."""
    import cv2

    rgb = np.repeat(grey[..., None], 3, axis=-1)
    y0, y1 = region.y0 + region.height // 4, region.y0 + 3 * region.height // 4
    x0, x1 = region.x0 + region.width // 4, region.x0 + 3 * region.width // 4
    rng = np.random.default_rng(seed)
    for frame in rgb:
        coarse = rng.normal(size=(max(2, (y1 - y0) // 8), max(2, (x1 - x0) // 8)))
        flow = cv2.resize(coarse, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        box = frame[y0:y1, x0:x1]
        box[flow > 0.8] = (200, 30, 30)  # towards the probe
        box[flow < -0.8] = (40, 70, 220)  # away from it
    return rgb


@pytest.mark.parametrize("syntax", ["jpeg", "rle", "explicit"])
def test_colour_flow_over_the_lung_is_not_assessable_and_a_tinted_grey_is(
    assessor: Assessor, synth_exams: Path, tmp_path: Path, syntax: str
) -> None:
    """A colour flow box over the lung: read as grey, its reds and blues were echoes (a
    review on 2026-12-07: B-lines absent -> present, severity 1 -> 2). The same cine in grey
    written as RGB, and tinted sepia (some scanners' grey map), are read as before."""
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm")))
    grey = lung.frames
    variants = {
        "doppler": _colour_box(grey, lung.region, seed=4),
        "grey": np.repeat(grey[..., None], 3, axis=-1),
        "sepia": np.rint(grey[..., None] * np.array([1.0, 0.85, 0.65])).astype(np.uint8),
    }
    cines = {
        name: read_cine(write_cine(tmp_path / f"{name}.dcm", frames, syntax))
        for name, frames in variants.items()
    }
    found = {name: assessor.assess(cine) for name, cine in cines.items()}
    assert found["doppler"].reasons == (NotAssessableReason.COLOUR_FLOW,), found["doppler"]
    assert cines["doppler"].colour_share is not None
    assert 0.05 < cines["doppler"].colour_share < 0.2  # a quarter of the area, in part coloured
    for name in ("grey", "sepia"):
        assert found[name].assessable, found[name]
        share = cines[name].colour_share
        assert share is not None, name
        assert share < assessor.max_colour_share / 20, (name, share)
    # A grey image (MONOCHROME2) holds no colour to look at.
    assert read_cine(write_cine(tmp_path / "mono.dcm", grey, "rle")).colour_share is None


def test_colour_share_is_required_within_its_range(tmp_path: Path) -> None:
    import json
    import shutil

    from lus_pacs.errors import ModelError

    for value in (1.0, -0.1, "0.02"):
        bundle = tmp_path / str(value) / "assessment"
        shutil.copytree(BUNDLE, bundle)
        config = bundle / "configs" / "inference.json"
        values = json.loads(config.read_text())
        values["max_colour_share"] = value
        config.write_text(json.dumps(values))
        with pytest.raises(ModelError, match="max_colour_share"):
            Assessor.load(bundle)


def test_colour_flow_is_seen_past_frames_cut_short(
    assessor: Assessor, synth_exams: Path, tmp_path: Path
) -> None:
    """The frames whose colours were looked at cut short (the last one, the likeliest to be
    cut, is always among them): their grey filler hid the colour (share 0.098 -> 0.003) and
    the cine was read as lung with its colours taken for echoes."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from lus_pacs.imaging.decode import colour_frames
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm")))
    path = write_cine(tmp_path / "doppler.dcm", _colour_box(lung.frames, lung.region, 6), "jpeg")
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    cut = sorted(colour_frames(n))[1::2]  # half the sampled frames, the last among them
    assert n - 1 in cut
    for i in cut:
        frames[i] = frames[i][: len(frames[i]) // 4]
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds.save_as(tmp_path / "cut.dcm")
    cine = read_cine(tmp_path / "cut.dcm")
    assert {i + 1 for i in cut} <= set(cine.damaged)
    whole = read_cine(path).colour_share
    assert whole is not None
    assert cine.colour_share is not None
    assert cine.colour_share > 0.8 * whole  # the frames read whole still tell
    assert NotAssessableReason.COLOUR_FLOW in assessor.assess(cine).reasons


def test_a_dark_coloured_marker_burned_in_is_not_colour_flow(
    assessor: Assessor, synth_exams: Path, tmp_path: Path
) -> None:
    """A dark blue body marker in a corner of the declared region, the same in every frame:
    too dark for the overlay mask (bright text), it was counted as colour flow (share 0.025)."""
    from tests.tools import write_cine

    lung = read_cine(next(synth_exams.glob("*/R1.dcm")))
    rgb = np.repeat(lung.frames[..., None], 3, axis=-1)
    r = lung.region
    side = max(r.height, r.width) // 5
    rgb[:, r.y1 - side : r.y1, r.x0 : r.x0 + side] = (10, 20, 90)  # luma about 24
    cine = read_cine(write_cine(tmp_path / "marker.dcm", rgb, "rle"))
    assert cine.colour_share is not None
    assert cine.colour_share < assessor.max_colour_share / 4
    assert assessor.assess(cine).assessable
