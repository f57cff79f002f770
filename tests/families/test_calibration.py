"""A site's calibration: the offsets fitted on hand cases, the file, the node applying it, and
``lus-pacs calibrate`` on simulated cines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lus_pacs.domain import BLineFindings, ConsolidationFindings, SeverityFindings
from lus_pacs.errors import ConfigError, ModelError
from lus_pacs.families.calibration import (
    FamilyOffset,
    SiteCalibration,
    fit_ordinal_shift,
    offset_lines,
    read_site_labels,
)
from lus_pacs.families.measurements import fit_intercept
from tests.tools import run_cli


def test_logit_offset_of_a_hand_case() -> None:
    # Balanced: log sigmoid(-1 + o) + log(1 - sigmoid(-3 + o)) is largest where
    # sigmoid(1 - o) = sigmoid(o - 3), at o = 2.
    assert fit_intercept([-3.0, -1.0], [False, True]) == pytest.approx(2.0, abs=1e-4)
    # Three negatives weigh as much as the one positive: the same offset (unweighted it is lower).
    assert fit_intercept([-3.0, -3.0, -3.0, -1.0], [False, False, False, True]) == (
        pytest.approx(2.0, abs=1e-4)
    )
    # A device far off saturates the sigmoid: the damped steps still reach the same answer.
    assert fit_intercept([-30.0, -28.0], [False, True]) == pytest.approx(29.0, abs=1e-4)
    assert fit_intercept([50.0, 52.0], [False, True]) == pytest.approx(-51.0, abs=1e-4)
    with pytest.raises(ValueError, match="both classes"):
        fit_intercept([0.0, 1.0], [True, True])


def test_an_offset_at_the_bound_is_refused(tmp_path: Path) -> None:
    from lus_pacs.families.calibration import _within_reach

    labels = tmp_path / "labels.csv"
    assert _within_reach(-19.5, labels) == -19.5
    with pytest.raises(ConfigError, match=r"labels\.csv: .*at \+25\.0, at or past the bound"):
        _within_reach(25.0, labels)


def test_ordinal_shift_of_a_hand_case() -> None:
    # Cuts far apart: scores 0 and 1 at eta 1 make P(score 0) = sigmoid(-1 - d) = 1/2, d = -1.
    assert fit_ordinal_shift([1.0, 1.0], [0.0, 10.0, 20.0], [0, 1]) == pytest.approx(-1.0, abs=1e-3)
    # Scores drawn from the model with every eta moved by 1.5 give back 1.5.
    rng = np.random.default_rng(0)
    cuts = np.array([-1.0, 0.5, 2.0])
    eta = rng.normal(0.0, 1.5, 4000)
    below = 1 / (1 + np.exp(-(cuts[None] - (eta + 1.5)[:, None])))
    scores = (rng.random(4000)[:, None] > below).sum(axis=1)
    assert fit_ordinal_shift(eta, cuts, scores.tolist()) == pytest.approx(1.5, abs=0.1)
    with pytest.raises(ValueError, match="two scores"):
        fit_ordinal_shift([0.0, 1.0], cuts, [2, 2])
    # A score that is not a number: the bounded search answered its first probe, -4.72.
    with pytest.raises(ValueError, match="finite"):
        fit_ordinal_shift([float("nan"), 0.2, 0.5], cuts, [0, 1, 2])
    with pytest.raises(ValueError, match="finite"):
        fit_intercept([float("nan"), 0.2, 0.5], [True, False, True])


def test_calibration_file_and_its_refusals(tmp_path: Path) -> None:
    calibration = SiteCalibration("ward-7", {"b_lines": FamilyOffset("0.3.0", 1.25, 20, (7, 13))})
    path = tmp_path / "site.json"
    calibration.save(path)
    loaded = SiteCalibration.load(path)
    assert loaded == calibration
    assert loaded.offset("b_lines", "0.3.0") == 1.25
    assert loaded.offset("severity", "0.2.0") is None
    version = loaded.version("b_lines", "0.3.0")
    assert re.fullmatch(r"0\.3\.0\+site\.ward-7\.[0-9a-f]{6}", version)
    refit = SiteCalibration("ward-7", {"b_lines": FamilyOffset("0.3.0", 1.5, 20, (7, 13))})
    assert refit.version("b_lines", "0.3.0") != version  # a refit, same site: a version of its own
    with pytest.raises(ModelError, match=r"fitted on bundle version 0\.3\.0.*is 0\.4\.0"):
        loaded.offset("b_lines", "0.4.0")
    with pytest.raises(ConfigError, match="site name"):
        SiteCalibration("ward 7/../x", {})
    with pytest.raises(ConfigError, match="only b_lines, consolidation, severity"):
        SiteCalibration("w", {"segmentation": FamilyOffset("0.1.0", 0.0, 1, (1,))})
    path.write_text(json.dumps({"site": "w", "b_lines": {"offset": 1}}))
    with pytest.raises(ConfigError, match="not a site calibration"):
        SiteCalibration.load(path)
    entry = {"bundle_version": "0.3.0", "offset": float("nan"), "clips": 2, "counts": [1, 1]}
    path.write_text(json.dumps({"site": "w", "b_lines": entry}))  # json writes NaN
    with pytest.raises(ConfigError, match="not a finite number"):
        SiteCalibration.load(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        SiteCalibration.load(tmp_path / "missing.json")
    # An edited file: loaded as written, it called every cine negative (an offset of -40, or
    # "-1e3" as text) or applied true as 1; counts that are not the clips went unread.
    for changed, said in (
        ({"offset": -40.0}, "beyond any device's move"),
        ({"offset": "-1e3"}, "is not a float"),
        ({"offset": True}, "is not a float"),
        ({"clips": 2, "counts": [5, 9]}, "do not agree"),
        ({"bundle_version": 3}, "is not a str"),
    ):
        good = {"bundle_version": "0.3.0", "offset": 1.25, "clips": 2, "counts": [1, 1]}
        path.write_text(json.dumps({"site": "w", "b_lines": good | changed}))
        with pytest.raises(ConfigError, match=said):
            SiteCalibration.load(path)


def test_site_labels_file(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,b_lines,severity\na.dcm,1,\nsub/b.dcm,,2\n")
    rows = read_site_labels(labels)
    assert [(r.path, r.b_lines, r.consolidation, r.severity) for r in rows] == [
        (tmp_path / "a.dcm", True, None, None),
        (tmp_path / "sub/b.dcm", None, None, 2),
    ]
    labels.write_text("file,b_lines,severity,consolidation\na.dcm,,,1\n")  # optional column
    assert read_site_labels(labels)[0].consolidation is True
    labels.write_text("file,b_lines,severity\na.dcm,yes,\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_site_labels(labels)
    labels.write_text("file,severity\na.dcm,1\n")
    with pytest.raises(ConfigError, match="columns"):
        read_site_labels(labels)
    labels.write_text("b_lines,severity,file\n1,2\n")  # a short row: no file
    with pytest.raises(ConfigError, match="line 2: no file"):
        read_site_labels(labels)
    labels.write_bytes(b"\xef\xbb\xbffile,b_lines,severity\na.dcm,0,1\n")  # a spreadsheet's BOM
    assert read_site_labels(labels)[0].severity == 1


def test_the_node_applies_a_site_calibration(tmp_path: Path) -> None:
    from lus_pacs.pipeline import Models, analyse
    from lus_pacs.settings import Settings
    from lus_pacs.synth.exam import sample_cine

    cine = sample_cine(tmp_path / "cine")
    models = ("b_lines", "consolidation", "severity", "key_frames", "assessment")

    def findings(
        calibration: Path | None,
    ) -> tuple[BLineFindings, SeverityFindings, ConsolidationFindings, str]:
        settings = Settings(data_dir=tmp_path / "data", models=models, calibration=calibration)
        loaded = Models.load(settings)
        found = analyse(pydicom.dcmread(cine), cine.name, loaded, settings)
        assert found.b_lines is not None
        assert found.severity is not None
        assert found.consolidation is not None
        return found.b_lines, found.severity, found.consolidation, loaded.key

    b0, s0, c0, key0 = findings(None)
    b_version, s_version, c_version = b0.model.version, s0.model.version, c0.model.version
    assert "+site" not in b_version + s_version + c_version
    logit0 = math.log(b0.probability / (1 - b0.probability))
    c_logit0 = math.log(c0.probability / (1 - c0.probability))
    path = tmp_path / "site.json"
    keys = {key0}
    presence: dict[float, bool] = {}
    for offset, shift, score in ((2.0, 10.0, 3), (12.0, -10.0, 0), (-12.0, -10.0, 0)):
        SiteCalibration(
            "ward-7",
            {
                "b_lines": FamilyOffset(b_version, offset, 10, (5, 5)),
                "consolidation": FamilyOffset(c_version, offset, 10, (5, 5)),
                "severity": FamilyOffset(s_version, shift, 10, (3, 3, 2, 2)),
            },
        ).save(path)
        b, sev, con, key = findings(path)
        assert con.probability == pytest.approx(1 / (1 + math.exp(-(c_logit0 + offset))), abs=1e-5)
        assert con.present == (con.probability >= 0.5)
        assert bool(con.boxes) == con.present  # the boxes come with a presence, and only then
        assert con.model.version.startswith(f"{c_version}+site.ward-7.")
        assert b.probability == pytest.approx(1 / (1 + math.exp(-(logit0 + offset))), abs=1e-5)
        # The decision and what follows from it move with the probability.
        assert b.present == (b.probability >= 0.5)
        assert (b.key_frame is not None) == b.present
        assert bool(b.frames) == b.present
        assert sev.score == score
        assert b.model.version.startswith(f"{b_version}+site.ward-7.")
        assert sev.model.version.startswith(f"{s_version}+site.ward-7.")
        keys.add(key)  # every calibration's results get UIDs of their own
        if abs(offset) > 10:
            presence[offset] = b.present
    assert len(keys) == 4
    assert presence == {12.0: True, -12.0: False}  # far enough either way to flip any cine
    SiteCalibration("ward-7", {"b_lines": FamilyOffset("0.0.1", 2.0, 10, (5, 5))}).save(path)
    with pytest.raises(ModelError, match=r"fitted on bundle version 0\.0\.1"):
        findings(path)


def test_calibrate_command_on_simulated_cines(synth_exams: Path, tmp_path: Path) -> None:
    cines = sorted(synth_exams.rglob("*.dcm"))[:8]
    assert len(cines) == 8
    labels = tmp_path / "labels.csv"
    rows = [f"{c},{i % 2},{i % 4},{i // 4}" for i, c in enumerate(cines)]
    rows.append(f"{tmp_path / 'gone.dcm'},1,2,")
    labels.write_text("file,b_lines,severity,consolidation\n" + "\n".join(rows) + "\n")
    out = tmp_path / "site.json"

    result = run_cli("calibrate", "--labels", str(labels), "--site", "sim", "--out", str(out))

    saved = SiteCalibration.load(out)
    assert set(saved.offsets) == {"b_lines", "consolidation", "severity"}
    assert saved.offsets["consolidation"].counts == (4, 4)
    assert saved.offsets["b_lines"].clips == 8
    assert saved.offsets["b_lines"].counts == (4, 4)
    assert saved.offsets["severity"].counts == (2, 2, 2, 2)
    assert "gone.dcm: refused" in result.stderr
    assert "b_lines calibrated: sensitivity" in result.stdout

    labels.write_text("file,b_lines,severity\n" + "\n".join(f"{c},0,0" for c in cines) + "\n")
    failed = run_cli(
        "calibrate", "--labels", str(labels), "--site", "sim", "--out", str(out), check=False
    )
    assert failed.returncode == 1
    assert "nothing to calibrate" in failed.stderr
    # Both classes labelled, one of them only on a cine not read: the error said to label
    # both classes, not that a cine was not read.
    labels.write_text(f"file,b_lines,severity\n{cines[0]},1,\n{tmp_path / 'gone.dcm'},0,\n")
    failed = run_cli(
        "calibrate", "--labels", str(labels), "--site", "sim", "--out", str(out), check=False
    )
    assert "nothing to calibrate" in failed.stderr
    assert "1 of its cines not read" in failed.stderr
    assert "gone.dcm" in failed.stderr


def test_an_offset_resting_on_few_cines_of_a_class_is_flagged() -> None:
    """One positive among a hundred set the offset alone (the classes weigh alike): no word,
    and the file was written though it did worse than the bundle on the site's own cines."""
    rng = np.random.default_rng(5)
    y = np.zeros(100, bool)
    y[0] = True
    z = rng.normal(size=100)
    z[0] = -2.0  # the one positive scored low
    offset = fit_intercept(z, y)
    lines = offset_lines("b_lines", z, y, offset, 0.5)
    assert any("WARNING only 1 labelled cine(s) with the finding" in x for x in lines), lines
    balanced = np.arange(40) % 2 == 0
    scores = np.where(balanced, 1.0, -1.0) + rng.normal(scale=0.5, size=40)
    lines = offset_lines("b_lines", scores, balanced, fit_intercept(scores, balanced), 0.5)
    assert not any("WARNING" in x for x in lines), lines
    worse = offset_lines("b_lines", scores, balanced, 5.0, 0.5)  # every cine called positive
    assert any("worse than the bundle" in x for x in worse), worse  # nothing gained
    assert any("worse than the bundle" in x for x in worse), worse
