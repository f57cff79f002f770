"""Paper 002's networks: the encoder's size and shapes, BYOL's target update, NT-Xent."""

from __future__ import annotations

import torch

from lus_pacs.families.consolidation.network import (
    BYOL,
    CLIP_FRAMES,
    CLIP_SIZE,
    ConsolidationClassifier,
    Darknet3D,
    count_parameters,
    nt_xent,
)


def test_the_classifier_is_about_the_papers_size_and_shape() -> None:
    model = ConsolidationClassifier()
    # The paper's whole classifier: 133,880 parameters.
    assert 120_000 <= count_parameters(model) <= 150_000
    clips = torch.rand(3, 1, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    assert model.eval()(clips).shape == (3,)
    assert Darknet3D()(clips).shape == (3, Darknet3D().out_features)


def test_byol_learns_and_its_target_follows_slowly() -> None:
    torch.manual_seed(0)
    learner = BYOL(Darknet3D(), hidden=64, projection=16, momentum=0.9)
    clips = torch.rand(4, 1, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    before = [p.clone() for p in learner.target_encoder.parameters()]
    optimiser = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=1e-2)
    first = float(learner.loss(clips, clips.flip(-1)))
    for _ in range(5):
        loss = learner.loss(clips, clips.flip(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        learner.update_target()
    assert float(learner.loss(clips, clips.flip(-1))) < first
    moved = [
        float((p - q).abs().max())
        for p, q in zip(learner.target_encoder.parameters(), before, strict=True)
    ]
    online = [
        float((p - q).abs().max())
        for p, q in zip(learner.encoder.parameters(), before, strict=True)
    ]
    assert max(moved) > 0  # the target moves ...
    assert max(moved) < max(online)  # ... more slowly than the online network
    assert all(not p.requires_grad for p in learner.target_encoder.parameters())


def test_nt_xent_is_low_when_twins_match_and_high_when_they_do_not() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched = float(nt_xent(z, z + 0.01 * torch.randn(8, 16), temperature=0.1))
    shuffled = float(nt_xent(z, z[torch.randperm(8)], temperature=0.1))
    assert matched < 0.1 < shuffled
