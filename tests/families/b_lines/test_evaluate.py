from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lus_pacs.domain import ModelInfo
from lus_pacs.families.b_lines.evaluate import (
    IOU_THRESHOLDS,
    binary_metrics,
    evaluate,
    frame_iou,
    localisation_accuracy,
    markdown_table,
)
from lus_pacs.families.b_lines.network import C2DAttention
from tests.tools import run_cli

MODEL = ModelInfo("b_lines", "test", "test")


def test_frame_iou_on_hand_made_cases() -> None:
    assert frame_iou({3, 4, 5, 6}, {5, 6, 7, 8}) == pytest.approx(2 / 6)
    assert frame_iou([1, 2], [1, 2]) == 1.0
    assert frame_iou([], [1, 2]) == 0.0  # a missed clip
    assert frame_iou([9], [1, 2]) == 0.0
    assert frame_iou([], []) == 1.0


def test_localisation_accuracy_counts_clips_reaching_each_threshold() -> None:
    ious = [0.05, 0.15, 0.25, 0.35, 1.0]
    assert localisation_accuracy(ious) == {0.1: 0.8, 0.2: 0.6, 0.3: 0.4, 0.4: 0.2}
    assert localisation_accuracy([0.3], [0.3]) == {0.3: 1.0}  # the threshold itself counts
    assert all(math.isnan(v) for v in localisation_accuracy([]).values())


def test_binary_metrics() -> None:
    truth = np.array([True, True, False, False])
    metrics = binary_metrics(truth, np.array([0.9, 0.4, 0.6, 0.1]))
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == 0.5
    assert metrics["f1"] == 0.5
    assert metrics["auc"] == 0.75


def test_table_has_the_papers_columns() -> None:
    rows = {
        "C2D+LSTM+A": {
            "window_precision": 0.76,
            "window_recall": 0.89,
            "window_f1": 0.81,
            "localisation_iou_0.1": 0.671,
            "localisation_iou_0.3": 0.545,
            "key_frame_accuracy": 0.875,
        },
        "C2D+A": {"window_f1": 0.58},
    }
    lines = markdown_table(rows).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for column in ("Model", "Precision", "Recall", "F1", "Key frame", "POCUS AUC", "POCUS F1"):
        assert column in header
    assert [f"IoU α={t}" for t in IOU_THRESHOLDS] == [h for h in header if h.startswith("IoU")]
    assert len(lines) == 4
    first = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert first[:4] == ["C2D+LSTM+A", "0.76", "0.89", "0.81"]
    assert first[header.index("IoU α=0.3")] == "54.5"
    assert first[header.index("Key frame")] == "87.5"
    assert first[header.index("POCUS AUC")] == "—"


def test_evaluate_a_network_on_simulated_cines(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--patients", "1", "--seed", "2", "--frames", "20", "--fps", "10"]
    run_cli("synth", "--out", str(data), *args)
    torch.manual_seed(0)
    plots = tmp_path / "plots"
    metrics = evaluate(C2DAttention(), simulated_root=data, plots=plots, progress=False)
    assert metrics["clip_n"] == 6
    assert {"localisation_mixed_iou_0.3", "key_frame_accuracy_mixed", "clips_mixed"} <= set(metrics)
    accuracy = [metrics[f"localisation_iou_{t}"] for t in IOU_THRESHOLDS]
    assert accuracy == sorted(accuracy, reverse=True) or all(math.isnan(a) for a in accuracy)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 6
    with pytest.raises(ValueError, match="simulated_root, pocus_dir"):
        evaluate(C2DAttention(), progress=False)
