"""Paper 002's data and measures: clips, the Table 2 augmentations, AUC, boxes from saliency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lus_pacs.families.consolidation.clips import frame_indices
from lus_pacs.families.consolidation.data import (
    ClipSource,
    RandReplaceFrames,
    RandReverse,
    RandShuffleFrames,
    augmentation,
    batch,
)
from lus_pacs.families.consolidation.inference import boxes_of, iou, weighted_iou
from lus_pacs.families.consolidation.network import CLIP_FRAMES, CLIP_SIZE
from lus_pacs.families.consolidation.train import label_fraction
from lus_pacs.training.metrics import roc_auc


def _ramp() -> torch.Tensor:
    """A clip whose frame t is filled with the value t: the frame order is readable."""
    values = torch.arange(CLIP_FRAMES, dtype=torch.float32)
    return values[None, :, None, None].expand(1, CLIP_FRAMES, 4, 4).clone()


def _order(clip: torch.Tensor) -> list[int]:
    return [int(v) for v in clip[0, :, 0, 0]]


def test_frame_indices_cover_the_cine_evenly() -> None:
    centred = frame_indices(45)
    assert len(centred) == CLIP_FRAMES
    assert centred[0] >= 0
    assert centred[-1] <= 44
    assert np.all(np.diff(centred) >= 2)
    jittered = frame_indices(45, np.random.default_rng(1))
    assert np.all(np.abs(jittered - centred) <= 2)
    assert list(frame_indices(8)) == sorted(frame_indices(8))  # short cines repeat frames


def test_temporal_augmentations_reverse_shuffle_and_replace() -> None:
    clip = _ramp()
    reverse = RandReverse(prob=1.0)
    assert _order(reverse(clip)) == list(range(CLIP_FRAMES))[::-1]
    shuffle = RandShuffleFrames(prob=1.0, most=4)
    shuffle.set_random_state(seed=3)
    orders = [_order(shuffle(clip)) for _ in range(20)]
    assert all(sorted(o) == list(range(CLIP_FRAMES)) for o in orders)  # a permutation
    assert all(sum(a != b for a, b in zip(o, range(CLIP_FRAMES), strict=True)) <= 4 for o in orders)
    assert any(o != list(range(CLIP_FRAMES)) for o in orders)
    replace = RandReplaceFrames(prob=1.0, most=4)
    replace.set_random_state(seed=3)
    replaced = [_order(replace(clip)) for _ in range(20)]
    assert all(
        sum(a != b for a, b in zip(o, range(CLIP_FRAMES), strict=True)) <= 4 for o in replaced
    )
    assert any(len(set(o)) < CLIP_FRAMES for o in replaced)  # some frame now appears twice


def test_the_spatial_augmentation_treats_every_frame_alike() -> None:
    frame = torch.zeros(CLIP_SIZE, CLIP_SIZE)
    frame[20:40, 10:30] = 1.0
    clip = frame.expand(1, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE).clone()
    out = augmentation(temporal=False, seed=5)(clip)
    out = torch.as_tensor(out)
    assert out.shape == clip.shape
    assert not torch.equal(out, clip)
    # Noise differs frame to frame; the geometry (where the square went) does not.
    bright = out[0] > 0.5
    overlap = (bright[0] & bright[-1]).sum() / bright[0].sum().clamp(min=1)
    assert overlap > 0.8


def test_batches_are_clips_of_the_right_shape() -> None:
    source = ClipSource("a", "p", np.zeros((45, CLIP_SIZE, CLIP_SIZE), np.uint8), True)
    clips, chosen = batch([source], np.random.default_rng(0), 3, augmentation(seed=1))
    assert clips.shape == (3, 1, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    assert chosen == [source] * 3


def test_roc_auc() -> None:
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert np.isnan(roc_auc([0.5], [1]))


def test_label_fractions_keep_both_classes() -> None:
    sources = [
        ClipSource(str(i), str(i), np.zeros((1, 1, 1), np.uint8), i % 10 == 0) for i in range(100)
    ]
    small = label_fraction(sources, 0.05, seed=0)
    assert len(small) >= 5
    assert sum(bool(s.label) for s in small) >= 2
    assert sum(not s.label for s in small) >= 2
    assert len(label_fraction(sources, 1.0, seed=0)) == 100


def test_boxes_enclose_the_top_pixels_and_weighted_iou_scores_them() -> None:
    saliency = np.zeros((CLIP_SIZE, CLIP_SIZE), np.float32)
    saliency[10:30, 5:25] = 1.0  # 400 pixels: the top 10 % of 4096 fall inside
    saliency[50:52, 50:52] = 0.5
    boxes = boxes_of(saliency)
    assert (5, 10, 25, 30) in boxes
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert weighted_iou([(5, 10, 25, 30)], [(5, 10, 25, 30)]) == 1.0
    assert weighted_iou([(5, 10, 25, 30), (0, 0, 2, 2)], [(5, 10, 25, 30)]) == pytest.approx(
        400 / 404
    )
    assert weighted_iou([], [(0, 0, 1, 1)]) == 0.0


@pytest.mark.parametrize("method", ["gradient", "occlusion"])
def test_saliency_leaves_the_classifier_as_it_was(method: str) -> None:
    """Saliency must not switch batch norm to training (statistics drift, and every later cine
    would be scored in training mode), nor leave gradients in the parameters."""
    from lus_pacs.families.consolidation.inference import saliency
    from lus_pacs.families.consolidation.network import ConsolidationClassifier

    torch.manual_seed(0)
    model = ConsolidationClassifier().eval()
    clip = torch.rand(1, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = float(model(clip.unsqueeze(0))[0])
    maps = saliency(model, clip, method)
    assert maps.shape == clip.shape[1:]
    assert float(maps.max()) > float(maps.min())
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert float(model(clip.unsqueeze(0))[0]) == first
