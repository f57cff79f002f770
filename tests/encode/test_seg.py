"""The score-mask LABELMAP SEG: valid, read back frame by frame, and refusing bad masks."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from lus_pacs.domain import ModelInfo
from lus_pacs.encode.seg import encode_seg, encode_uncertainty_seg
from lus_pacs.families.segmentation.network import BACKGROUND
from tests.encode import validators
from tests.encode.conftest import Source
from tests.encode.test_sr import PATIENT_STUDY

pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')

SEG_MODEL = ModelInfo(name="segmentation", version="0.2.0", title="Score segmentation")
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
"""Not yet named by pydicom 3.0."""
FRAMES = (9, 2, 5)
"""Given out of order: the SEG frames follow the source frames in ascending order."""


def _masks(cine: Source, frames: tuple[int, ...] = FRAMES) -> dict[int, np.ndarray]:
    """Label maps with all five values (scores 0..3 and background), different per frame."""
    rows, columns = int(cine.header.Rows), int(cine.header.Columns)
    masks = {}
    for i, frame in enumerate(frames):
        mask = np.full((rows, columns), BACKGROUND, dtype=np.uint8)
        for score in range(4):
            top = 20 + 40 * score + 7 * i
            mask[top : top + 30, 50 + 60 * i : 200 + 60 * i] = score
        masks[frame] = mask
    return masks


def _segment_numbers(mask: np.ndarray) -> np.ndarray:
    return np.where(mask == BACKGROUND, 0, mask + 1)


def _write(cine: Source, tmp_path: Path) -> Path:
    path = tmp_path / "seg.dcm"
    encode_seg(_masks(cine), cine.header, model=SEG_MODEL).save_as(path, enforce_file_format=True)
    return path


def test_seg_is_valid_and_agrees_with_its_source(cine: Source, tmp_path: Path) -> None:
    path = _write(cine, tmp_path)

    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    entities = validators.dcentvfy(cine.path, path)
    assert entities.errors == [], str(entities)


def test_seg_reads_back_frame_by_frame(cine: Source, tmp_path: Path) -> None:
    masks = _masks(cine)
    seg = hd.seg.segread(_write(cine, tmp_path))

    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    assert seg.file_meta.TransferSyntaxUID == RLELossless
    assert seg.NumberOfFrames == len(FRAMES)
    for frame, mask in masks.items():
        labels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=cine.header.SOPInstanceUID,
            source_frame_numbers=[frame],
            combine_segments=True,
        )
        assert labels.shape == (1, *mask.shape)
        np.testing.assert_array_equal(labels[0], _segment_numbers(mask))


def test_frames_reference_their_source_frames(cine: Source, tmp_path: Path) -> None:
    seg = pydicom.dcmread(_write(cine, tmp_path))

    assert seg.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE
    expected = sorted(FRAMES)
    for group, frame in zip(seg.PerFrameFunctionalGroupsSequence, expected, strict=True):
        ref = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPClassUID == cine.header.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == cine.header.SOPInstanceUID
        assert ref.ReferencedFrameNumber == frame
        content = group.FrameContentSequence[0]
        assert content.TemporalPositionIndex == frame
        assert content.DimensionIndexValues == frame
    (index,) = seg.DimensionIndexSequence
    assert index.DimensionIndexPointer == 0x00209128
    (series,) = seg.ReferencedSeriesSequence
    assert series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == cine.header.SOPClassUID


def test_seg_segments_patient_study_and_series(right_cine: Source, tmp_path: Path) -> None:
    seg = pydicom.dcmread(_write(right_cine, tmp_path))

    for keyword in PATIENT_STUDY:
        assert seg.get(keyword, "") == right_cine.header.get(keyword, ""), keyword
    assert seg.SeriesNumber == 902
    assert seg.SeriesInstanceUID != right_cine.header.SeriesInstanceUID
    assert "not a medical device" in seg.SeriesDescription
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    # No description of the background (pixel value 0): OHIF would colour every score as the
    # segment before it (see _drop_background_segment).
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3, 4]
    assert labels[0].startswith("LUS score 0")
    assert labels[3] == "LUS score 3"
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName == SEG_MODEL.name
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == SEG_MODEL.version


def test_bad_masks_are_refused(right_cine: Source) -> None:
    assert right_cine.n_frames == 12
    good = _masks(right_cine, (1,))[1]
    with pytest.raises(ValueError, match="1-based"):
        encode_seg({13: good}, right_cine.header, model=SEG_MODEL)
    with pytest.raises(ValueError, match="rows"):
        encode_seg({1: good[:-1]}, right_cine.header, model=SEG_MODEL)
    bad = good.copy()
    bad[0, 0] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        encode_seg({1: bad}, right_cine.header, model=SEG_MODEL)


def test_same_masks_and_uids_give_the_same_seg(right_cine: Source) -> None:
    instance_uid, series_uid = generate_uid(), generate_uid()
    first, second = (
        encode_seg(
            _masks(right_cine),
            right_cine.header,
            model=SEG_MODEL,
            instance_uid=instance_uid,
            series_uid=series_uid,
        )
        for _ in range(2)
    )

    assert first.SOPInstanceUID == second.SOPInstanceUID == instance_uid
    assert first.PixelData == second.PixelData
    assert first.PerFrameFunctionalGroupsSequence == second.PerFrameFunctionalGroupsSequence
    assert first.SharedFunctionalGroupsSequence == second.SharedFunctionalGroupsSequence
    assert first.SegmentSequence == second.SegmentSequence


def test_binary_seg_is_valid_and_reads_back_per_score(cine: Source, tmp_path: Path) -> None:
    masks = _masks(cine)
    path = tmp_path / "binary.dcm"
    encode_seg(masks, cine.header, model=SEG_MODEL, binary=True).save_as(
        path, enforce_file_format=True
    )
    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    assert validators.dcentvfy(cine.path, path).errors == []

    seg = hd.seg.segread(path)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert seg.NumberOfFrames == 4 * len(FRAMES)  # every score of every frame, empty or not
    for frame, mask in masks.items():
        labels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=cine.header.SOPInstanceUID,
            source_frame_numbers=[frame],
            combine_segments=True,
        )
        np.testing.assert_array_equal(labels[0], _segment_numbers(mask))


@pytest.mark.parametrize("binary", [False, True], ids=["labelmap", "binary"])
def test_both_seg_kinds_carry_the_plane_geometry_ohif_needs(
    right_cine: Source, binary: bool
) -> None:
    """OHIF opens a SEG only with Pixel Measures and Plane Orientation in its shared
    functional groups: the spacing of the cine's tissue region, the image plane's identity."""
    seg = encode_seg(_masks(right_cine), right_cine.header, model=SEG_MODEL, binary=binary)

    shared = seg.SharedFunctionalGroupsSequence[0]
    region = right_cine.header.SequenceOfUltrasoundRegions[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert spacing == pytest.approx(
        [10 * float(region.PhysicalDeltaY), 10 * float(region.PhysicalDeltaX)], rel=1e-5
    )
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [1, 0, 0, 0, 1, 0]


def test_the_seg_spacing_is_the_b_mode_regions_not_a_strips(right_cine: Source) -> None:
    """An M-mode strip listed before the B-mode region, its X in cm too: its spacing (5 mm
    across) was the mask's."""
    import copy

    header = copy.deepcopy(right_cine.header)
    b_mode = header.SequenceOfUltrasoundRegions[0]
    strip = copy.deepcopy(b_mode)
    strip.RegionSpatialFormat = 2  # M-mode
    strip.PhysicalDeltaX = 0.5
    header.SequenceOfUltrasoundRegions.insert(0, strip)
    seg = encode_seg(_masks(right_cine), header, model=SEG_MODEL, binary=False)
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx(
        [10 * float(b_mode.PhysicalDeltaY), 10 * float(b_mode.PhysicalDeltaX)], rel=1e-5
    )


def test_uncertainty_is_a_valid_fractional_seg_of_the_maps(cine: Source, tmp_path: Path) -> None:
    rows, columns = int(cine.header.Rows), int(cine.header.Columns)
    maps = {
        frame: np.linspace(0, 0.5, rows * columns, dtype=np.float32).reshape(rows, columns)
        * (i + 1)
        / len(FRAMES)
        for i, frame in enumerate(FRAMES)
    }
    path = tmp_path / "uncertainty.dcm"
    encode_uncertainty_seg(maps, cine.header, model=SEG_MODEL).save_as(
        path, enforce_file_format=True
    )
    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    assert validators.dcentvfy(cine.path, path).errors == []

    seg = hd.seg.segread(path)
    # The plane geometry of the label SEGs (it had none: OHIF opens no SEG without it).
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" in shared
    assert "PlaneOrientationSequence" in shared
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert seg.NumberOfFrames == len(FRAMES)
    for frame, values in maps.items():
        read = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=cine.header.SOPInstanceUID,
            source_frame_numbers=[frame],
            rescale_fractional=True,
        )
        np.testing.assert_allclose(read[0, ..., 0] * 0.5, values, atol=0.5 / 255)


def test_uncertainty_outside_a_probability_spread_is_refused(right_cine: Source) -> None:
    rows, columns = int(right_cine.header.Rows), int(right_cine.header.Columns)
    with pytest.raises(ValueError, match=r"outside \[0, 0.5\]"):
        encode_uncertainty_seg(
            {1: np.full((rows, columns), 0.7)}, right_cine.header, model=SEG_MODEL
        )


@pytest.mark.parametrize("binary", [False, True])
def test_a_single_segmented_frame_makes_a_one_frame_seg(
    right_cine: Source, tmp_path: Path, binary: bool
) -> None:
    masks = _masks(right_cine, (4,))
    path = tmp_path / "one.dcm"
    encode_seg(masks, right_cine.header, model=SEG_MODEL, binary=binary).save_as(
        path, enforce_file_format=True
    )
    assert validators.dciodvfy(path).errors == []
    labels = hd.seg.segread(path).get_pixels_by_source_frame(
        source_sop_instance_uid=right_cine.header.SOPInstanceUID,
        source_frame_numbers=[4],
        combine_segments=True,
    )
    np.testing.assert_array_equal(labels[0], _segment_numbers(masks[4]))
    rows, columns = int(right_cine.header.Rows), int(right_cine.header.Columns)
    one = encode_uncertainty_seg(
        {4: np.full((rows, columns), 0.1)}, right_cine.header, model=SEG_MODEL
    )
    assert one.NumberOfFrames == 1
