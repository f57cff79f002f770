"""How the node's processing compares with the time the cines last (issue 20), per stage.

A simulated 6-zone exam of 60-frame 640 x 480 cines at 30 fps (12 s of cine) goes through every
default model as the node runs them (``process_file``: read, decode, each family, the result
objects made and written), in a fresh process; it prints each stage's mean milliseconds per
cine, the processing time against the cine time (the real-time factor; real time is 1.0) and the
process's peak memory.

Issue 20 asks for the eager path and a faster inference runtime side by side; the runtime is
not built yet, so this prints the eager path only, the baseline that runtime must beat by 8x.

    .venv/bin/python bench/realtime.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lus_pacs.synth.exam import SynthOptions, synthesize

ZONES, FRAMES, FPS = 6, 60, 30.0

RUN = """
import json, sys, time
from pathlib import Path
from lus_pacs.pipeline import Models, process_file
from lus_pacs.settings import Settings
settings = Settings()
models = Models.load(settings)
timings = []
started = time.perf_counter()
for path in sys.argv[2:]:
    record, _ = process_file(Path(path), models, settings, Path(sys.argv[1]))
    timings.append(dict(record.timings_ms))
elapsed = time.perf_counter() - started
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(json.dumps({"timings": timings, "elapsed_s": elapsed, "peak_bytes": int(peak) * 1024}))
"""


def _run(cines: list[Path], out: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(out), *map(str, cines)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        records = synthesize(
            Path(tmp) / "exam", SynthOptions(patients=1, seed=20, zones=ZONES, frames=FRAMES)
        )
        cines = [r.dicom for r in records]
        result = _run(cines, Path(tmp) / "out")
    timings = result["timings"]
    assert isinstance(timings, list)
    stages = list(timings[0])
    cine_s = len(cines) * FRAMES / FPS
    elapsed = float(str(result["elapsed_s"]))
    print(f"{len(cines)} cines of {FRAMES} frames 640x480 at {FPS:g} fps ({cine_s:g} s of cine)")
    print("stage             mean ms per cine")
    for stage in stages:
        mean = sum(t.get(stage, 0.0) for t in timings) / len(timings)
        print(f"  {stage:<16}{mean:10.0f}")
    peak = float(str(result["peak_bytes"])) / 1e9
    print(f"peak memory {peak:.2f} GB")
    print(
        f"eager: {elapsed:.1f} s of processing for {cine_s:g} s of cine: real-time factor "
        f"{elapsed / cine_s:.2f} (target 0.50; the runtime column comes with the runtime)"
    )


if __name__ == "__main__":
    main()
