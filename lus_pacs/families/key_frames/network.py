"""Paper 004's key-frame classifier: would a clinician keep this frame? With the reasons when not.

The paper fine-tunes an ImageNet ResNet-18 as a binary classifier ("an expert would pick this
frame") on 224 x 224 centre crops. No weights can be downloaded here, and a full-width ResNet-18
costs about 0.65 s per training image on one CPU core, so :class:`KeyFrameNet` is MONAI's
ResNet-18 topology (four stages of two basic blocks, 7 x 7 stem, max pooling) at a quarter of the
width (16, 32, 64, 128 channels; 0.7 M parameters), trained from scratch on one grey channel.

Its first output is the paper's: the logit that the frame is worth keeping. The other three
answer why a frame is not, from the same features (a multi-task head the paper does not have):
the probe is off the skin, a rib shadow lies over the pleura, no pleura is in view. The node
turns them into the cine's quality flag.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from monai.networks.nets import resnet18
from torch import nn

INPUT_SIZE = 224
"""Side of the centre crop the network sees."""
RESIZE = 256
"""The tissue region is resized to this square before the centre crop (ImageNet practice)."""
WIDEN_FACTOR = 0.25


class FrameOutput(StrEnum):
    """The network's outputs, in order: one logit each."""

    KEEP = "keep"
    """A clinician would keep the frame (the paper's label)."""
    NO_CONTACT = "no_contact"
    """The probe is partly off the skin."""
    RIB_SHADOW = "rib_shadow"
    """A rib shadow lies over the centre of the pleura."""
    NO_PLEURA = "no_pleura"
    """Too little pleura in view to judge the lung."""


OUTPUTS = tuple(FrameOutput)


class KeyFrameNet(nn.Module):
    """ResNet-18 (quarter width) on (batch, 1, 224, 224) frames scaled to [0, 1], giving
    (batch, len(OUTPUTS)) logits."""

    def __init__(self, widen_factor: float = WIDEN_FACTOR) -> None:
        super().__init__()
        self.resnet = resnet18(
            spatial_dims=2,
            n_input_channels=1,
            num_classes=len(OUTPUTS),
            widen_factor=widen_factor,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"KeyFrameNet takes (batch, 1, rows, columns); got {tuple(x.shape)}")
        return torch.as_tensor(self.resnet(x))
