from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lus_pacs.families.b_lines.network import (
    ARCHITECTURES,
    C2DLSTM,
    BLineOutput,
    C2DLSTMAttention,
    C3DAttention,
)


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


def test_shipped_weights_still_load() -> None:
    # The shipped bundle's network is paper 001's network (as ``localiser``) beside the head.
    bundle = Path(__file__).resolve().parents[3] / "models/b_lines/models/model.pt"
    state = torch.load(bundle, weights_only=True)
    network = C2DLSTMAttention()
    prefix = "localiser."
    network.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    assert {k.split(".")[0] for k in state} == {"localiser", "head"}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_shapes_and_attention(name: str) -> None:
    torch.manual_seed(0)
    network = ARCHITECTURES[name]().eval()
    with torch.inference_mode():
        out = network(torch.rand(3, 1, 12, 64, 64))
    assert isinstance(out, BLineOutput)
    assert out.logit.shape == (3,)
    assert out.attention.shape == (3, 12)
    assert (out.attention >= 0).all()
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_gradients(name: str) -> None:
    torch.manual_seed(0)
    network = ARCHITECTURES[name]().train()
    out = network(torch.rand(4, 1, 6, 64, 64))
    loss = out.logit.sum()
    if name != "c2d_lstm":  # its attention is a constant
        loss = loss + (out.attention**2).sum()
    loss.backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_rejects_wrong_input(name: str) -> None:
    with pytest.raises(ValueError, match=ARCHITECTURES[name].__name__):
        ARCHITECTURES[name]()(torch.rand(1, 30, 64, 64))


def test_c2d_lstm_attention_is_uniform() -> None:
    network = C2DLSTM().eval()
    with torch.inference_mode():
        out = network(torch.rand(2, 1, 5, 64, 64))
    torch.testing.assert_close(out.attention, torch.full((2, 5), 0.2))


def test_c3d_attention_sees_neighbouring_frames() -> None:
    """Four 3-frame convolutions: a change in one frame reaches four frames either side."""
    torch.manual_seed(0)
    network = C3DAttention().eval()
    x = torch.rand(1, 1, 15, 64, 64)
    y = x.clone()
    y[:, :, 7] = torch.rand(64, 64)
    with torch.inference_mode():
        features_x = network.cnn(x)
        features_y = network.cnn(y)
    changed = (features_x - features_y).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert changed.tolist() == [False] * 3 + [True] * 9 + [False] * 3
