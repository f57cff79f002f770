"""The node's findings on real clips with ONNX Runtime against eager PyTorch (issue 20, Build 1):
every default family on every ``--step``-th real clip of ``--data`` (the trainable POCUS clips
and the evaluation-only ones, imported to DICOM as ``lus-pacs evaluate real`` does), once per
runtime, compared with :func:`lus_pacs.inference.runtime.differences` (floats within 1e-4,
decisions, frames and masks exactly). Prints each clip that differs and what, then the count.

    .venv/bin/python bench/runtime_equivalence.py --data ../shared/data [--step 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lus_pacs.inference.runtime import Runtime, differences
from lus_pacs.settings import Settings
from lus_pacs.training.real import real_clips
from lus_pacs.training.real_evaluation import shipped_findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/real-cache"))
    parser.add_argument("--step", type=int, default=5, help="every k-th clip")
    args = parser.parse_args()
    clips = real_clips(args.data)[:: args.step]
    found = {}
    for runtime in Runtime:
        start = time.perf_counter()
        found[runtime] = shipped_findings(
            clips, args.data, args.cache, Settings(runtime=runtime.value)
        )
        print(f"{runtime.value}: {len(clips)} clips in {time.perf_counter() - start:.0f} s")
    differing = 0
    for clip in clips:
        gaps = differences(found[Runtime.TORCH][clip.name], found[Runtime.ONNX][clip.name])
        if gaps:
            differing += 1
            print(f"{clip.name}: " + "; ".join(gaps[:5]))
    print(f"{len(clips) - differing} of {len(clips)} real clips with the same findings on both")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
