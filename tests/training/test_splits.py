"""Group-wise folds: no group in two folds, every item in exactly one."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest

from lus_pacs.training.pocus import read_labels
from lus_pacs.training.splits import split_by_group


def _check_folds(items: list, folds: list[list], key: Callable[[Any], Hashable]) -> None:
    assert sorted(map(id, (i for fold in folds for i in fold))) == sorted(map(id, items))
    owner: dict = {}
    for index, fold in enumerate(folds):
        for item in fold:
            assert owner.setdefault(key(item), index) == index, f"group {key(item)} split"


def test_groups_stay_whole_and_every_item_is_placed() -> None:
    rng = random.Random(3)
    items = [(f"patient{rng.randrange(40)}", n) for n in range(500)]
    folds = split_by_group(items, key=lambda item: item[0], n_folds=5, seed=1)
    assert len(folds) == 5
    _check_folds(items, folds, key=lambda item: item[0])
    sizes = sorted(len(f) for f in folds)
    assert sizes[-1] - sizes[0] <= max(Counter(i[0] for i in items).values())
    for fold in folds:  # input order kept inside a fold
        assert [n for _, n in fold] == sorted(n for _, n in fold)


def test_same_seed_same_folds_other_seed_may_differ() -> None:
    items = [f"g{n % 10}-{n}" for n in range(100)]  # ten groups of equal size

    def split(seed: int) -> list[list[str]]:
        return split_by_group(items, key=lambda s: s.split("-")[0], n_folds=3, seed=seed)

    assert split(7) == split(7)
    assert any(split(seed) != split(7) for seed in range(8))


@pytest.mark.parametrize("n_folds", [1, 4])
def test_impossible_fold_counts_are_refused(n_folds: int) -> None:
    with pytest.raises(ValueError, match="fold"):
        split_by_group(["a1", "a2", "b1", "c1"], key=lambda s: s[0], n_folds=n_folds)


@pytest.mark.pocus
def test_pocus_clips_split_by_source(pocus_dir: Path) -> None:
    clips = read_labels(pocus_dir / "labels.csv")
    assert len(clips) == 130
    folds = split_by_group(clips, key=lambda c: c.group, n_folds=5, seed=0)
    _check_folds(clips, folds, key=lambda c: c.group)
    assert all(folds)
