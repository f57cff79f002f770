"""A contact sheet of simulated frames, one row per severity score, for a person to look at."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

_PER_ROW = 4
_TILE = (320, 240)  # width, height


class _Sampled(Protocol):
    @property
    def zone(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def samples(self) -> tuple[tuple[int, int, npt.NDArray[np.uint8]], ...]: ...


def write_montage(path: Path, records: Sequence[_Sampled]) -> None:
    """Write a PNG: for each score 0..3, up to four frames from different cines, captioned."""
    rows = []
    for score in range(4):
        tiles: list[npt.NDArray[np.uint8]] = []
        for r in records:
            for s, frame, rgb in r.samples:
                if s == score and len(tiles) < _PER_ROW:
                    tile = cv2.resize(rgb, _TILE, interpolation=cv2.INTER_AREA)
                    caption = f"score {score}  {r.patient_id} {r.zone} f{frame}"
                    cv2.putText(
                        tile,
                        caption,
                        (4, _TILE[1] - 6),
                        cv2.FONT_HERSHEY_SIMPLEX,
                        0.4,
                        (255, 255, 255),
                        1,
                        cv2.LINE_AA,
                    )
                    tiles.append(np.asarray(tile, np.uint8))
        while len(tiles) < _PER_ROW:
            blank = np.zeros((_TILE[1], _TILE[0], 3), np.uint8)
            cv2.putText(
                blank,
                f"score {score}: none in this set",
                (8, _TILE[1] // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (160, 160, 160),
                1,
                cv2.LINE_AA,
            )
            tiles.append(blank)
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
