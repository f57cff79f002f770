"""Cine decoding: lus-pacs' reader against pydicom's ``pixel_array`` + RGB-to-grey, side by side.

For pydicom's 120-frame JPEG Baseline cine (``color3d_jpeg_baseline.dcm``, from pydicom-data)
and a simulated 60-frame JPEG cine, both readers run alternately ``--repeat`` times in one
process; the median times, their ratio and the mean absolute difference of the luminance are
printed. Target: ours at least 15x faster, within 2 grey levels.

    .venv/bin/python bench/decode.py [--repeat 5] [--check]

``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.data import get_testdata_file

from lus_pacs.imaging.decode import read_cine
from lus_pacs.synth.exam import SynthOptions, synthesize

MIN_SPEEDUP = 15.0
MAX_MEAN_ABS_DIFF = 2.0


def baseline(path: Path) -> npt.NDArray[np.uint8]:
    """What a plain pydicom user writes: decode to RGB, then weight to luminance."""
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.rint(grey).astype(np.uint8)


def ours(path: Path) -> npt.NDArray[np.uint8]:
    return read_cine(path).frames


def _timed(fn: Callable[[Path], npt.NDArray[np.uint8]], path: Path) -> float:
    start = time.perf_counter()
    fn(path)
    return time.perf_counter() - start


def measure(name: str, path: Path, repeat: int) -> tuple[float, float]:
    """Print one table row; return (speed-up, mean absolute difference)."""
    ours(path), baseline(path)  # warm the decoders and the page cache for both
    t_ours, t_base = [], []
    for _ in range(repeat):
        t_base.append(_timed(baseline, path))
        t_ours.append(_timed(ours, path))
    ref, mine = baseline(path), ours(path)
    mad = float(np.abs(ref.astype(np.int16) - mine).mean())
    speedup = statistics.median(t_base) / statistics.median(t_ours)
    print(
        f"| {name} | {mine.shape[0]}x{mine.shape[1]}x{mine.shape[2]} "
        f"| {statistics.median(t_base) * 1000:.0f} | {statistics.median(t_ours) * 1000:.0f} "
        f"| {speedup:.1f}x | {mad:.2f} |"
    )
    return speedup, mad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), SynthOptions(patients=1, seed=11, zones=6, frames=60))
        cines = {
            "pydicom-data color3d_jpeg_baseline": Path(
                get_testdata_file("color3d_jpeg_baseline.dcm")  # type: ignore[arg-type]
            ),
            "simulated R1 (JPEG Baseline)": next(Path(tmp).glob("*/R1.dcm")),
        }
        print("| cine | frames x rows x cols | pydicom + grey ms | lus-pacs ms | ratio | MAD |")
        print("|---|---|---|---|---|---|")
        results = [measure(name, path, args.repeat) for name, path in cines.items()]
    missed = [r for r in results if r[0] < MIN_SPEEDUP or r[1] > MAX_MEAN_ABS_DIFF]
    print(
        f"target: ratio >= {MIN_SPEEDUP:.0f}x and MAD <= {MAX_MEAN_ABS_DIFF}: "
        + ("met" if not missed else "MISSED")
    )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
