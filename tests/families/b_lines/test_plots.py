from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lus_pacs.domain import BLineFindings, ModelInfo
from lus_pacs.families.b_lines.plots import plot_attention

MODEL = ModelInfo("b_lines", "test", "test")


def test_attention_plot_is_a_png_of_the_requested_size(tmp_path: Path) -> None:
    scores = tuple(float(s) for s in np.linspace(0.1, 1.0, 40))
    findings = BLineFindings(True, 0.9, (30, 31, 40), 40, scores, MODEL)
    path = tmp_path / "attention.png"
    plot_attention(findings, path, range(25, 41), size=(400, 150))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (400, 150)
        pixels = np.asarray(image.convert("RGB"))
    shaded = (pixels == (210, 210, 210)).all(axis=2).any(axis=0)
    columns = np.flatnonzero(shaded)
    assert columns.min() > 400 // 2  # truth frames 25-40 are the right part of the axis
