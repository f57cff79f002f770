"""Paper 001's B-line detector: a per-frame 2D CNN, a bidirectional LSTM and temporal attention.

Kerdegari et al., "Automatic detection of B-lines in lung ultrasound videos from severe dengue
patients" (ISBI 2021), model C2D+LSTM+A. Each frame of a one-second window goes through four
3 x 3 convolutions (unit stride, batch norm, ReLU) with a max-pooling after the second and the
fourth, then a fully connected layer to a 256-d frame feature. A bidirectional LSTM (16 units a
direction, tanh) runs over the frame features; Bahdanau's temporal attention scores each step,
``e_t = h_t w_a``, ``a = softmax_t(e)``, and the attention-weighted LSTM outputs summed over
time (Bahdanau's context vector) feed a fully connected classifier. The attention weights say
which frames show B-lines.

The paper averages the weighted outputs instead, ``(1/n) sum_t a_t h_t``. That is the same model
up to a constant factor the classifier's weights absorb, but the factor 1/n (1/30 at 30 fps)
shrinks the classifier's input so much that, with Adam's bounded steps, the logits stayed within
+-0.25 after the few hundred steps a CPU affords; the sum does not have that handicap.

The paper does not give the channel counts; the defaults here (8, 8, 16, 16, unpadded as in
Keras) keep the network near 0.7 M parameters, under 3 MB of float32 weights.

The baselines of the paper's Table 1 share the input and the output: :class:`C2DAttention`
(the same CNN, attention straight over the frame features, no LSTM), :class:`C3DAttention`
(3D convolutions that keep the time axis, then attention over time) and :class:`C2DLSTM` (CNN and
bidirectional LSTM, no attention). :data:`ARCHITECTURES` names all four.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lus_pacs.families.measurements import MeasurementHead


class BLineOutput(NamedTuple):
    """What the B-line networks return for a batch of windows."""

    logit: torch.Tensor
    """Clip (window) logit that B-lines are present, shape (batch,)."""
    attention: torch.Tensor
    """Attention weight of each frame, shape (batch, frames); sums to 1 over frames."""


class _CNNLSTM(nn.Module):
    """The per-frame CNN and the bidirectional LSTM that C2D+LSTM and C2D+LSTM+A share;
    subclasses add the head. Parameters as :class:`C2DLSTMAttention`."""

    def __init__(
        self,
        image_size: int = 64,
        channels: tuple[int, int, int, int] | list[int] = (8, 8, 16, 16),
        feature_size: int = 256,
        hidden_size: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.cnn, self.frame_feature = _frame_encoder(image_size, channels, feature_size, dropout)
        self.lstm = nn.LSTM(feature_size, hidden_size, batch_first=True, bidirectional=True)
        self.lstm_norm = nn.BatchNorm1d(2 * hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, 1)

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """LSTM outputs (batch, frames, 2 x hidden), batch-normalised."""
        _check_input(self, x)
        h, _ = self.lstm(_frame_features(self.cnn, self.frame_feature, x))
        return torch.as_tensor(self.lstm_norm(h.transpose(1, 2)).transpose(1, 2))


class C2DLSTMAttention(_CNNLSTM):
    """CNN + bidirectional LSTM + temporal attention over a window of frames (paper 001).

    Parameters
    ----------
    image_size:
        Rows and columns of a frame (the paper resizes to 64 x 64).
    channels:
        Output channels of the four convolutions.
    feature_size:
        Length of the per-frame feature vector (256 in the paper).
    hidden_size:
        LSTM units in each direction (16 in the paper).
    dropout:
        Dropout on the frame features and on the attended feature (0.2 in the paper).

    Notes
    -----
    Input: float (batch, 1, frames, rows, columns) in [0, 1]. Output: :class:`BLineOutput`.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: tuple[int, int, int, int] | list[int] = (8, 8, 16, 16),
        feature_size: int = 256,
        hidden_size: int = 16,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(image_size, channels, feature_size, hidden_size, dropout)
        self.attention_score = nn.Linear(2 * hidden_size, 1, bias=False)  # w_a

    def forward(self, x: torch.Tensor) -> BLineOutput:
        h = self._sequence(x)
        attention = torch.softmax(self.attention_score(h).squeeze(-1), dim=1)
        attended = (attention.unsqueeze(-1) * h).sum(dim=1)  # Bahdanau's context vector
        logit = self.classifier(self.dropout(attended)).squeeze(-1)
        return BLineOutput(logit, attention)


class C2DAttention(nn.Module):
    """Baseline C2D+A: the per-frame CNN with temporal attention over its features, no LSTM.

    Parameters are those of :class:`C2DLSTMAttention` less ``hidden_size``. Input and output as
    :class:`C2DLSTMAttention`.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: tuple[int, int, int, int] | list[int] = (8, 8, 16, 16),
        feature_size: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.cnn, self.frame_feature = _frame_encoder(image_size, channels, feature_size, dropout)
        self.head = _AttentionHead(feature_size, dropout)

    def forward(self, x: torch.Tensor) -> BLineOutput:
        _check_input(self, x)
        return self.head(_frame_features(self.cnn, self.frame_feature, x))


class C3DAttention(nn.Module):
    """Baseline C3D+A: 3D convolutions over the window, then temporal attention.

    Four 3 x 3 x 3 convolutions (batch norm, ReLU) padded in time only, so every frame keeps its
    own feature map, with 1 x 2 x 2 max-poolings after the second and the fourth; each frame's
    map then goes through a fully connected layer to a ``feature_size`` feature, and attention
    over time as in :class:`C2DAttention`. Parameters and input/output as :class:`C2DAttention`.
    """

    def __init__(
        self,
        image_size: int = 64,
        channels: tuple[int, int, int, int] | list[int] = (8, 8, 16, 16),
        feature_size: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = _widths(channels)
        self.cnn = nn.Sequential(
            _conv3d(1, c1),
            _conv3d(c1, c2),
            nn.MaxPool3d((1, 2, 2)),
            _conv3d(c2, c3),
            _conv3d(c3, c4),
            nn.MaxPool3d((1, 2, 2)),
        )
        side = _side(image_size)
        self.frame_feature = nn.Sequential(
            nn.Linear(c4 * side * side, feature_size), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.head = _AttentionHead(feature_size, dropout)

    def forward(self, x: torch.Tensor) -> BLineOutput:
        _check_input(self, x)
        maps = self.cnn(x)  # (batch, channels, frames, side, side)
        batch, _, frames = maps.shape[:3]
        per_frame = maps.transpose(1, 2).reshape(batch, frames, -1)
        return self.head(self.frame_feature(per_frame))


class C2DLSTM(_CNNLSTM):
    """Baseline C2D+LSTM: the per-frame CNN and bidirectional LSTM, without attention.

    The LSTM outputs are averaged over time and classified. The network has no attention; its
    ``attention`` output is uniform (1/frames for every frame) so that code reading it (key
    frame, B-line frames) still runs, but it says nothing about where the B-lines are.
    Parameters and input/output as :class:`C2DLSTMAttention`.
    """

    def forward(self, x: torch.Tensor) -> BLineOutput:
        h = self._sequence(x)
        logit = self.classifier(self.dropout(h.mean(dim=1))).squeeze(-1)
        frames = h.shape[1]
        attention = torch.full((h.shape[0], frames), 1.0 / frames, dtype=h.dtype, device=h.device)
        return BLineOutput(logit, attention)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "c2d_lstm_att": C2DLSTMAttention,
    "c2d_att": C2DAttention,
    "c3d_att": C3DAttention,
    "c2d_lstm": C2DLSTM,
}
"""The paper's Table 1 rows by name; every class takes ``(batch, 1, frames, rows, columns)``."""


class MeasuredBLines(nn.Module):
    """Paper 001's network beside a measurement head, as one bundle network: the head
    (:class:`~lus_pacs.families.measurements.MeasurementHead`, fitted on real clips) says
    whether a cine shows B-lines, the network says where (its windows and attention give the
    frame scores, the B-line frames and the key frame). ``forward`` is the network's.

    Parameters
    ----------
    localiser:
        One of :data:`ARCHITECTURES`, trained as before.
    head:
        The clip-level head on the cine's lung measurements.
    """

    def __init__(self, localiser: nn.Module, head: MeasurementHead) -> None:
        super().__init__()
        self.localiser = localiser
        self.head = head

    def forward(self, x: torch.Tensor) -> BLineOutput:
        output: BLineOutput = self.localiser(x)
        return output


class _AttentionHead(nn.Module):
    """Batch norm, Bahdanau attention over time and the classifier, on per-frame features."""

    def __init__(self, size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(size)
        self.attention_score = nn.Linear(size, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(size, 1)

    def forward(self, features: torch.Tensor) -> BLineOutput:
        h = self.norm(features.transpose(1, 2)).transpose(1, 2)
        attention = torch.softmax(self.attention_score(h).squeeze(-1), dim=1)
        attended = (attention.unsqueeze(-1) * h).sum(dim=1)
        logit = self.classifier(self.dropout(attended)).squeeze(-1)
        return BLineOutput(logit, attention)


def _check_input(network: nn.Module, x: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(
            f"{type(network).__name__} needs (batch, 1, frames, rows, columns); "
            f"got shape {tuple(x.shape)}."
        )


def _widths(channels: tuple[int, int, int, int] | list[int]) -> tuple[int, int, int, int]:
    if len(channels) != 4:
        raise ValueError(f"channels must give the four convolutions' widths; got {channels}.")
    c1, c2, c3, c4 = channels
    return c1, c2, c3, c4


def _side(image_size: int) -> int:
    side = ((image_size - 4) // 2 - 4) // 2  # two unpadded 3x3 convolutions per pooling
    if side < 1:
        raise ValueError(f"image_size {image_size} is too small for the CNN; use at least 14.")
    return side


def _frame_encoder(
    image_size: int,
    channels: tuple[int, int, int, int] | list[int],
    feature_size: int,
    dropout: float,
) -> tuple[nn.Sequential, nn.Sequential]:
    """The per-frame CNN and its fully connected layer to the frame feature."""
    c1, c2, c3, c4 = _widths(channels)
    cnn = nn.Sequential(
        _conv(1, c1),
        _conv(c1, c2),
        nn.MaxPool2d(2),
        _conv(c2, c3),
        _conv(c3, c4),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    side = _side(image_size)
    frame_feature = nn.Sequential(
        nn.Linear(c4 * side * side, feature_size), nn.ReLU(inplace=True), nn.Dropout(dropout)
    )
    return cnn, frame_feature


def _frame_features(cnn: nn.Module, frame_feature: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(batch, frames, feature) from (batch, 1, frames, rows, columns), frame by frame."""
    batch, _, frames, rows, cols = x.shape
    per_frame = x.transpose(1, 2).reshape(batch * frames, 1, rows, cols)
    out: torch.Tensor = frame_feature(cnn(per_frame))
    return out.view(batch, frames, -1)


def _conv3d(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )
