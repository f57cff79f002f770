"""The severity recipe's operating point: its cuts moved so that, on sources it was not fitted
on, it scores the chosen share of the severe clips (score 2 or 3) severe, every shift fitted
without the source it scores."""

from __future__ import annotations

import numpy as np
import pytest

from lus_pacs.families.severity.measured import (
    finding_logits,
    fit_recipe,
    held_out_margins,
    operating_shift,
)

Sources = tuple[np.ndarray, list[str], list[bool | None], list[bool | None], list[int | None]]


def _devices(rng: np.random.Generator, devices: int, clips: int) -> Sources:
    """Clips of ``devices`` sources: a clip's score is 0 (neither finding), 1 (B-lines), 2
    (consolidation) or 3 (both); one measurement tells each finding within a device, and each
    device adds its own level to both (its gain)."""
    x: list[list[float]] = []
    groups: list[str] = []
    b_lines: list[bool | None] = []
    consolidation: list[bool | None] = []
    scores: list[int | None] = []
    for device in range(devices):
        level = rng.normal()
        for _ in range(clips):
            b, c = bool(rng.random() < 0.5), bool(rng.random() < 0.3)
            x.append([1.5 * b + level + rng.normal(), 1.5 * c + level + rng.normal(), rng.normal()])
            groups.append(f"device-{device}")
            b_lines.append(b)
            consolidation.append(c)
            scores.append(int(b) + 2 * int(c))
    return np.array(x), groups, b_lines, consolidation, scores


def test_the_operating_shift_keeps_severe_clips_severe_on_devices_never_seen() -> None:
    rng = np.random.default_rng(2)
    x, groups, b_lines, consolidation, scores = _devices(rng, 10, 30)
    shift = operating_shift(x, groups, b_lines, consolidation, scores, share=0.8)
    # On the held-out margins it is the smallest shift that scores 80 % of the severe clips
    # severe (plus the small step that lifts the last one off its cut).
    margins = held_out_margins(x, groups, b_lines, consolidation, scores)
    severe = np.array(scores) >= 2
    assert (margins[severe] + shift > 0).mean() >= 0.8
    assert (margins[severe] + shift - 2e-4 > 0).mean() < 0.8
    # Thirty new devices: the recipe as fitted scores a third of their severe clips below 2,
    # at the operating point it finds close to the share it was set to.
    recipe = fit_recipe(x, groups, b_lines, consolidation, scores)
    new_x, _, _, _, new_scores = _devices(rng, 30, 60)
    new_severe = np.array(new_scores) >= 2
    plain = float((recipe.clip_scores(new_x)[0][new_severe] >= 2).mean())
    shifted = float((recipe.clip_scores(new_x, shift)[0][new_severe] >= 2).mean())
    assert plain < 0.7
    assert 0.75 <= shifted <= 0.9
    assert shift > 0


def test_held_out_margins_come_from_recipes_fitted_without_the_source() -> None:
    rng = np.random.default_rng(3)
    x, groups, b_lines, consolidation, scores = _devices(rng, 4, 30)
    scores[5] = None  # a clip nobody scored
    margins = held_out_margins(x, groups, b_lines, consolidation, scores, level=1)
    names = np.array(groups)
    for group in sorted(set(groups)):
        rest = names != group
        recipe = fit_recipe(
            x[rest],
            [g for g in groups if g != group],
            [v for v, r in zip(b_lines, rest, strict=True) if r],
            [v for v, r in zip(consolidation, rest, strict=True) if r],
            [v for v, r in zip(scores, rest, strict=True) if r],
        )
        held = np.flatnonzero(~rest)
        held = held[held != 5]
        etas = recipe.ordinal.etas(finding_logits(recipe.b_lines, recipe.consolidation, x[held]))
        np.testing.assert_allclose(margins[held], etas - float(recipe.ordinal.cuts[0]))
        # A positive margin is a clip the recipe scores 1 or more.
        expected, _ = recipe.clip_scores(x[held])
        np.testing.assert_array_equal(margins[held] > 0, expected >= 1)
    assert np.isnan(margins[5])
    # A source whose others hold one score only has no margin, and nothing fails.
    one_score = [0 if g != "device-0" else s for g, s in zip(groups, scores, strict=True)]
    alone = held_out_margins(x, groups, b_lines, consolidation, one_score)
    assert np.isnan(alone[names == "device-0"]).all()
    with pytest.raises(ValueError, match="no positive clip"):
        operating_shift(x, groups, b_lines, consolidation, one_score)


@pytest.mark.parametrize(("share", "level", "match"), [(0.0, 2, "sensitivity"), (0.8, 0, "level")])
def test_an_operating_point_outside_its_range_is_refused(
    share: float, level: int, match: str
) -> None:
    x, groups, b_lines, consolidation, scores = _devices(np.random.default_rng(4), 3, 20)
    with pytest.raises(ValueError, match=match):
        operating_shift(x, groups, b_lines, consolidation, scores, share=share, level=level)
