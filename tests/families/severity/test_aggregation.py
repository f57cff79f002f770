from __future__ import annotations

import numpy as np
import pytest
import torch

from lus_pacs.families.severity.aggregation import (
    SCORES,
    UninormAggregator,
    argmax_mean,
    max_argmax,
    min_uninorm,
)
from lus_pacs.families.severity.network import sord_loss


@pytest.mark.parametrize("e", [0.1, 0.5, 0.9])
def test_uninorm_neutral_element(e: float) -> None:
    a = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.7, 0.95, 1.0])
    torch.testing.assert_close(min_uninorm(a, torch.full_like(a, e), e), a)
    torch.testing.assert_close(min_uninorm(torch.full_like(a, e), a, e), a)


def test_uninorm_is_commutative_and_mixed_pairs_take_the_minimum() -> None:
    a, b = torch.rand(2, 100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(min_uninorm(a, b, 0.4), min_uninorm(b, a, 0.4))
    mixed = (a - 0.4) * (b - 0.4) < 0
    torch.testing.assert_close(min_uninorm(a, b, 0.4)[mixed], torch.minimum(a, b)[mixed])


def test_uninorm_is_a_product_near_e_one_and_a_probabilistic_sum_near_e_zero() -> None:
    a, b = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.6, 0.5, 0.3])
    torch.testing.assert_close(min_uninorm(a, b, 1 - 1e-5), a * b, atol=1e-4, rtol=0)
    torch.testing.assert_close(min_uninorm(a, b, 1e-5), a + b - a * b, atol=1e-4, rtol=0)


def test_aggregator_folds_frames_per_score_with_its_neutral_elements() -> None:
    aggregator = UninormAggregator([0.2, 0.4, 0.6, 0.8])
    e = aggregator.neutral_elements.detach()
    torch.testing.assert_close(e, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    with torch.no_grad():
        torch.testing.assert_close(aggregator.aggregate(e.expand(7, SCORES)), e)
        a = torch.tensor([0.1, 0.9, 0.3, 0.99])
        torch.testing.assert_close(aggregator.aggregate(torch.stack([a, e, e])), a)
        b = torch.tensor([0.15, 0.1, 0.9, 0.5])
        expected = torch.stack([min_uninorm(a[k], b[k], e[k]) for k in range(SCORES)])
        torch.testing.assert_close(aggregator.aggregate(torch.stack([a, b])), expected)


def test_aggregator_ignores_the_order_of_frames() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(37, SCORES, generator=generator) * 2, dim=1)
    aggregator = UninormAggregator([0.1, 0.3, 0.2, 0.05])
    order = torch.randperm(37, generator=generator)
    with torch.no_grad():
        left_fold = probs[0]
        for frame in probs[1:]:
            left_fold = min_uninorm(left_fold, frame, aggregator.neutral_elements)
        torch.testing.assert_close(aggregator.aggregate(probs), left_fold)
        torch.testing.assert_close(aggregator.aggregate(probs[order]), left_fold)


def test_aggregator_masks_padding_frames_and_batches_clips() -> None:
    generator = torch.Generator().manual_seed(0)
    short = torch.softmax(torch.randn(5, SCORES, generator=generator), dim=1)
    long = torch.softmax(torch.randn(9, SCORES, generator=generator), dim=1)
    padded = torch.stack([torch.cat([short, torch.rand(4, SCORES, generator=generator)]), long])
    mask = torch.arange(9) < torch.tensor([[5], [9]])
    aggregator = UninormAggregator()
    with torch.no_grad():
        batched = aggregator(padded, mask)
        torch.testing.assert_close(batched[0], aggregator(short))
        torch.testing.assert_close(batched[1], aggregator(long))
    torch.testing.assert_close(batched.sum(-1), torch.ones(2))


@pytest.mark.parametrize("frames", [4, 300])
def test_aggregator_gradients_on_neutral_elements_are_finite(frames: int) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, frames, SCORES, generator=generator), dim=-1)
    aggregator = UninormAggregator([0.3, 0.3, 0.3, 0.3])
    sord_loss(aggregator.aggregate(probs), torch.tensor([0, 2, 3])).backward()
    grad = aggregator.neutral_logits.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    if frames == 4:  # long clips saturate the uninorm at 0 or 1, where e has no say
        assert (grad != 0).all()


def test_aggregator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="frames, 4"):
        UninormAggregator()(torch.rand(10, 3))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        UninormAggregator(1.0)
    with pytest.raises(ValueError, match="mask"):
        UninormAggregator()(torch.rand(10, SCORES), torch.ones(9, dtype=torch.bool))


# Baselines


def test_max_argmax_and_argmax_mean() -> None:
    probs = [[0.9, 0.1, 0.0, 0.0], [0.1, 0.2, 0.7, 0.0], [0.8, 0.1, 0.05, 0.05]]
    assert max_argmax(torch.tensor(probs)) == 2
    assert argmax_mean(torch.tensor(probs)) == 0
    assert max_argmax(np.array(probs)) == 2
    assert argmax_mean(np.array(probs)) == 0
    assert max_argmax(np.eye(SCORES)[[0, 1, 1, 0]]) == 1
    assert argmax_mean(np.eye(SCORES)[[3, 1, 1, 0]]) == 1


def test_baselines_reject_an_empty_clip() -> None:
    with pytest.raises(ValueError, match="frames, scores"):
        max_argmax(np.zeros((0, SCORES)))


def test_log_aggregate_is_the_log_of_the_papers_fold_and_survives_long_clips() -> None:
    torch.manual_seed(0)
    aggregator = UninormAggregator([0.2, 0.4, 0.6, 0.3])
    short = torch.softmax(torch.randn(6, 4) * 2, dim=1)
    torch.testing.assert_close(
        aggregator.log_aggregate(short),
        torch.log(aggregator.aggregate(short)),
        rtol=1e-4,
        atol=1e-5,
    )
    long = torch.softmax(torch.randn(300, 4) * 2, dim=1)
    assert (aggregator.aggregate(long) == 0).any()  # the paper's fold underflows
    values = aggregator.log_aggregate(long)
    assert torch.isfinite(values).all()
    values.sum().backward()
    grad = aggregator.neutral_logits.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert (grad != 0).all()
    assert aggregator(long).sum().item() == pytest.approx(1.0)
