"""The shipped segmentation ensemble in the pipeline: a 60-frame simulated cine comes out as a
valid LABELMAP SEG whose frames are the masks the model produced, and as SR measurements."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lus_pacs.domain import KeyFrameReason, OutputKind
from lus_pacs.errors import ModelError
from lus_pacs.families.segmentation.inference import SegmentationModel
from lus_pacs.pipeline import Models, analyse, encode, result_record
from lus_pacs.settings import SegmentationSettings, Settings
from lus_pacs.training.simulated import find_simulated
from tests.encode import validators

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "segmentation"

pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return SegmentationModel.load(BUNDLE)


def test_shipped_bundle_is_the_three_network_ensemble(model: SegmentationModel) -> None:
    assert list(model.ensemble.members) == ["unet", "unet_plus_plus", "deeplabv3_plus"]
    assert model.samples == 10  # the calibration check of the model card chose 10
    assert "paper 003" in model.model.title
    weights = (BUNDLE / "models" / "model.pt").stat().st_size
    assert weights < 10_000_000  # small enough for git


def test_a_severity_bundle_is_not_a_segmentation_bundle() -> None:
    with pytest.raises(ModelError, match="not SegmentationEnsemble"):
        SegmentationModel.load(BUNDLE.with_name("severity"))


def test_sixty_frame_cine_gives_a_seg_of_the_model_masks(
    model: SegmentationModel, synth_exams: Path, tmp_path: Path
) -> None:
    sim = max(
        (s for s in find_simulated(synth_exams) if s.n_frames == 60),
        key=lambda s: s.severity or 0,
    )
    header = pydicom.dcmread(sim.dicom)
    settings = Settings(
        data_dir=tmp_path,
        models=("segmentation",),
        segmentation=SegmentationSettings(frames="every", every=6, mc_samples=4),
    )
    models = Models.load(settings)
    findings = analyse(header, sim.dicom.name, models, settings)
    seg_found = findings.segmentation
    assert seg_found is not None
    assert seg_found.frames == tuple(range(1, 61, 6))
    assert (seg_found.masks != 4).any()  # it found structures

    kinds = [OutputKind(k) for k in ("seg", "seg-binary", "seg-uncertainty", "sr")]
    objects = dict(encode(findings, header, kinds, models.key))
    assert list(objects) == kinds
    paths: dict[str, Path] = {}
    for kind, dataset in objects.items():
        paths[kind] = tmp_path / f"{kind}.dcm"
        dataset.save_as(paths[kind], enforce_file_format=True)
        iod = validators.dciodvfy(paths[kind])
        assert iod.errors == [], f"{kind}: {iod}"
    assert validators.dcentvfy(sim.dicom, *paths.values()).errors == []
    path = paths["seg"]
    binary = hd.seg.segread(paths["seg-binary"])
    assert binary.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    fractional = hd.seg.segread(paths["seg-uncertainty"])
    assert fractional.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert seg_found.uncertainty is not None
    u = fractional.get_pixels_by_source_frame(
        source_sop_instance_uid=header.SOPInstanceUID,
        source_frame_numbers=[seg_found.frames[0]],
        rescale_fractional=True,
    )
    np.testing.assert_allclose(u[0, ..., 0] * 0.5, seg_found.uncertainty[0], atol=0.5 / 255)

    read = hd.seg.segread(path)
    assert read.NumberOfFrames == len(seg_found.frames)
    for frame, mask in zip(seg_found.frames, seg_found.masks, strict=True):
        labels = read.get_pixels_by_source_frame(
            source_sop_instance_uid=header.SOPInstanceUID,
            source_frame_numbers=[frame],
            combine_segments=True,
        )
        np.testing.assert_array_equal(labels[0], np.where(mask == 4, 0, mask + 1))
        as_bits = binary.get_pixels_by_source_frame(
            source_sop_instance_uid=header.SOPInstanceUID,
            source_frame_numbers=[frame],
            combine_segments=True,
        )
        np.testing.assert_array_equal(as_bits, labels)

    record = result_record(findings, [], {}).to_json()
    classes = {c["score"]: c for c in record["segmentation"]["classes"]}
    for score, c in classes.items():
        assert c["pixels"] == int((seg_found.masks == score).sum())
        assert 0 <= c["uncertainty_mean"] <= c["uncertainty_max"] <= 0.5
    json.dumps(record)  # the record is plain JSON


def test_the_node_segments_the_best_key_frame_by_default_and_every_one_on_request(
    model: SegmentationModel, synth_exams: Path, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        models=("b_lines", "severity", "segmentation", "key_frames"),
        segmentation=SegmentationSettings(mc_samples=2),
    )
    assert settings.segmentation.frames == "best"
    sim = find_simulated(synth_exams)[0]
    header = pydicom.dcmread(sim.dicom)
    findings = analyse(header, sim.dicom.name, Models.load(settings), settings)
    assert findings.segmentation is not None
    assert len({k.frame for k in findings.key_frames}) > 1  # else the test tells nothing
    best = findings.key_frames[0]
    assert best.reason is KeyFrameReason.BEST
    assert findings.segmentation.frames == (best.frame,)

    every_key = settings.model_copy(
        update={"segmentation": SegmentationSettings(frames="key", mc_samples=2)}
    )
    header = pydicom.dcmread(sim.dicom)  # analyse released its pixels
    findings = analyse(header, sim.dicom.name, Models.load(every_key), every_key)
    assert findings.segmentation is not None
    assert findings.segmentation.frames == tuple(sorted({k.frame for k in findings.key_frames}))


def test_a_single_frame_ultrasound_image_gets_valid_results(
    model: SegmentationModel, tmp_path: Path
) -> None:
    """A one-frame image (Ultrasound Image Storage) has no frame numbers to reference."""
    path = Path(str(get_testdata_file("US1_UNCR.dcm")))
    header = pydicom.dcmread(path)
    settings = Settings(
        data_dir=tmp_path,
        models=("b_lines", "severity", "segmentation"),
        segmentation=SegmentationSettings(mc_samples=2),
    )
    models = Models.load(settings)
    findings = analyse(header, path.name, models, settings)
    assert findings.segmentation is not None
    assert findings.segmentation.frames == (1,)
    kinds = [OutputKind(k) for k in ("sr", "kos", "seg", "seg-binary", "seg-uncertainty")]
    for kind, dataset in encode(findings, header, kinds, models.key):
        out = tmp_path / f"{kind}.dcm"
        dataset.save_as(out, enforce_file_format=True)
        iod = validators.dciodvfy(out)
        assert iod.errors == [], f"{kind}: {iod}"


def test_the_segmentation_setup_is_part_of_the_result_identity(tmp_path: Path) -> None:
    default = Models.load(Settings(data_dir=tmp_path, models=("segmentation",)))
    assert default.key.endswith("[best,mc10]")
    every = Models.load(
        Settings(
            data_dir=tmp_path,
            models=("segmentation",),
            segmentation=SegmentationSettings(frames="every", every=5, mc_samples=0),
        )
    )
    assert every.key.endswith("[every-5,mc0]")


@pytest.mark.parametrize(
    ("family", "key", "value"),
    [
        ("segmentation", "mc_samples", "ten"),  # a bare ValueError and a traceback at start
        ("segmentation", "mc_samples", None),  # left out: 40 passes ran, 4 x the documented 10
        ("consolidation", "saliency_frames", -3),
    ],
)
def test_a_bundle_count_that_is_not_a_count_is_refused_at_load(
    tmp_path: Path, family: str, key: str, value: object
) -> None:
    import shutil

    from lus_pacs.families.consolidation.inference import ConsolidationModel

    bundle = tmp_path / family
    shutil.copytree(BUNDLE.parent / family, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    if value is None:
        del config[key]
    else:
        config[key] = value
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    load = SegmentationModel.load if family == "segmentation" else ConsolidationModel.load
    with pytest.raises(ModelError, match=f"'{key}' must be a whole number"):
        load(bundle)
    if family == "consolidation":  # refused alike when the settings give their own count
        with pytest.raises(ModelError, match=f"'{key}' must be a whole number"):
            ConsolidationModel.load(bundle, saliency_frames=2)
