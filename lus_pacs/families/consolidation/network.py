"""Paper 002's consolidation model: a small 3D Darknet encoder, pre-trained by contrastive
self-supervision (BYOL, or SimCLR) on unlabeled cine, then a linear classifier.

Chen et al., "Contrastive self-supervised learning for spatio-temporal analysis of lung
ultrasound videos" (ISBI 2022). The encoder is Darknet-53's pattern in 3D: a stem convolution,
then stages that halve the resolution with a strided 3x3x3 convolution and stack residual blocks
(1x1x1 convolution to half the channels, 3x3x3 back, added to the input), every convolution
followed by batch norm and leaky ReLU (slope 0.1), and global average pooling to the clip's
feature vector. The paper's whole classifier has 133,880 parameters; the default widths here
give about that many (:func:`count_parameters`). Clips are (1, T, H, W): grey frames over time.

Self-supervision (:class:`BYOL`): an online network (encoder, projection MLP with one hidden
layer of 4096, predictor MLP of the same shape) learns to predict the target network's
projection of another augmented view of the same clip; the target is an exponential moving
average (0.99) of the online encoder and projector. :func:`nt_xent` is SimCLR's loss for the
alternative. After pre-training the projection heads are dropped; the encoder feeds
:class:`ConsolidationClassifier`'s linear layer, frozen or fine-tuned.
"""

from __future__ import annotations

import copy

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn import functional

CLIP_FRAMES = 16
"""Frames of a clip the encoder sees (evenly spaced over a window of the cine)."""
CLIP_SIZE = 64
"""Each frame's tissue region resized to CLIP_SIZE x CLIP_SIZE."""

_ACT = ("leakyrelu", {"negative_slope": 0.1})


def _conv(cin: int, cout: int, kernel: int, stride: int | tuple[int, int, int] = 1) -> nn.Module:
    return Convolution(
        spatial_dims=3,
        in_channels=cin,
        out_channels=cout,
        kernel_size=kernel,
        strides=stride,
        act=_ACT,
        norm="batch",
        bias=False,
    )


class ResidualBlock3d(nn.Module):
    """Darknet's residual unit: 1x1x1 to half the channels, 3x3x3 back, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels // 2, 1), _conv(channels // 2, channels, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Darknet3D(nn.Module):
    """The 3D encoder: (batch, 1, T, H, W) clips to (batch, features) vectors.

    Parameters
    ----------
    widths:
        Channels of the stem and of each stage.
    blocks:
        Residual blocks per stage.
    """

    def __init__(
        self, widths: tuple[int, ...] = (8, 16, 32, 56), blocks: tuple[int, ...] = (1, 2, 1)
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) - 1:
            raise ValueError(f"{len(widths)} widths need {len(widths) - 1} stages of blocks")
        # The stem halves the image but keeps time: the first layers see the motion.
        layers: list[nn.Module] = [_conv(1, widths[0], 3, (1, 2, 2))]
        for i, n in enumerate(blocks):
            layers.append(_conv(widths[i], widths[i + 1], 3, 2))
            layers.extend(ResidualBlock3d(widths[i + 1]) for _ in range(n))
        self.features = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3, 4))


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(cin, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, cout),
    )


class BYOL(nn.Module):
    """Bootstrap Your Own Latent around an encoder.

    Parameters
    ----------
    encoder:
        The network being pre-trained (the online encoder; the target is a copy).
    hidden, projection:
        The projection and prediction MLPs' hidden and output sizes (paper: hidden 4096).
    momentum:
        Exponential moving average of the target (paper: 0.99).
    """

    def __init__(
        self, encoder: Darknet3D, hidden: int = 4096, projection: int = 128, momentum: float = 0.99
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = _mlp(encoder.out_features, hidden, projection)
        self.predictor = _mlp(projection, hidden, projection)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in (*self.target_encoder.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)
        self.momentum = momentum

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """The symmetric BYOL loss, 2 - 2 cos(prediction, target projection), both ways."""
        online1 = self.predictor(self.projector(self.encoder(view1)))
        online2 = self.predictor(self.projector(self.encoder(view2)))
        with torch.no_grad():
            target1 = self.target_projector(self.target_encoder(view1))
            target2 = self.target_projector(self.target_encoder(view2))
        return (_byol_term(online1, target2) + _byol_term(online2, target1)).mean()

    @torch.no_grad()
    def update_target(self) -> None:
        """Move the target a step towards the online network (after each optimiser step)."""
        pairs = (
            (self.target_encoder, self.encoder),
            (self.target_projector, self.projector),
        )
        for target, online in pairs:
            for t, o in zip(target.parameters(), online.parameters(), strict=True):
                t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)
            for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
                tb.copy_(ob)


def _byol_term(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * functional.cosine_similarity(prediction, target.detach(), dim=-1)


class SimCLR(nn.Module):
    """SimCLR around an encoder: a projection MLP and the NT-Xent loss."""

    def __init__(
        self,
        encoder: Darknet3D,
        hidden: int = 4096,
        projection: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = _mlp(encoder.out_features, hidden, projection)
        self.temperature = temperature

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.encoder(view1))
        z2 = self.projector(self.encoder(view2))
        return nt_xent(z1, z2, self.temperature)

    def update_target(self) -> None:
        """SimCLR has no target network."""


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy: each view must pick its twin out of the
    other 2N - 2 clips of the batch."""
    z = functional.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    n = z1.shape[0]
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return functional.cross_entropy(similarity, targets)


class ConsolidationClassifier(nn.Module):
    """The encoder and a linear layer: a clip's logit that a consolidation is present."""

    def __init__(self, encoder: Darknet3D | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else Darknet3D()
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(clips)).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
