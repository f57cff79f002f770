"""Cost of segmenting one frame with the shipped ensemble on this machine, side by side:

* ``plain``: one pass of the three networks, dropout off (``mc_samples = 0``);
* ``mc one by one``: 40 Monte-Carlo dropout passes run one after the other (the baseline);
* ``mc batched``: the same 40 passes as :func:`mc_dropout_predict` runs them, 8 copies of the
  frame per batch.

The three run alternately ``--repeat`` times in one process; median seconds per frame and the
ratio of batched to one-by-one are printed. Target: batched at least 1.2x faster.

    .venv/bin/python bench/segmentation.py [--repeat 3] [--samples 40] [--check]

``--check`` exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lus_pacs.inference.segmentation import SegmentationModel
from lus_pacs.nets.segmentation import mc_dropout_predict

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "segmentation"
MIN_SPEEDUP = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    networks = list(SegmentationModel.load(BUNDLE).ensemble.members.values())
    frame = torch.rand(1, 1, 200, 260) * 2 - 1

    def plain() -> None:
        with torch.inference_mode():
            for n in networks:
                n.eval()(frame)

    def one_by_one() -> None:
        mc_dropout_predict(networks, frame, args.samples, batch=1)

    def batched() -> None:
        mc_dropout_predict(networks, frame, args.samples, batch=8)

    runs: dict[str, Callable[[], None]] = {
        "plain": plain,
        "mc one by one": one_by_one,
        "mc batched": batched,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm up
    for _ in range(args.repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"threads {torch.get_num_threads()}, {args.samples} MC-dropout passes, 200 x 260 frame")
    for name, seconds in median.items():
        print(f"  {name:14s} {seconds:7.2f} s per frame")
    speedup = median["mc one by one"] / median["mc batched"]
    print(f"batched / one by one: {speedup:.2f}x faster (target >= {MIN_SPEEDUP}x)")
    if args.check and speedup < MIN_SPEEDUP:
        sys.exit(1)


if __name__ == "__main__":
    main()
