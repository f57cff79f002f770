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
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class BLineOutput(NamedTuple):
    """What :class:`C2DLSTMAttention` returns for a batch of windows."""

    logit: torch.Tensor
    """Clip (window) logit that B-lines are present, shape (batch,)."""
    attention: torch.Tensor
    """Attention weight of each frame, shape (batch, frames); sums to 1 over frames."""


class C2DLSTMAttention(nn.Module):
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
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"channels must give the four convolutions' widths; got {channels}.")
        c1, c2, c3, c4 = channels
        self.cnn = nn.Sequential(
            _conv(1, c1),
            _conv(c1, c2),
            nn.MaxPool2d(2),
            _conv(c2, c3),
            _conv(c3, c4),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = ((image_size - 4) // 2 - 4) // 2  # two unpadded 3x3 convolutions per pooling
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for the CNN; use at least 14.")
        self.frame_feature = nn.Sequential(
            nn.Linear(c4 * side * side, feature_size), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.lstm = nn.LSTM(feature_size, hidden_size, batch_first=True, bidirectional=True)
        self.lstm_norm = nn.BatchNorm1d(2 * hidden_size)
        self.attention_score = nn.Linear(2 * hidden_size, 1, bias=False)  # w_a
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, 1)

    def forward(self, x: torch.Tensor) -> BLineOutput:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(
                "C2DLSTMAttention needs (batch, 1, frames, rows, columns); "
                f"got shape {tuple(x.shape)}."
            )
        batch, _, frames, rows, cols = x.shape
        per_frame = x.transpose(1, 2).reshape(batch * frames, 1, rows, cols)
        features = self.frame_feature(self.cnn(per_frame)).view(batch, frames, -1)
        h, _ = self.lstm(features)
        h = self.lstm_norm(h.transpose(1, 2)).transpose(1, 2)  # batch norm over LSTM outputs
        attention = torch.softmax(self.attention_score(h).squeeze(-1), dim=1)
        attended = (attention.unsqueeze(-1) * h).sum(dim=1)  # Bahdanau's context vector
        logit = self.classifier(self.dropout(attended)).squeeze(-1)
        return BLineOutput(logit, attention)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )
