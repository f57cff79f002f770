from __future__ import annotations

import pytest
import torch

from lus_pacs.nets.b_lines import C2DLSTMAttention


@pytest.fixture
def network() -> C2DLSTMAttention:
    torch.manual_seed(0)
    return C2DLSTMAttention()


def test_shapes_and_attention(network: C2DLSTMAttention) -> None:
    network.eval()
    x = torch.rand(3, 1, 30, 64, 64)
    with torch.inference_mode():
        logit, attention = network(x)
    assert logit.shape == (3,)
    assert attention.shape == (3, 30)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))


def test_any_window_length(network: C2DLSTMAttention) -> None:
    network.eval()
    with torch.inference_mode():
        out = network(torch.rand(2, 1, 7, 64, 64))
    assert out.attention.shape == (2, 7)


def test_gradients_reach_every_parameter(network: C2DLSTMAttention) -> None:
    network.train()
    out = network(torch.rand(4, 1, 10, 64, 64))
    (out.logit.sum() + (out.attention**2).sum()).backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)


def test_small(network: C2DLSTMAttention) -> None:
    n = sum(p.numel() for p in network.parameters())
    assert 100_000 < n < 1_000_000, f"C2DLSTMAttention has {n:,} parameters"


def test_rejects_wrong_input(network: C2DLSTMAttention) -> None:
    with pytest.raises(ValueError, match="batch, 1, frames, rows, columns"):
        network(torch.rand(1, 30, 64, 64))
