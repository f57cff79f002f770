"""Paper 003's semantic segmentation of COVID-19 markers: U-Net, U-Net++ and DeepLabv3+.

Roy et al., "Deep learning for classification and localization of COVID-19 markers in
point-of-care lung ultrasound" (IEEE TMI 2020), section IV-C. Every pixel of a 200 x 260 frame
gets one of :data:`CLASSES` labels: the four severity scores 0 to 3 and :data:`BACKGROUND`.
:data:`SEGMENTATION_NETWORKS` names the three architectures the paper compares; all of them map
``(B, 1, H, W)`` frames to ``(B, CLASSES, H, W)`` logits and are trained with pixel-wise cross
entropy. At inference the paper averages the three networks' softmax and estimates per-pixel
uncertainty with Monte-Carlo dropout: :func:`mc_dropout_predict`.

Where the paper is silent, this module chooses:

* Widths are small so that the three networks train on a CPU: each has well under 2 M
  parameters, against tens of millions for the paper's ResNet50-based models. No weights are
  pretrained (the paper does not say whether its ResNet50 was).
* :class:`PaperUNet` follows the paper's description (three blocks of two 3 x 3 convolutions
  with ReLU, max-pooling by 2, 2 and 5, a latent block with dropout 0.5, a mirrored decoder with
  nearest-neighbour upsampling and concatenated skips) with widths (16, 32, 64) and a latent of
  128 channels, no normalisation (the paper names none) and zero padding so that skips line up.
  Its input sides must be multiples of 20, which 200 and 260 are.
* :class:`UNetPlusPlus` is the nested U-Net++ of Zhou et al. built here rather than MONAI's
  ``BasicUNetPlusPlus``, which has no residual encoder. The paper's "first four encoder blocks
  of ResNet50" become a stride-2 stem (as ResNet's first convolution) and four stride-2 stages
  of residual units (two 3 x 3 convolutions with batch norm and a projected shortcut, MONAI's
  ``ResidualUnit``) of widths (16, 24, 32, 48, 64); every decoder node is a residual unit too and
  the latent map is upsampled by 2 x 2 transposed convolutions, as the paper says. The nested
  grid ends at half resolution, like segmentation_models' U-Net++ on a ResNet, and a last
  transposed convolution brings the logits to full size: a full-resolution grid trained at
  four times the cost on a CPU for no gain on these frames. Frames are zero-padded to a
  multiple of 32 and the logits cropped back.
* :class:`DeepLabV3Plus` has a residual encoder of output stride 8 (a stride-2 stem, two
  stride-2 residual stages, then a residual stage dilated by 2 instead of strided), MONAI's
  ``SimpleASPP`` (1 x 1 and three 3 x 3 convolutions dilated by 2, 4 and 6) projected to 64
  channels, and the decoder of Chen et al.: bilinear upsampling of the ASPP output to the
  stride-4 features, concatenation with those features reduced to 24 channels by a 1 x 1
  convolution, two 3 x 3 convolutions and bilinear upsampling to the input size.
* Monte-Carlo dropout needs dropout in each network; the paper places it "in the latent space".
  Each network has one channel-wise dropout (``Dropout2d``, p = 0.5) on its deepest features:
  the U-Net's latent block, the U-Net++ bottleneck and the DeepLabv3+ ASPP projection.
  Batch norm stays in eval mode during MC sampling, so only dropout varies between passes.
* :func:`mc_dropout_predict` reports the population standard deviation over passes (zero for a
  single pass rather than undefined).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
from monai.networks.blocks import ResidualUnit, SimpleASPP
from torch import nn
from torch.nn.functional import conv2d, interpolate, pad, softmax

from lus_pacs.domain import MASK_BACKGROUND, MASK_LABELS

CLASSES = MASK_LABELS
"""Number of pixel labels: severity scores 0, 1, 2, 3 and the background."""

BACKGROUND = MASK_BACKGROUND
"""Label index of pixels showing no marker of any score."""

LATENT_DROPOUT = 0.5
"""Dropout probability on each network's deepest features (the paper's U-Net value)."""

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3 x 3 convolutions with ReLU, the block of the paper's U-Net."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


def _residual(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Module:
    """A residual unit: two 3 x 3 convolutions with batch norm and ReLU, projected shortcut."""
    return ResidualUnit(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        dilation=dilation,
        subunits=2,
        act="RELU",
        norm="BATCH",
    )


class PaperUNet(nn.Module):
    """The paper's baseline U-Net: pooling by 2, 2 and 5, dropout 0.5 at the latent block.

    Parameters
    ----------
    widths
        Channels of the three encoder blocks (the decoder mirrors them).
    latent
        Channels of the latent block.
    dropout
        Dropout probability at the latent block.
    """

    pooling: tuple[int, int, int] = (2, 2, 5)
    """Max-pooling factor after each encoder block; the decoder upsamples in reverse."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (16, 32, 64),
        latent: int = 128,
        dropout: float = LATENT_DROPOUT,
    ) -> None:
        super().__init__()
        channels = (1, *widths)
        self.encoder = nn.ModuleList(
            _double_conv(channels[i], channels[i + 1]) for i in range(len(widths))
        )
        self.pools = nn.ModuleList(nn.MaxPool2d(p) for p in self.pooling)
        self.latent = nn.Sequential(_double_conv(widths[-1], latent), nn.Dropout2d(dropout))
        decoder_in = (latent, *reversed(widths[1:]))
        self.ups = nn.ModuleList(
            nn.Upsample(scale_factor=p, mode="nearest") for p in reversed(self.pooling)
        )
        self.decoder = nn.ModuleList(
            _double_conv(below + skip, skip)
            for below, skip in zip(decoder_in, reversed(widths), strict=True)
        )
        self.head = nn.Conv2d(widths[0], CLASSES, 1)

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (the product of the pooling factors)."""
        return math.prod(self.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, CLASSES, H, W)`` of frames ``(B, 1, H, W)``, sides multiples of 20."""
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            raise ValueError(
                f"PaperUNet pools by {self.pooling}: input sides must be multiples of "
                f"{self.divisor}, got {tuple(x.shape[-2:])}; resize or pad the frame "
                "(the paper's 200 x 260 fits)."
            )
        features = self.encode(x)
        features[-1] = self.dropout(features[-1])
        return self.decode(features, x.shape[-2:])

    @property
    def dropout(self) -> nn.Dropout2d:
        """The latent block's channel dropout, the one Monte-Carlo dropout samples."""
        return cast(nn.Dropout2d, self.latent[1])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Everything before :attr:`dropout`: the three skips and the latent features (last)."""
        skips = []
        for block, pool in zip(self.encoder, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        return [*skips, self.latent[0](x)]

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Logits from :meth:`encode`'s features, the last one after dropout (``size`` is the
        input's, which the skips already have)."""
        *skips, x = features
        for up, block, skip in zip(self.ups, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad ``x`` at the bottom and right up to sides that are multiples of ``multiple``."""
    rows, cols = x.shape[-2:]
    return pad(x, (0, -cols % multiple, 0, -rows % multiple))


class UNetPlusPlus(nn.Module):
    """U-Net++ (nested dense skips) with a residual encoder and transposed-convolution upsampling.

    Node ``X[i][j]`` is at depth ``i`` (resolution divided by ``2**(i + 1)``) and column ``j``:
    column 0 is the encoder, and a node of column ``j > 0`` reads every node to its left at its
    depth and the upsampled node below-left. The logits come from the last node of depth 0,
    upsampled by 2.

    Parameters
    ----------
    features
        Channels at depths 0 to 4.
    dropout
        Channel dropout probability on the bottleneck.
    """

    def __init__(
        self,
        features: tuple[int, int, int, int, int] = (16, 24, 32, 48, 64),
        dropout: float = LATENT_DROPOUT,
    ) -> None:
        super().__init__()
        depth = len(features) - 1
        self.depth = depth
        self.encoder = nn.ModuleList(
            [_residual(1, features[0], stride=2)]
            + [_residual(features[i - 1], features[i], stride=2) for i in range(1, depth + 1)]
        )
        self.bottleneck_dropout = nn.Dropout2d(dropout)
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[f"{i}_{j}"] = nn.ConvTranspose2d(features[i + 1], features[i], 2, stride=2)
                self.nodes[f"{i}_{j}"] = _residual(features[i] * (j + 1), features[i])
        self.head = nn.Sequential(
            nn.ConvTranspose2d(features[0], features[0], 2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(features[0], CLASSES, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, CLASSES, H, W)`` of frames ``(B, 1, H, W)`` of any size."""
        features = self.encode(x)
        features[-1] = self.dropout(features[-1])
        return self.decode(features, x.shape[-2:])

    @property
    def dropout(self) -> nn.Dropout2d:
        """The bottleneck's channel dropout, the one Monte-Carlo dropout samples."""
        return self.bottleneck_dropout

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node that does not depend on the bottleneck: per depth ``i`` below the
        bottleneck, its nodes ``X[i][0] .. X[i][depth - 1 - i]`` concatenated, then the
        bottleneck's features (last)."""
        x = _pad_to_multiple(x, 2 ** (self.depth + 1))
        grid: list[list[torch.Tensor]] = []
        for stage in self.encoder:
            x = stage(x)
            grid.append([x])
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        return [torch.cat(grid[i], dim=1) for i in range(self.depth)] + [grid[self.depth][0]]

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Logits cropped to ``size`` from :meth:`encode`'s features, the last one after dropout:
        the nodes ``X[i][depth - i]``, from the bottleneck up to ``X[0][depth]``."""
        *rows, below = features
        for i in reversed(range(self.depth)):
            j = self.depth - i
            up = self.ups[f"{i}_{j}"](below)
            below = self.nodes[f"{i}_{j}"](torch.cat([rows[i], up], dim=1))
        return self.head(below)[..., : size[0], : size[1]]


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+: residual encoder of output stride 8, atrous pyramid pooling, low-level decoder.

    Parameters
    ----------
    widths
        Channels of the stem (stride 2), the low-level stage (stride 4), the stride-8 stage and
        the dilated stage (stride 8, dilation 2).
    aspp_channels
        Channels of each of the four ASPP branches.
    decoder_channels
        Channels of the ASPP projection and of the decoder's 3 x 3 convolutions.
    low_level_channels
        Channels the stride-4 features are reduced to before concatenation.
    dropout
        Channel dropout probability after the ASPP projection.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (16, 32, 64, 96),
        aspp_channels: int = 32,
        decoder_channels: int = 64,
        low_level_channels: int = 24,
        dropout: float = LATENT_DROPOUT,
    ) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(1, widths[0], 3, stride=2)
        self.low_level = _residual(widths[0], widths[1], stride=2)
        self.deep = nn.Sequential(
            _residual(widths[1], widths[2], stride=2), _residual(widths[2], widths[3], dilation=2)
        )
        self.aspp = nn.Sequential(
            SimpleASPP(2, widths[3], aspp_channels, norm_type="BATCH", acti_type="RELU"),
            _conv_bn_relu(4 * aspp_channels, decoder_channels, 1),
            nn.Dropout2d(dropout),
        )
        self.reduce = _conv_bn_relu(widths[1], low_level_channels, 1)
        self.decoder = nn.Sequential(
            _conv_bn_relu(decoder_channels + low_level_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
            nn.Conv2d(decoder_channels, CLASSES, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, CLASSES, H, W)`` of frames ``(B, 1, H, W)`` of any size."""
        features = self.encode(x)
        features[-1] = self.dropout(features[-1])
        return self.decode(features, x.shape[-2:])

    @property
    def dropout(self) -> nn.Dropout2d:
        """The channel dropout after the ASPP projection, the one Monte-Carlo dropout samples."""
        return cast(nn.Dropout2d, self.aspp[2])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Everything before :attr:`dropout`: the reduced stride-4 features and the projected
        ASPP context (last)."""
        low = self.low_level(self.stem(x))
        context = self.aspp[1](self.aspp[0](self.deep(low)))
        return [self.reduce(low), context]

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Logits of input ``size`` from :meth:`encode`'s features, the last after dropout."""
        low, context = features
        context = interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.decoder(torch.cat([context, low], dim=1))
        return interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


SEGMENTATION_NETWORKS: dict[str, type[nn.Module]] = {
    "unet": PaperUNet,
    "unet_plus_plus": UNetPlusPlus,
    "deeplabv3_plus": DeepLabV3Plus,
}
"""The paper's three segmentation architectures, by name; the inference ensemble uses all three."""


def enable_mc_dropout(module: nn.Module) -> None:
    """Put ``module`` in eval mode except its dropout layers, which keep sampling (training with
    dropout on; Monte-Carlo prediction draws its masks itself, :func:`monte_carlo`)."""
    module.eval()
    for layer in module.modules():
        if isinstance(layer, _DROPOUT_TYPES):
            layer.train()


class SplitNetwork(Protocol):
    """A segmentation network split at its one Monte-Carlo dropout layer:
    ``decode(encode(x) with dropout on its last feature, x's size)`` is its forward."""

    @property
    def dropout(self) -> nn.Dropout2d: ...

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor: ...


class NearestUpConvolution(nn.Module):
    """A 3 x 3 convolution (padding 1, no bias) of features upsampled ``scale`` times by
    nearest neighbour, computed at the low resolution: the same numbers within float rounding
    for a fraction of the work.

    Upsampled by ``s``, each output pixel of phase ``(p, q)`` (its row and column modulo ``s``)
    reads the low-resolution pixels ``(p + dy) // s`` rows and ``(q + dx) // s`` columns away
    for ``dy, dx`` in -1, 0, 1: for ``s`` of 2 a 2 x 2 window, for the middle phases of
    ``s`` of 5 one pixel. Each phase is one small convolution of the low-resolution features
    with the 3 x 3 kernel's taps summed where they read the same pixel; the ``s * s`` phases
    are interleaved into the full-resolution map. For :class:`PaperUNet`'s decoder this is 2.2
    (``s`` of 2) to 4.6 (``s`` of 5) times fewer multiplications; the padding lines up, since a
    tap outside the upsampled map is outside the low-resolution one.

    Parameters
    ----------
    weight
        The convolution's ``(out, in, 3, 3)`` weight (copied: make the module again after the
        weight changes).
    scale
        The upsampling factor.
    """

    def __init__(self, weight: torch.Tensor, scale: int) -> None:
        super().__init__()
        if weight.shape[-2:] != (3, 3) or scale < 1:
            raise ValueError(
                f"Needs a 3 x 3 kernel and a scale of 1 or more, got {tuple(weight.shape)} "
                f"and {scale}."
            )
        self.scale = scale
        # per phase, row-major: the first row and column offset read, the rows and columns read
        self.windows: list[tuple[int, int, int, int]] = []
        taps = weight.detach().clone()
        for p in range(scale):
            rows = [(p + d) // scale for d in (-1, 0, 1)]
            for q in range(scale):
                cols = [(q + d) // scale for d in (-1, 0, 1)]
                kernel = taps.new_zeros(
                    *taps.shape[:2], max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
                )
                for i, row in enumerate(rows):
                    for j, col in enumerate(cols):
                        kernel[:, :, row - min(rows), col - min(cols)] += taps[:, :, i, j]
                # not in a state dict: made from the weights, which the bundle holds
                self.register_buffer(f"phase_{p}_{q}", kernel, persistent=False)
                self.windows.append((min(rows), min(cols), *kernel.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[-2:]
        padded = pad(x, (1, 1, 1, 1))
        s = self.scale
        lines = []
        for p in range(s):
            phases = []
            for q in range(s):
                top, left, height, width = self.windows[p * s + q]
                window = padded[..., 1 + top : rows + top + height, 1 + left : cols + left + width]
                phases.append(conv2d(window, getattr(self, f"phase_{p}_{q}")))
            lines.append(torch.stack(phases, dim=-1))
        # (B, C, rows, s, cols, s): row phase beside its row, column phase beside its column
        out = torch.stack(lines, dim=-3)
        return out.reshape(*out.shape[:2], rows * s, cols * s)


class PaperUNetPasses(nn.Module):
    """A trained :class:`PaperUNet` arranged for many dropout passes over the same frames (the
    same logits within float rounding): :meth:`encode` also gives the part of each decoder
    block's first convolution that reads the skip, which is the same in every pass, and
    :meth:`decode` adds it to the part that reads the upsampled features below, computed at
    their low resolution (:class:`NearestUpConvolution`). A pass of the decoder costs 15
    instead of 41 ms a 200 x 260 frame on one core (ONNX Runtime), the encoder 20 instead of
    11 ms once per frame. Made from the weights as they are: arrange the network again after
    training it further.
    """

    def __init__(self, unet: PaperUNet) -> None:
        super().__init__()
        self.unet = unet
        self.ups = nn.ModuleList(
            NearestUpConvolution(self._first(block).weight[:, : self._below(block)], scale)
            for block, scale in zip(unet.decoder, reversed(unet.pooling), strict=True)
        )

    @staticmethod
    def _first(block: nn.Module) -> nn.Conv2d:
        return cast(nn.Conv2d, cast(nn.Sequential, block)[0])

    @classmethod
    def _below(cls, block: nn.Module) -> int:
        """Channels of the features from below: the block reads them and then the skip, and
        gives as many channels as the skip has."""
        first = cls._first(block)
        return first.in_channels - first.out_channels

    @property
    def dropout(self) -> nn.Dropout2d:
        return self.unet.dropout

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per decoder block, from the deepest, the skip's part of its first convolution (bias
        included); then the latent features (last)."""
        *skips, latent = self.unet.encode(x)
        terms = []
        for block, skip in zip(self.unet.decoder, reversed(skips), strict=True):
            first = self._first(block)
            behind = slice(self._below(block), first.in_channels)
            terms.append(_convolution_part(first, skip, behind, bias=True))
        return [*terms, latent]

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        *terms, x = features
        for up, block, term in zip(self.ups, self.unet.decoder, terms, strict=True):
            _, relu, second, relu_after = cast(nn.Sequential, block)
            x = relu_after(second(relu(up(x) + term)))
        return cast(torch.Tensor, self.unet.head(x))


class UNetPlusPlusPasses(nn.Module):
    """A trained :class:`UNetPlusPlus` arranged for many dropout passes over the same frames
    (the same logits within float rounding): each decoder node reads the nodes to its left,
    which the network's own ``encode`` gives and which are the same in every pass, and the
    upsampled node below; :meth:`encode` computes once the part of the node's first
    convolution and of its shortcut that reads the nodes to the left (most of their input
    channels: 64 of 80 at the top), :meth:`decode` adds the part that reads the node below. A
    pass of the decoder costs about half as much. Made from the weights as they are: arrange
    the network again after training it further."""

    def __init__(self, network: UNetPlusPlus) -> None:
        super().__init__()
        self.network = network

    @property
    def dropout(self) -> nn.Dropout2d:
        return self.network.dropout

    def _node(self, i: int) -> ResidualUnit:
        """The decoder node of depth ``i``, the one a pass recomputes."""
        return cast(ResidualUnit, self.network.nodes[f"{i}_{self.network.depth - i}"])

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per depth below the bottleneck, the left part of its decoder node's first
        convolution and of its shortcut (biases included); then the bottleneck (last)."""
        *rows, bottleneck = self.network.encode(x)
        parts = []
        for i, row in enumerate(rows):
            node = self._node(i)
            left = slice(0, row.shape[1])
            parts.append(_convolution_part(_first_convolution(node), row, left, bias=True))
            parts.append(_convolution_part(_shortcut(node), row, left, bias=True))
        return [*parts, bottleneck]

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        *parts, below = features
        for i in reversed(range(self.network.depth)):
            node = self._node(i)
            up = self.network.ups[f"{i}_{self.network.depth - i}"](below)
            first, shortcut = _first_convolution(node), _shortcut(node)
            right = slice(first.in_channels - up.shape[1], first.in_channels)
            convolved = _convolution_part(first, up, right, bias=False) + parts[2 * i]
            unit0, unit1 = node.conv
            rest = unit1(cast(nn.Module, unit0.adn)(convolved))
            below = rest + _convolution_part(shortcut, up, right, bias=False) + parts[2 * i + 1]
        return cast(torch.Tensor, self.network.head(below))[..., : size[0], : size[1]]


def _first_convolution(node: ResidualUnit) -> nn.Conv2d:
    return cast(nn.Conv2d, node.conv[0].conv)


def _shortcut(node: ResidualUnit) -> nn.Conv2d:
    if not isinstance(node.residual, nn.Conv2d):
        raise TypeError("A decoder node of U-Net++ has no projecting convolution as shortcut.")
    return node.residual


def _convolution_part(
    convolution: nn.Conv2d, x: torch.Tensor, channels: slice, bias: bool
) -> torch.Tensor:
    """``convolution`` applied to ``x`` as if ``x`` were its input's ``channels`` and the rest
    zero: summed over a split of the channels, the whole convolution (the bias taken once)."""
    if convolution.groups != 1 or convolution.padding_mode != "zeros":
        raise TypeError("Only an ungrouped, zero-padded convolution splits over its channels.")
    return conv2d(
        x,
        convolution.weight[:, channels],
        convolution.bias if bias else None,
        convolution.stride,
        cast(tuple[int, int], convolution.padding),
        convolution.dilation,
    )


def arranged_for_passes(member: nn.Module) -> nn.Module:
    """``member`` (trained, in eval mode) as Monte-Carlo dropout runs it: the same network split
    at its dropout, with the work that is the same in every pass moved before the dropout
    (:class:`PaperUNetPasses`, :class:`UNetPlusPlusPasses`); DeepLabv3+ as it is."""
    if isinstance(member, PaperUNet):
        return PaperUNetPasses(member).eval()
    if isinstance(member, UNetPlusPlus):
        return UNetPlusPlusPasses(member).eval()
    return member


def split(member: nn.Module) -> SplitNetwork:
    """``member`` as a :class:`SplitNetwork` (every network of :data:`SEGMENTATION_NETWORKS`)."""
    if not all(hasattr(member, name) for name in ("encode", "decode", "dropout")):
        raise TypeError(f"{type(member).__name__} has no encode, decode and dropout.")
    return cast(SplitNetwork, member)


class EnsembleTrunk(nn.Module):
    """The part of each network that Monte-Carlo dropout does not change, run once per frame:
    frames ``(B, 1, H, W)`` to every member's ``encode`` features, one flat tuple in member
    order (the last feature of each member is its dropout's input)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(f for member in self.members for f in split(member).encode(x))


class EnsembleTail(nn.Module):
    """The rest, run once per pass: :class:`EnsembleTrunk`'s features and one channel mask
    ``(B, C, 1, 1)`` per member (0, or 1 / (1 - p) for a kept channel; ones for the pass
    without dropout) to the mean of the members' softmax ``(B, CLASSES, H, W)``.

    Parameters
    ----------
    members
        The networks, in the trunk's order.
    counts
        How many features each member's ``encode`` gives.
    size
        The frames' ``(H, W)``.
    """

    def __init__(
        self, members: Sequence[nn.Module], counts: Sequence[int], size: Sequence[int]
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.counts = tuple(counts)
        self.size = tuple(int(s) for s in size)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        n = sum(self.counts)
        features, masks = inputs[:n], inputs[n:]
        probabilities = []
        start = 0
        for member, count, mask in zip(self.members, self.counts, masks, strict=True):
            own = list(features[start : start + count])
            start += count
            own[-1] = own[-1] * mask
            probabilities.append(channel_softmax(split(member).decode(own, self.size)))
        return sum(probabilities[1:], probabilities[0]) / len(probabilities)


def channel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dimension 1 written out (exp of the logits less their maximum, over their
    sum): the same numbers as ``torch.softmax`` within float rounding, and in ONNX Runtime a few
    element-wise operations instead of a Softmax on the channel axis that costs as much as a
    decoder convolution."""
    e = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return e / e.sum(dim=1, keepdim=True)


def ensemble_parts(
    members: Sequence[nn.Module], x: torch.Tensor
) -> tuple[EnsembleTrunk, EnsembleTail]:
    """:class:`EnsembleTrunk` and :class:`EnsembleTail` of ``members`` (in eval mode, each
    :func:`arranged_for_passes`) for frames shaped like ``x``."""
    for member in members:
        member.eval()
    arranged = [arranged_for_passes(member) for member in members]
    with torch.inference_mode():
        counts = [len(split(member).encode(x[:1])) for member in arranged]
    return EnsembleTrunk(arranged).eval(), EnsembleTail(arranged, counts, x.shape[-2:]).eval()


def dropout_inputs(counts: Sequence[int]) -> list[int]:
    """Where each member's dropout input is among the trunk's features, from how many features
    each member gives (its last one)."""
    return [sum(counts[: i + 1]) - 1 for i in range(len(counts))]


def monte_carlo(
    trunk: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    tail: Callable[..., torch.Tensor],
    counts: Sequence[int],
    rates: Sequence[float],
    x: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    batch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Monte-Carlo dropout prediction of an ensemble split into ``trunk`` and ``tail`` (an
    :class:`EnsembleTrunk` and :class:`EnsembleTail`, or the same compiled for another runtime).

    The trunk runs once; the tail runs once with no dropout and then ``samples`` times, each
    pass with channel masks drawn from ``generator`` for every member (``counts`` features and
    dropout rate ``rates`` each), ``batch`` rows at a time (copies of the frames, each with its
    own masks). Returns the mean softmax without dropout and, for ``samples`` of 1 or more, the
    mean and the population standard deviation over the passes, all ``(B, CLASSES, H, W)``.
    """
    if samples < 0:
        raise ValueError(f"samples must be 0 or more, got {samples}.")
    features = list(trunk(x))
    lasts = dropout_inputs(counts)
    rows = len(x)

    def masks(copies: int, dropout: bool) -> list[torch.Tensor]:
        out = []
        for last, rate in zip(lasts, rates, strict=True):
            shape = (copies, features[last].shape[1], 1, 1)
            if dropout and rate > 0:
                keep = torch.full(shape, 1.0 - rate)
                out.append(torch.bernoulli(keep, generator=generator) / (1.0 - rate))
            else:
                out.append(torch.ones(shape))
        return out

    plain = tail(*features, *masks(rows, dropout=False))
    if samples == 0:
        return plain, None, None
    per_chunk = max(1, batch // rows)
    chunks = []
    for first in range(0, samples, per_chunk):
        k = min(per_chunk, samples - first)
        copies = [f.repeat(k, *([1] * (f.dim() - 1))) for f in features] if k > 1 else features
        chunk = tail(*copies, *masks(k * rows, dropout=True))
        chunks.append(chunk.reshape(k, rows, *chunk.shape[1:]))
    passes = torch.cat(chunks)
    mean = passes.mean(dim=0)
    # Written out: torch's std over the first dimension is five times slower on a CPU (32
    # against 6 ms for 10 passes of a frame), and the same within float rounding.
    return plain, mean, (passes - mean).square().mean(dim=0).sqrt()


def mc_dropout_predict(
    networks: Sequence[nn.Module],
    x: torch.Tensor,
    samples: int,
    batch: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo dropout prediction of an unweighted ensemble of eager networks (each with
    ``encode``, ``decode`` and ``dropout``): the mean over ``samples`` passes and the per-pixel
    population standard deviation over passes, both ``(B, CLASSES, H, W)``
    (:func:`monte_carlo`). Batch norm runs in eval mode; the networks' training flags are
    restored afterwards."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}.")
    if not networks:
        raise ValueError("mc_dropout_predict needs at least one network.")
    flags = [(layer, layer.training) for network in networks for layer in network.modules()]
    try:
        trunk, tail = ensemble_parts(networks, x)
        rates = [float(split(n).dropout.p) for n in networks]
        with torch.inference_mode():
            _, mean, std = monte_carlo(
                trunk, tail, tail.counts, rates, x, samples, generator, batch
            )
        assert mean is not None
        assert std is not None
        return mean, std
    finally:
        for layer, training in flags:
            layer.training = training


def label_uncertainty(probabilities: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-pixel uncertainty ``(B, H, W)`` of a label map: the Monte-Carlo dropout standard
    deviation ``std`` of the probability of the class each pixel is labelled with, the argmax of
    ``probabilities`` (both ``(B, CLASSES, H, W)``)."""
    return std.gather(1, probabilities.argmax(dim=1, keepdim=True))[:, 0]


class SegmentationEnsemble(nn.Module):
    """The paper's ensemble as one module (one bundle, one state dict): the named networks, whose
    softmax is averaged without weights, then adjusted by a per-class log bias.

    The bias (buffer ``class_bias``, zero until fitted) is logit adjustment for the class
    imbalance of the training masks: background covers about 96 % of the pixels and score 2 a few
    in ten thousand, so the plain argmax almost never chooses score 2. Training fits it on the
    validation patients (:func:`lus_pacs.families.segmentation.train.fit_class_bias`);
    ``member_bias`` holds each member's own fit, for measuring the members alone.

    Parameters
    ----------
    members
        Names in :data:`SEGMENTATION_NETWORKS`, each built with its default widths.
    """

    def __init__(self, members: Sequence[str] = tuple(SEGMENTATION_NETWORKS)) -> None:
        super().__init__()
        unknown = [m for m in members if m not in SEGMENTATION_NETWORKS]
        if unknown or not members:
            raise ValueError(
                f"Ensemble members must be among {', '.join(SEGMENTATION_NETWORKS)}; "
                f"got {list(members)}."
            )
        self.members = nn.ModuleDict({m: SEGMENTATION_NETWORKS[m]() for m in members})
        self.class_bias: torch.Tensor
        self.member_bias: torch.Tensor
        self.register_buffer("class_bias", torch.zeros(CLASSES))
        self.register_buffer("member_bias", torch.zeros(len(members), CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adjusted class probabilities ``(B, CLASSES, H, W)``: the mean of the members' softmax
        (dropout as each member's mode says) through :meth:`adjust`."""
        mean = torch.stack([softmax(m(x), dim=1) for m in self.members.values()]).mean(dim=0)
        return self.adjust(mean)

    def adjust(self, probabilities: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``probabilities`` ``(B, CLASSES, H, W)`` with ``bias`` (default :attr:`class_bias`)
        added to their logarithms, normalised again."""
        shift = (self.class_bias if bias is None else bias).view(1, -1, 1, 1)
        return softmax(probabilities.clamp_min(1e-12).log() + shift, dim=1)
