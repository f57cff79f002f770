"""Cross-validation folds that keep every group (patient, source, site) inside one fold.

Clips of one patient or one publisher share probe, preset, overlays and often the very anatomy;
a model validated on a fold that shares them with its training folds is measured on what it
memorised.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def split_by_group(
    items: Sequence[T],
    key: Callable[[T], Hashable],
    n_folds: int,
    seed: int = 0,
) -> list[list[T]]:
    """Deal ``items`` into ``n_folds`` folds so that no group is in two folds.

    Groups go largest first, each to the fold with the fewest items so far (as scikit-learn's
    ``GroupKFold``); ``seed`` orders groups of equal size. The result depends only on the items,
    their keys and ``seed``.

    Parameters
    ----------
    items:
        What to split: clips, simulated patients, ...
    key:
        The group of an item; items with equal keys land in the same fold.
    n_folds:
        At least 2 and at most the number of groups.
    seed:
        Changes the folds where groups tie in size.

    Returns
    -------
    list of list
        ``n_folds`` folds, each keeping the input order of its items; every item is in exactly
        one fold.

    Raises
    ------
    ValueError
        ``n_folds`` is below 2 or above the number of groups.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2; got {n_folds}.")
    if n_folds > len(groups):
        raise ValueError(
            f"Cannot make {n_folds} folds from {len(groups)} groups without splitting a group; "
            f"use at most {len(groups)} folds."
        )
    members = list(groups.values())
    random.Random(seed).shuffle(members)
    members.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order

    folds: list[list[int]] = [[] for _ in range(n_folds)]
    for indices in members:
        smallest = min(range(n_folds), key=lambda f: len(folds[f]))
        folds[smallest].extend(indices)
    return [[items[i] for i in sorted(fold)] for fold in folds]
