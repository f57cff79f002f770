from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lus_pacs.families.b_lines.network import ARCHITECTURES
from lus_pacs.families.b_lines.train import (
    architecture,
    cross_validate_b_lines,
    network_args,
    train_b_lines,
)
from tests.conftest import PocusCache
from tests.tools import run_cli

SEED = 3


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bl-two")
    args = ["--patients", "2", "--seed", "5", "--frames", "20", "--fps", "10", "--workers", "2"]
    run_cli("synth", "--out", str(out), *args)
    return out


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_one_epoch_of_every_architecture(two_patients: Path, tmp_path: Path, arch: str) -> None:
    metrics = train_b_lines(
        two_patients, tmp_path, epochs=1, seed=SEED, arch=arch, n_folds=2, progress=False
    )
    for key in (
        "window_precision",
        "window_recall",
        "window_f1",
        "window_auc",
        "clip_f1",
        "localisation_iou_0.1",
        "localisation_iou_0.4",
        "key_frame_accuracy",
    ):
        assert key in metrics
    config = json.loads((tmp_path / "configs/inference.json").read_text())
    assert config["network_def"]["_target_"].endswith(ARCHITECTURES[arch].__name__)
    assert json.loads((tmp_path / "configs/metadata.json").read_text())["training"]["arch"] == arch

    torch.manual_seed(SEED)
    untrained = architecture(arch)(**network_args(arch)).state_dict()
    trained = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert trained.keys() == untrained.keys()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained if "weight" in k)


def test_same_seed_same_weights(two_patients: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        train_b_lines(
            two_patients, tmp_path / run, epochs=1, seed=SEED, arch="c2d_att", n_folds=2,
            progress=False,
        )  # fmt: skip
    a = torch.load(tmp_path / "a/models/model.pt", weights_only=True)
    b = torch.load(tmp_path / "b/models/model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cross_validation_gives_every_fold_and_the_mean(two_patients: Path) -> None:
    result = cross_validate_b_lines(
        two_patients, epochs=1, seed=SEED, arch="c2d_att", folds=2, progress=False
    )
    assert len(result.folds) == 2
    assert result.folds[0].keys() == result.mean.keys()
    assert result.folds[0]["clip_n"] + result.folds[1]["clip_n"] == 12  # every cine once
    assert result.mean["clip_n"] == 6


def test_unknown_architecture_lists_the_options(two_patients: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="c2d_lstm_att, c2d_att, c3d_att, c2d_lstm"):
        train_b_lines(two_patients, tmp_path, epochs=1, seed=0, arch="c3d", progress=False)


def test_cross_validation_with_pocus_scores_every_clip_once_and_writes_fold_0(
    two_patients: Path, pocus_cache: PocusCache, tmp_path: Path
) -> None:
    from lus_pacs.training.pocus import read_labels

    labelled = [
        c for c in read_labels(pocus_cache.pocus_dir / "labels.csv") if c.b_lines is not None
    ]
    result = cross_validate_b_lines(
        two_patients,
        epochs=1,
        seed=SEED,
        arch="c2d_att",
        folds=2,
        pocus_dir=pocus_cache.pocus_dir,
        pocus_cache=pocus_cache.cache_dir,
        max_pocus_windows=1,
        out_dir=tmp_path,
        progress=False,
    )
    # Each clip is scored by the one fold that held its source out.
    assert result.pocus_pooled["pocus_n"] == len(labelled)
    assert result.pocus_pooled["pocus_n_positive"] == sum(bool(c.b_lines) for c in labelled)
    assert sum(fold["pocus_n"] for fold in result.folds) == len(labelled)
    assert 0.0 <= result.pocus_pooled["pocus_auc"] <= 1.0
    metadata = json.loads((tmp_path / "configs/metadata.json").read_text())
    assert metadata["cross_validation"]["pocus_pooled"]["pocus_n"] == len(labelled)
    assert metadata["training"]["max_pocus_windows"] == 1
    # One window per clip: as many POCUS training windows as the fold's training clips.
    data = metadata["training"]["data"]
    assert data["pocus_windows_train"] == data["pocus_clips_train"]
    assert data["pocus"] == pocus_cache.pocus_dir.name  # a name, not a path of this machine
