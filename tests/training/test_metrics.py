from __future__ import annotations

import numpy as np
import pytest

from lus_pacs.training.metrics import confusion, weighted_metrics


def test_confusion_rows_are_truth_columns_predictions() -> None:
    matrix = confusion([0, 0, 1, 3], [0, 1, 1, 2], 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


def test_weighted_metrics_on_a_hand_made_case() -> None:
    truth = [0, 0, 0, 0, 1, 1]
    predicted = [0, 0, 0, 1, 1, 1]
    m = weighted_metrics(truth, predicted, 4)
    # class 0: P 1, R 3/4, F1 6/7; class 1: P 2/3, R 1, F1 4/5; weights 4/6 and 2/6
    assert m["precision"] == pytest.approx(4 / 6 * 1 + 2 / 6 * 2 / 3, abs=1e-4)
    assert m["recall"] == pytest.approx(5 / 6, abs=1e-4)  # weighted recall is accuracy
    assert m["f1"] == pytest.approx(4 / 6 * 6 / 7 + 2 / 6 * 4 / 5, abs=1e-4)
    assert m["macro_f1"] == pytest.approx((6 / 7 + 4 / 5) / 2, abs=1e-4)
    assert m["n"] == 6


def test_perfect_and_empty() -> None:
    labels = np.array([0, 1, 2, 3, 3])
    assert weighted_metrics(labels, labels, 4)["f1"] == 1.0
    assert np.isnan(weighted_metrics([], [], 4)["f1"])
