"""Throughput of ``lus-pacs reprocess`` on a folder of simulated cines, side by side:

* ``local 1``: the local engine with one worker process (the baseline);
* ``local 2``: the local engine with two worker processes;
* ``ray 2``: a local Ray with two model-holding actors.

Each run re-processes the same cines into a fresh folder (nothing skipped), after the engine has
started and loaded its models on a warm-up cine, so the figure is the steady state a long archive
run sees; the time stops at the last cine written, before the engine shuts down (a process
pool takes about a second to join its workers). Printed: cines per minute of each and its ratio
to ``local 1``.

    .venv/bin/python bench/reprocess.py [--patients 2] [--zones 6] [--frames 30]
        [--models b_lines,severity]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from lus_pacs.ingest.archive import open_source
from lus_pacs.pipeline import Models
from lus_pacs.reprocess.engine import Engine, WorkItem, make_engine
from lus_pacs.reprocess.run import Run
from lus_pacs.settings import load_settings
from lus_pacs.synth.exam import SynthOptions, synthesize

RUNS = (("local 1", "local", 1), ("local 2", "local", 2), ("ray 2", "ray", 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--zones", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--models", default="b_lines,severity")
    args = parser.parse_args()

    settings = load_settings(None, models=tuple(args.models.split(",")))
    key = Models.load(settings).key
    with tempfile.TemporaryDirectory(prefix="lus-pacs-bench-") as tmp:
        root = Path(tmp)
        options = SynthOptions(
            patients=args.patients, seed=11, frames=args.frames, zones=args.zones
        )
        synthesize(root / "archive", options)
        synthesize(root / "warm-up", SynthOptions(patients=1, seed=12, frames=args.frames, zones=6))
        cines = len(list((root / "archive").rglob("*.dcm")))
        print(f"{cines} cines of {args.frames} frames, models {key}")
        rates: dict[str, float] = {}
        for label, kind, workers in RUNS:
            engine = make_engine(kind, settings, workers)
            engine.start()
            _warm_up(engine, root / "warm-up")
            out = root / f"out-{kind}-{workers}"
            run = Run(
                settings, open_source(str(root / "archive")), out, engine, key, progress=False
            )
            counts = run.execute()
            seconds = counts.seconds  # from the first study listed to the last cine written
            if counts.processed != cines or counts.failed:
                raise SystemExit(
                    f"{label}: {counts.processed} of {cines} processed, {counts.failed} failed"
                )
            rates[label] = 60.0 * cines / seconds
            shutil.rmtree(out, ignore_errors=True)
        base = rates["local 1"]
        print(f"{'engine':<10}{'cines/min':>11}{'ratio':>8}")
        for label, rate in rates.items():
            print(f"{label:<10}{rate:>11.1f}{rate / base:>7.2f}x")


def _warm_up(engine: Engine, folder: Path) -> None:
    """Start the engine's workers and load their models, one cine each, untimed."""
    paths = sorted(folder.rglob("*.dcm"))[: engine.workers]
    items = [WorkItem(f"warm-{i}", "warm", p) for i, p in enumerate(paths)]
    for outcome in engine.run(items):
        if outcome.error:
            raise SystemExit(f"warm-up failed: {outcome.error}")


if __name__ == "__main__":
    main()
