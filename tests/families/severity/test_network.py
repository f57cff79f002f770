from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lus_pacs.families.severity.aggregation import SCORES
from lus_pacs.families.severity.network import (
    FRAME_SCORERS,
    LOSSES,
    CNNScorer,
    FrameCNN,
    RandomCropScorer,
    RegSTNScorer,
    SeverityNet,
    SeverityOutput,
    STNLocaliser,
    STNScorer,
    crop,
    reg_stn_loss,
    restricted_affine,
    sord_loss,
    sord_targets,
    theta_to_box,
)

ROWS, COLS = 64, 80


def _frames(batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, ROWS, COLS, generator=generator) * 2 - 1


def _identity(batch: int = 1) -> torch.Tensor:
    return torch.eye(2, 3).expand(batch, 2, 3)


# Frame scorers


@pytest.mark.parametrize("name", sorted(FRAME_SCORERS))
@pytest.mark.parametrize("training", [True, False])
def test_every_scorer_shapes(name: str, training: bool) -> None:
    torch.manual_seed(0)
    scorer = FRAME_SCORERS[name]().train(training)
    with torch.no_grad():
        out = scorer(_frames())
    assert isinstance(out, SeverityOutput)
    assert out.logits.shape == (2, SCORES)
    transforms = {STNScorer: 1, RegSTNScorer: 2, RandomCropScorer: 1 if training else 0}
    n = transforms.get(type(scorer), 0)
    if n:
        assert out.thetas is not None
        assert out.sigmas is not None
        assert out.thetas.shape == (2, n, 2, 3)
        assert out.sigmas.shape == (2, n)
    else:
        assert out.thetas is None
        assert out.sigmas is None
    if isinstance(scorer, RegSTNScorer):
        assert out.logits2 is not None
        assert out.logits2.shape == (2, SCORES)
    else:
        assert out.logits2 is None


@pytest.mark.parametrize("name", sorted(FRAME_SCORERS))
def test_the_prediction_alone_is_the_forward_pass_in_eval_mode(name: str) -> None:
    # Inference leaves Reg-STN's second crop out (it only trains): the same logits and
    # transforms, with batch norm's running statistics moved off their start.
    torch.manual_seed(1)
    network = SeverityNet(name)
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(_frames(8, seed=3))
    network.eval()
    with torch.no_grad():
        full, alone = network(_frames(5)), network.predict(_frames(5))
    torch.testing.assert_close(alone.logits, full.logits, rtol=0, atol=1e-6)
    assert alone.logits2 is None
    if full.thetas is None:
        assert alone.thetas is None
    else:
        assert alone.thetas is not None
        torch.testing.assert_close(alone.thetas, full.thetas, rtol=0, atol=0)


def test_scorers_and_losses_name_the_same_rows() -> None:
    assert set(FRAME_SCORERS) == set(LOSSES)
    assert set(LOSSES.values()) == {"ce", "sord"}
    assert FRAME_SCORERS["cnn_ce"] is FRAME_SCORERS["cnn_sord"] is CNNScorer


@pytest.mark.parametrize("name", sorted(FRAME_SCORERS))
def test_every_scorer_rejects_a_frame_without_channel(name: str) -> None:
    with pytest.raises(ValueError, match="batch, 1, rows, columns"):
        FRAME_SCORERS[name]()(torch.rand(2, ROWS, COLS))


def test_frame_cnn_is_small_and_takes_the_project_frame_size() -> None:
    cnn = FrameCNN().eval()
    assert sum(p.numel() for p in cnn.parameters()) < 400_000
    with torch.no_grad():
        assert cnn.features(torch.zeros(1, 1, 200, 260)).shape == (1, 96)


def test_reg_stn_gradients_reach_the_localiser_head_and_the_cnn() -> None:
    torch.manual_seed(0)
    scorer = RegSTNScorer()
    loss, _ = reg_stn_loss(scorer(_frames(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    head = scorer.localiser.head.weight.grad
    assert head is not None
    assert head.abs().sum() > 0
    grads = [p.grad for p in scorer.cnn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_reg_stn_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    scorer = RegSTNScorer(widths=(8, 8, 16, 16), dropout=0.0, cnn_input=(32, 48)).train()
    optimiser = torch.optim.Adam(scorer.parameters(), lr=1e-3)
    x, scores = _frames(8)[..., :32, :48], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss, parts = reg_stn_loss(scorer(x), scores, scorer.scale_priors)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        assert set(parts) == {"sord", "mse", "prior"}
    assert losses[-1] < 0.9 * losses[0], losses


def test_random_crops_follow_the_generator_and_the_priors() -> None:
    torch.manual_seed(0)
    scorer = RandomCropScorer(generator=torch.Generator().manual_seed(1)).train()
    torch.manual_seed(0)
    twin = RandomCropScorer(generator=torch.Generator().manual_seed(1)).train()
    twin.load_state_dict(scorer.state_dict())
    scorer.cnn.dropout.p = twin.cnn.dropout.p = 0.0
    x = _frames(16)
    with torch.no_grad():
        out, out_twin = scorer(x), twin(x)
    torch.testing.assert_close(out.logits, out_twin.logits)
    assert out.sigmas is not None
    assert out.thetas is not None
    assert set(out.sigmas.flatten().tolist()) == {0.5, 0.75}
    boxes = theta_to_box(out.thetas[:, 0], ROWS, COLS)
    assert (boxes[:, 0] >= 0).all()
    assert (boxes[:, 2] <= COLS).all()


def test_random_crop_scorer_sees_the_whole_frame_in_evaluation() -> None:
    scorer = RandomCropScorer().eval()
    x = _frames()
    whole = torch.nn.functional.interpolate(x, size=scorer.cnn_input, mode="area")
    with torch.no_grad():
        torch.testing.assert_close(scorer(x).logits, scorer.cnn(whole))


# Localiser and crops


def test_localiser_starts_at_its_priors_without_rotation_or_shift() -> None:
    thetas, sigmas = STNLocaliser(2)(_frames(3))
    torch.testing.assert_close(sigmas, torch.tensor([[0.5, 0.75]] * 3))
    expected = torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]], [[0.75, 0, 0], [0, 0.75, 0]]])
    torch.testing.assert_close(thetas, expected.expand(3, 2, 2, 3))


def test_localiser_keeps_its_transforms_bounded() -> None:
    torch.manual_seed(0)
    localiser = STNLocaliser(2, max_rotation=math.pi / 6)
    torch.nn.init.normal_(localiser.head.weight, std=10.0)
    thetas, sigmas = localiser(_frames(8))
    assert ((sigmas >= 0.1) & (sigmas <= 1.0)).all()
    shift = thetas[..., 2].abs()
    assert (shift <= (1 - sigmas).unsqueeze(-1) + 1e-6).all()
    assert sigmas.std() > 0  # the weights now make the transforms depend on the frame


def test_localiser_rejects_a_scale_per_transform_mismatch() -> None:
    with pytest.raises(ValueError, match="one scale per transform"):
        STNLocaliser(2, initial_scales=(0.5,))


def test_identity_crop_is_the_frame() -> None:
    x = _frames()
    torch.testing.assert_close(crop(x, _identity(2)), x)
    box = theta_to_box(_identity(), ROWS, COLS)
    torch.testing.assert_close(box, torch.tensor([[0.0, 0.0, COLS, ROWS]]))
    assert theta_to_box(np.eye(2, 3), ROWS, COLS).tolist() == [0, 0, COLS, ROWS]


def test_half_scale_crop_is_the_centred_half() -> None:
    theta = restricted_affine(torch.zeros(1), torch.tensor([0.5]), torch.zeros(1, 2))
    box = theta_to_box(theta, ROWS, COLS)
    torch.testing.assert_close(
        box, torch.tensor([[COLS / 4, ROWS / 4, 3 * COLS / 4, 3 * ROWS / 4]])
    )
    ramp = torch.arange(COLS, dtype=torch.float32).expand(1, 1, ROWS, COLS)
    cropped = crop(ramp, theta)
    assert cropped.shape == ramp.shape
    assert COLS / 4 - 1 < cropped.min() < cropped.max() < 3 * COLS / 4


def test_shifted_crop_box_moves_and_clips() -> None:
    theta = restricted_affine(torch.zeros(1), torch.tensor([0.5]), torch.tensor([[0.5, -0.75]]))
    x0, y0, x1, y1 = theta_to_box(theta, ROWS, COLS)[0].tolist()
    assert (x0, x1) == pytest.approx((COLS / 2, COLS))
    assert (y0, y1) == pytest.approx((0.0, ROWS * 3 / 8))  # clipped at the top


def test_rotation_is_rigid_in_pixels_on_a_wide_frame() -> None:
    rows, cols = 40, 80
    theta = restricted_affine(torch.tensor(0.3), torch.tensor(1.0), torch.zeros(2), cols / rows)
    to_pixels = torch.diag(torch.tensor([cols / 2, rows / 2]))
    linear = to_pixels @ theta[:, :2] @ torch.linalg.inv(to_pixels)
    torch.testing.assert_close(linear @ linear.T, torch.eye(2))


# SORD


def test_sord_targets_are_distributions_peaked_at_the_score() -> None:
    targets = sord_targets(torch.arange(SCORES))
    torch.testing.assert_close(targets.sum(1), torch.ones(SCORES))
    assert targets.argmax(1).tolist() == list(range(SCORES))
    # ordinal: mass falls with the distance from the score
    assert targets[3, 2] > targets[3, 1] > targets[3, 0]


def test_sord_zero_gap_sets_healthy_apart() -> None:
    gapped, plain = (
        sord_targets(torch.arange(SCORES)),
        sord_targets(torch.arange(SCORES), zero_gap=0),
    )
    torch.testing.assert_close(plain[1, 0], plain[1, 2])
    assert gapped[1, 0] < gapped[1, 2]
    assert gapped[0, 1] < plain[0, 1]

    # the gap leaves the distances between scores 1 to 3 alone
    def without_zero(targets: torch.Tensor) -> torch.Tensor:
        return targets[1:, 1:] / targets[1:, 1:].sum(1, keepdim=True)

    torch.testing.assert_close(without_zero(gapped), without_zero(plain))


def test_sord_loss_is_lowest_at_the_targets() -> None:
    scores = torch.tensor([0, 2])
    best = sord_targets(scores).log()
    assert sord_loss(best, scores) < sord_loss(best + torch.randn(2, SCORES), scores)
    assert sord_loss(best, scores) < sord_loss(best.flip(0), scores)


def test_sord_targets_reject_scores_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sord_targets(torch.tensor([4]))


def test_reg_stn_loss_parts() -> None:
    logits = torch.tensor([[1.0, 0, 0, 0], [0, 0, 2, 0]])
    out = SeverityOutput(logits, logits + 1, None, torch.tensor([[0.5, 0.5], [0.6, 0.75]]))
    total, parts = reg_stn_loss(out, torch.tensor([0, 2]))
    torch.testing.assert_close(parts["mse"], torch.tensor(1.0))
    torch.testing.assert_close(parts["prior"], torch.tensor(0.175))
    torch.testing.assert_close(parts["sord"], sord_loss(logits, torch.tensor([0, 2])))
    torch.testing.assert_close(total, parts["sord"] + 1.175)


def test_reg_stn_loss_rejects_a_single_crop() -> None:
    out = SeverityOutput(torch.zeros(1, SCORES), None, None, None)
    with pytest.raises(ValueError, match="RegSTNScorer"):
        reg_stn_loss(out, torch.tensor([1]))


# The bundled network


def test_severity_net_scores_frames_and_aggregates_a_clip() -> None:
    torch.manual_seed(0)
    network = SeverityNet("stn_sord").eval()
    assert isinstance(network.scorer, STNScorer)
    with torch.no_grad():
        out = network(_frames(3))
        clip = network.aggregator(torch.softmax(out.logits, dim=1))
    assert out.logits.shape == (3, SCORES)
    assert clip.shape == (SCORES,)
    keys = set(network.state_dict())
    assert "aggregator.neutral_logits" in keys
    assert any(k.startswith("scorer.localiser.") for k in keys)


def test_severity_net_names_the_variants_it_knows() -> None:
    with pytest.raises(ValueError, match="reg_stn_sord"):
        SeverityNet("reg_stn")
