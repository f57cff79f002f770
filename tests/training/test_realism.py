"""``lus-pacs evaluate simulator``'s comparison, on hand-computed cases and a synthesised exam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lus_pacs.inference.lung_features import CLIP_FEATURES
from lus_pacs.training.realism import gap_table, measurement_gaps, simulated_measurements
from tests.tools import POCUS_HEADER, measured_pocus, run_cli


def test_gaps_match_the_hand_computation() -> None:
    # Real column a: 0..4 (mean 2, sd sqrt 2, 5-95 % range 0.2-3.8); simulated 4 and 4: shift
    # (4 - 2) / sqrt 2, none inside, no spread. Column b: simulated equal to real in the middle.
    real = np.array([[0, 10], [1, 11], [2, 12], [3, 13], [4, 14]], float)
    simulated = np.array([[4, 12], [4, 12]], float)
    gaps = measurement_gaps(simulated, real, ["a", "b"])
    assert [g.name for g in gaps] == ["a", "b"]  # largest shift first
    assert gaps[0].shift == pytest.approx(2 / np.sqrt(2))
    assert gaps[0].inside == 0.0
    assert gaps[0].spread == 0.0
    assert gaps[1].shift == pytest.approx(0.0)
    assert gaps[1].inside == 1.0
    table = gap_table(gaps)
    assert "| a | +1.41 | 0% | 0.00 |" in table
    with pytest.raises(ValueError, match="2 simulated and 2 real columns for 3 names"):
        measurement_gaps(simulated, real, ["a", "b", "c"])
    with pytest.raises(ValueError, match="needs simulated and real"):
        measurement_gaps(np.zeros((0, 2)), real, ["a", "b"])


def test_simulated_exam_against_itself_and_shifted(synth_exams: Path, tmp_path: Path) -> None:
    sim = simulated_measurements(synth_exams)
    assert sim.shape == (18, len(CLIP_FEATURES))  # 3 patients x 6 zones
    same = measurement_gaps(sim, sim, CLIP_FEATURES)
    assert max(abs(g.shift) for g in same) < 1e-6
    assert all(g.spread == pytest.approx(1.0) or g.spread == 0.0 for g in same)
    # Brighter streaks by two real standard deviations: that measurement comes first.
    column = CLIP_FEATURES.index("p90_streak_contrast")
    moved = sim.astype(np.float64).copy()
    moved[:, column] += 2 * sim[:, column].std()
    first = measurement_gaps(moved, sim, CLIP_FEATURES)[0]
    assert first.name == "p90_streak_contrast"
    assert first.shift == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ValueError, match="no simulated cine"):
        simulated_measurements(tmp_path)


def test_the_command_compares_with_the_trainable_clips_only(
    synth_exams: Path, tmp_path: Path
) -> None:
    # The "real" trainable clips are the simulated exam with its streak contrast three standard
    # deviations lower; the evaluation-only clips are far off on pleural depth and must not count.
    sim = simulated_measurements(synth_exams).astype(np.float64)
    streak = CLIP_FEATURES.index("p90_streak_contrast")
    depth = CLIP_FEATURES.index("mean_pleura_depth")
    trainable = sim.copy()
    trainable[:, streak] -= 3 * sim[:, streak].std()
    external = sim.copy()
    external[:, depth] += 50 * (sim[:, depth].std() + 1e-3)
    files = [f"videos/Reg-site{i % 3}-{i}.mp4" for i in range(len(sim))]
    rows = [f"{f},regular,convex,site,CC BY 4.0,20,200x200,0,,,,,,,0" for f in files]
    data, cache = measured_pocus(
        tmp_path,
        rows,
        [f"pocus/{f}" for f in files] + [f"pocus-extra/{f}" for f in files],
        np.concatenate([trainable, external]).astype(np.float32),
    )
    (data / "pocus-extra").mkdir()
    (data / "pocus-extra" / "labels.csv").write_text("\n".join([POCUS_HEADER, *rows]) + "\n")
    out = tmp_path / "out"

    result = run_cli(
        "evaluate", "simulator", "--simulated", str(synth_exams), "--data", str(data),
        "--cache", str(cache), "--out", str(out),
    )  # fmt: skip

    table = (out / "realism.md").read_text()
    rows_out = table.split("|---|---|---|---|\n")[1].splitlines()
    assert len(rows_out) == len(CLIP_FEATURES)
    first = rows_out[0]
    assert first.startswith("| p90_streak_contrast | +3.00 | 0% | 1.00 |")
    assert "mean_pleura_depth | +0.00 |" in table  # the evaluation-only clips are not read
    assert f"real: {len(sim)} trainable clips" in table
    assert first in result.stdout
