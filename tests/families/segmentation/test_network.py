from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import conv2d, cross_entropy, interpolate

from lus_pacs.families.segmentation.network import (
    BACKGROUND,
    CLASSES,
    SEGMENTATION_NETWORKS,
    NearestUpConvolution,
    PaperUNet,
    PaperUNetPasses,
    SegmentationEnsemble,
    UNetPlusPlusPasses,
    arranged_for_passes,
    enable_mc_dropout,
    ensemble_parts,
    mc_dropout_predict,
    monte_carlo,
    split,
)

NAMES = sorted(SEGMENTATION_NETWORKS)


def _network(name: str) -> nn.Module:
    torch.manual_seed(0)
    return SEGMENTATION_NETWORKS[name]()


def test_labels_are_four_scores_and_background() -> None:
    assert CLASSES == 5
    assert BACKGROUND == CLASSES - 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 1, 60, 80), (1, 1, 200, 260)])
def test_network_returns_class_logits_at_input_size(
    name: str, shape: tuple[int, int, int, int]
) -> None:
    network = _network(name).eval()
    with torch.inference_mode():
        logits = network(torch.randn(shape))
    assert logits.shape == (shape[0], CLASSES, *shape[2:])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_network_has_dropout_and_under_two_million_parameters(name: str) -> None:
    network = _network(name)
    assert any(isinstance(layer, nn.Dropout2d) for layer in network.modules())
    assert sum(p.numel() for p in network.parameters()) < 2_000_000


def test_paper_unet_latent_is_input_pooled_by_two_two_and_five() -> None:
    network = PaperUNet().eval()
    assert network.pooling == (2, 2, 5)
    seen: list[torch.Size] = []
    network.latent[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.inference_mode():
        network(torch.zeros(1, 1, 200, 260))
    assert seen == [torch.Size([1, 128, 10, 13])]


def test_paper_unet_rejects_sides_not_multiple_of_twenty() -> None:
    with pytest.raises(ValueError, match="multiples of 20"):
        PaperUNet()(torch.zeros(1, 1, 64, 80))


def test_enable_mc_dropout_keeps_only_dropout_in_training_mode() -> None:
    network = _network("deeplabv3_plus")
    enable_mc_dropout(network)
    for layer in network.modules():
        assert layer.training == isinstance(layer, nn.Dropout2d)


def test_mc_dropout_mean_is_a_distribution_and_single_pass_has_zero_std() -> None:
    networks = [_network(name) for name in NAMES]
    x = torch.randn(2, 1, 60, 80)
    mean, std = mc_dropout_predict(networks, x, samples=1)
    assert mean.shape == std.shape == (2, CLASSES, 60, 80)
    assert torch.allclose(mean.sum(dim=1), torch.ones(2, 60, 80), atol=1e-5)
    assert (std == 0).all()


def test_mc_dropout_samples_vary_and_training_flags_are_restored() -> None:
    networks = [_network(name) for name in NAMES]
    networks[0].eval()
    before = [[layer.training for layer in network.modules()] for network in networks]
    torch.manual_seed(1)
    mean, std = mc_dropout_predict(networks, torch.randn(1, 1, 60, 80), samples=4)
    assert torch.allclose(mean.sum(dim=1), torch.ones(1, 60, 80), atol=1e-5)
    assert (std > 0).any()
    assert [[layer.training for layer in network.modules()] for network in networks] == before


def test_mc_dropout_batches_passes_without_mixing_frames() -> None:
    torch.manual_seed(0)
    network = PaperUNet(dropout=0.0)  # every pass is the same: mean is the plain softmax
    x = torch.randn(2, 1, 60, 80)
    mean, std = mc_dropout_predict([network], x, samples=5, batch=4)  # chunks of 2, 2, 1
    with torch.inference_mode():
        expected = torch.softmax(network.eval()(x), dim=1)
    torch.testing.assert_close(mean, expected)
    assert float(std.max()) < 1e-6


def test_monte_carlo_gives_the_mean_and_population_std_of_its_passes() -> None:
    """The written-out standard deviation is torch's (``correction=0``) over the passes."""
    features = torch.rand(2, 6, 5, 7)
    passes: list[torch.Tensor] = []

    def tail(feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = torch.softmax(feature * mask, dim=1)
        passes.append(out)
        return out

    plain, mean, std = monte_carlo(
        lambda x: [x], tail, [1], [0.5], features, 9, torch.Generator().manual_seed(3)
    )
    drawn = torch.stack(passes[1:])  # the first call is the pass without dropout
    assert len(drawn) == 9
    assert torch.equal(plain, passes[0])
    assert mean is not None
    assert std is not None
    torch.testing.assert_close(mean, drawn.mean(dim=0), rtol=0, atol=1e-7)
    torch.testing.assert_close(std, drawn.std(dim=0, correction=0), rtol=0, atol=1e-6)
    assert float(std.max()) > 0.01  # the masks did vary the passes


def test_mc_dropout_rejects_zero_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        mc_dropout_predict([_network("unet")], torch.zeros(1, 1, 60, 80), samples=0)


def test_paper_unet_adam_steps_reduce_cross_entropy() -> None:
    torch.manual_seed(0)
    network = PaperUNet(dropout=0.0)
    x = torch.randn(2, 1, 60, 80)
    target = torch.full((2, 60, 80), BACKGROUND)
    target[:, 20:40, 30:50] = 2
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        optimiser.zero_grad()
        loss = cross_entropy(network(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_ensemble_is_the_mean_of_its_members_softmax() -> None:
    torch.manual_seed(0)
    ensemble = SegmentationEnsemble().eval()
    assert list(ensemble.members) == list(SEGMENTATION_NETWORKS)
    x = torch.randn(1, 1, 60, 80)
    with torch.inference_mode():
        mean = ensemble(x)
        by_hand = torch.stack([torch.softmax(m(x), dim=1) for m in ensemble.members.values()]).mean(
            dim=0
        )
    torch.testing.assert_close(mean, by_hand)
    torch.testing.assert_close(mean.sum(dim=1), torch.ones(1, 60, 80))


def test_ensemble_members_must_be_known_networks() -> None:
    with pytest.raises(ValueError, match="deeplabv3_plus"):
        SegmentationEnsemble(["unet", "segformer"])
    with pytest.raises(ValueError, match="Ensemble members"):
        SegmentationEnsemble([])


@pytest.mark.parametrize("scale", [1, 2, 3, 5])
def test_a_convolution_after_nearest_upsampling_is_computed_at_low_resolution(scale: int) -> None:
    torch.manual_seed(scale)
    weight = torch.randn(4, 3, 3, 3)
    x = torch.randn(2, 3, 7, 5)
    expected = conv2d(interpolate(x, scale_factor=scale, mode="nearest"), weight, padding=1)
    torch.testing.assert_close(NearestUpConvolution(weight, scale)(x), expected)


def test_a_nearest_up_convolution_takes_only_three_by_three_kernels() -> None:
    with pytest.raises(ValueError, match="3 x 3"):
        NearestUpConvolution(torch.zeros(2, 2, 5, 5), 2)


@pytest.mark.parametrize("name", NAMES)
def test_the_arrangement_for_dropout_passes_gives_the_networks_logits(name: str) -> None:
    """Every pass decodes the same features with another channel mask on the last one."""
    network = _network(name).eval()
    arranged = split(arranged_for_passes(network))
    x = torch.randn(2, 1, 60, 80)
    with torch.inference_mode():
        features = split(network).encode(x)
        mask = (torch.rand(2, features[-1].shape[1], 1, 1) > 0.5).float() * 2.0
        features[-1] = features[-1] * mask
        expected = split(network).decode(features, x.shape[-2:])
        fixed = arranged.encode(x)
        fixed[-1] = fixed[-1] * mask
        logits = arranged.decode(fixed, x.shape[-2:])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert arranged.dropout is split(network).dropout


def test_the_ensemble_parts_run_the_arranged_networks() -> None:
    members = [_network(name).eval() for name in NAMES]
    trunk, tail = ensemble_parts(members, torch.zeros(1, 1, 60, 80))
    kinds = [type(m) for m in trunk.members]
    assert kinds == [type(m) for m in tail.members]
    assert PaperUNetPasses in kinds
    assert UNetPlusPlusPasses in kinds
    # the arrangement's kernels are made from the weights, not saved beside them
    assert not any("phase" in key for key in trunk.state_dict())
