"""Cost of segmenting one frame with the shipped ensemble on this machine, side by side:

* ``plain``: one pass of the three networks, dropout off (``mc_samples = 0``);
* ``mc one by one``: 40 Monte-Carlo dropout passes one after the other, in eager PyTorch
  (``mc_dropout_predict``: the networks split at their dropout layers, the part before them run
  once; the node runs the same split on ONNX Runtime, ``bench/realtime.py``);
* ``mc batched``: the same 40 passes 8 copies of the frame at a time
  (``mc_dropout_predict(..., batch=8)``).

The three run alternately ``--repeat`` times in one process; median seconds per frame and the
speed-up of batched over one-by-one are printed. Batching would become the default if it were at
least 1.2x faster; ``--check`` exits 1 when the default is the slower of the two.

    .venv/bin/python bench/segmentation.py [--repeat 3] [--samples 40] [--check]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from lus_pacs.families.segmentation.inference import SegmentationModel
from lus_pacs.families.segmentation.network import mc_dropout_predict
from lus_pacs.timing import side_by_side

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
    median = side_by_side(runs, args.repeat)
    print(f"threads {torch.get_num_threads()}, {args.samples} MC-dropout passes, 200 x 260 frame")
    for name, seconds in median.items():
        print(f"  {name:14s} {seconds:7.2f} s per frame")
    speedup = median["mc one by one"] / median["mc batched"]
    default = inspect.signature(mc_dropout_predict).parameters["batch"].default
    print(
        f"batched is {speedup:.2f}x the speed of one by one; the default (batch={default}) "
        f"should be batched only at >= {MIN_SPEEDUP}x"
    )
    if args.check and (speedup >= MIN_SPEEDUP) != (default > 1):
        sys.exit(1)


if __name__ == "__main__":
    main()
