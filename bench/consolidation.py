"""Cost of the consolidation model on one cine on this machine, side by side:

* ``classify``: presence and probability only (``saliency_frames = 0``; the baseline);
* ``gradient``: the same plus gradient x input boxes on the node's default 2 frames (default);
* ``occlusion``: the same with occlusion-saliency boxes (the method before issue 20).

They run alternately ``--repeat`` times in one process on a simulated cine with a
consolidation (so the boxes are made); the median seconds per cine and the ratio of each to
``classify`` are printed.

    .venv/bin/python bench/consolidation.py [--repeat 3] [--frames 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from lus_pacs.families.consolidation.inference import ConsolidationModel
from lus_pacs.imaging.decode import read_cine
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.timing import side_by_side

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "consolidation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        options = SynthOptions(patients=2, seed=2002, frames=args.frames, zones=6)
        synthesize(Path(tmp), options)
        truths = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*/*.truth.json"))]
        truth = next(t for t in truths if t["clip"]["consolidation"])
        cine = read_cine(Path(tmp) / truth["patient_id"] / truth["file"])

    model = ConsolidationModel.load(BUNDLE)
    runs = {
        "classify": replace(model, saliency_frames=0),
        "gradient": replace(model, saliency_frames=2, saliency_method="gradient"),
        "occlusion": replace(model, saliency_frames=2, saliency_method="occlusion"),
    }
    median = side_by_side({k: partial(m.predict, cine) for k, m in runs.items()}, args.repeat)
    print(f"threads {torch.get_num_threads()}, {cine.n_frames}-frame simulated cine")
    for name, seconds in median.items():
        print(f"  {name:9s} {seconds:6.2f} s per cine")
    for name in ("gradient", "occlusion"):
        print(f"{name} boxes cost {median[name] / median['classify']:.0f}x classification")


if __name__ == "__main__":
    main()
