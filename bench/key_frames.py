"""Cost of the key-frame model on one cine on this machine, side by side with the B-line model
(the baseline: the node's lightest model that also looks at every frame).

Both run alternately ``--repeat`` times in one process on a simulated cine; the median seconds
per cine and the ratio of the key-frame model to the B-line model are printed.

    .venv/bin/python bench/key_frames.py [--repeat 3] [--frames 60]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lus_pacs.families.b_lines.inference import BLineModel
from lus_pacs.families.key_frames.inference import KeyFrameModel
from lus_pacs.imaging.decode import read_cine
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.timing import side_by_side

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), SynthOptions(patients=1, seed=11, frames=args.frames, zones=6))
        cine = read_cine(sorted(Path(tmp).glob("*/*.dcm"))[0])

    key_frames = KeyFrameModel.load(MODELS / "key_frames")
    b_lines = BLineModel.load(MODELS / "b_lines")
    runs: dict[str, Callable[[], object]] = {
        "b_lines": lambda: b_lines.predict(cine, 30.0),
        "key_frames": lambda: key_frames.predict(cine),
    }
    median = side_by_side(runs, args.repeat)
    print(f"threads {torch.get_num_threads()}, {cine.n_frames}-frame simulated cine")
    for name, seconds in median.items():
        per_frame = seconds / cine.n_frames * 1000
        print(f"  {name:10s} {seconds:6.2f} s per cine ({per_frame:.0f} ms a frame)")
    print(f"key frames cost {median['key_frames'] / median['b_lines']:.1f}x the B-line model")


if __name__ == "__main__":
    main()
