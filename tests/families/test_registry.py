"""The family registry: a family defined here, in the test suite, joins the node with one
registry entry and flows through ``process`` into the record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from lus_pacs.domain import Cine, ModelInfo, OutputKind
from lus_pacs.errors import ConfigError
from lus_pacs.families.family import Family, Found, Runner
from lus_pacs.families.registry import FAMILIES
from lus_pacs.imaging.decode import decode_dataset
from lus_pacs.pipeline import Models, process_paths
from lus_pacs.records import CineRecord
from lus_pacs.settings import Settings
from lus_pacs.training.simulated import find_simulated


@dataclass(frozen=True)
class BrightFramesFindings:
    """Frames whose mean tissue brightness is above the loop's mean, and whether the B-line
    model (which this family needs) had run before it."""

    frames: tuple[int, ...]
    saw_b_lines: bool
    model: ModelInfo


@dataclass(frozen=True)
class BrightFramesRecord:
    frames: tuple[int, ...]
    saw_b_lines: bool


INFO = ModelInfo(name="bright_frames", version="0.0.1", title="Bright frames (test family)")


def bright_frames(cine: Cine) -> tuple[int, ...]:
    means = cine.tissue().mean(axis=(1, 2))
    return tuple(int(i) + 1 for i in (means > means.mean()).nonzero()[0])


def _load(folder: Path, settings: Settings) -> Runner:
    def predict(cine: Cine, found: Found) -> BrightFramesFindings:
        return BrightFramesFindings(bright_frames(cine), "b_lines" in found.by_family, INFO)

    return Runner(INFO.version, predict)


BRIGHT_FRAMES = Family(
    name="bright_frames",
    load=_load,
    findings=BrightFramesFindings,
    record=lambda found: BrightFramesRecord(found.frames, found.saw_b_lines),
    record_type=BrightFramesRecord,
    needs=("b_lines",),
)


def test_a_family_from_outside_flows_through_process_into_the_record(
    synth_exams: Path, tmp_path: Path
) -> None:
    families = FAMILIES.with_family(BRIGHT_FRAMES)
    # Listed before the family it needs: the registry runs it after.
    settings = Settings(
        data_dir=tmp_path, models=("bright_frames", "b_lines"), output_kinds=(OutputKind.SR,)
    )
    models = Models.load(settings, families)
    assert [f.name for f in models.families] == ["b_lines", "bright_frames"]
    assert models.key.startswith("b_lines@")
    assert models.key.endswith(",bright_frames@0.0.1")

    cine = find_simulated(synth_exams)[0].dicom
    failed = process_paths([cine], tmp_path / "out", models, settings)
    assert failed == 0

    (line,) = (tmp_path / "out" / "summary.jsonl").read_text().splitlines()
    plain = json.loads(line)
    expected = bright_frames(decode_dataset(pydicom.dcmread(cine), cine.name))
    assert plain["bright_frames"] == {"frames": list(expected), "saw_b_lines": True}
    assert plain["models"]["bright_frames"] == "0.0.1"
    record = CineRecord.loads(line, families.record_types())
    assert record.part("bright_frames", BrightFramesRecord) == BrightFramesRecord(expected, True)
    assert record.b_lines is not None
    assert CineRecord.loads(line, families.record_types()).dumps() == line
    # The shipped registry does not know the family: its record is refused, not misread.
    with pytest.raises(ValueError, match="no family reads \\['bright_frames'\\]"):
        CineRecord.loads(line, FAMILIES.record_types())
    (studies,) = (tmp_path / "out" / "studies.jsonl").read_text().splitlines()
    assert json.loads(studies)["models"]["bright_frames"] == "0.0.1"


def test_the_shipped_families_run_in_an_order_that_respects_their_needs() -> None:
    order = [f.name for f in FAMILIES.ordered(FAMILIES.names)]
    for family in FAMILIES.families:
        for needed in family.needs:
            assert order.index(needed) < order.index(family.name)
        if family.lung_finding:
            # The lung models run only after the assessment has said whether they may.
            assert all(
                order.index(g.name) < order.index(family.name) for g in FAMILIES.families if g.gate
            )
    assert order == [
        "key_frames",
        "assessment",
        "b_lines",
        "consolidation",
        "severity",
        "segmentation",
    ]
    # Without the gate enabled, the registry order holds.
    assert [f.name for f in FAMILIES.ordered(["b_lines", "severity", "key_frames"])] == [
        "b_lines",
        "severity",
        "key_frames",
    ]


def test_an_unknown_family_name_is_refused_with_the_closest_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'key_frames'"):
        FAMILIES.ordered(["b_lines", "keyframes"])
    with pytest.raises(ValueError, match="unique"):
        FAMILIES.with_family(FAMILIES.families[0])


def test_a_bundle_changed_under_the_same_version_makes_results_of_its_own(
    tmp_path: Path,
) -> None:
    """The result identity was the bundles' versions only: a threshold changed in
    configs/inference.json (or weights retrained under the same version) gave other content
    under the same result UIDs, which a PACS keeps as the first, and the job store took an
    instance sent again as made."""
    import json
    import shutil

    from lus_pacs.settings import MODELS_DIR

    shutil.copytree(MODELS_DIR, tmp_path / "models")
    settings = Settings(data_dir=tmp_path, models=("b_lines",), models_dir=tmp_path / "models")
    before = Models.load(settings).key
    config_path = tmp_path / "models" / "b_lines" / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["threshold"] = 0.99
    config_path.write_text(json.dumps(config))
    after = Models.load(settings).key
    assert before.startswith("b_lines@")
    assert before.split("~")[0] == after.split("~")[0]  # the same version
    assert after != before
    # What it says, not how it is laid out: another machine's line endings or indentation,
    # or the checksum file written by sha256sum with its path, are the same bundle.
    config_path.write_text(json.dumps(config, indent=8).replace("\n", "\r\n"))
    checksum = tmp_path / "models" / "b_lines" / "models" / "model.pt.sha256"
    checksum.write_text(checksum.read_text().split()[0].upper() + "  models/model.pt\r\n")
    assert Models.load(settings).key == after


def test_lung_models_without_the_assessment_gate_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the gate a black cine got "B-lines present" and nothing said the gate was off."""
    import logging

    with caplog.at_level(logging.WARNING, logger="lus_pacs.pipeline"):
        Models.load(Settings(data_dir=tmp_path, models=("b_lines",)))
    assert "No assessment runs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lus_pacs.pipeline"):
        Models.load(Settings(data_dir=tmp_path, models=("b_lines", "assessment")))
    assert "No assessment runs" not in caplog.text
