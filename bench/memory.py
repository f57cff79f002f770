"""Peak memory of the node's whole analysis (decode, every default model, the result objects)
on two long cines (issue 19, case 5), side by side with the baseline:

* ``node``: the node as it is: the header read without the Pixel Data, the encoded JPEG
  frames read from the file and decoded into the cine's array a batch at a time (never all in
  memory), every model's pre-processing taken to float at most ``CHUNK_FRAMES`` frames at
  once, the B-line windows scored 8 at a time;
* ``63fc2fc``: the node's reading as at that commit: the whole file read into memory first
  (its Pixel Data released once decoded) and the B-line pre-processing taken to float 4 frames
  at a time;
* ``whole``: the same with the B-line pre-processing taken to float for the whole cine at
  once (``CHUNK_FRAMES`` = the cine's length), as before the first fix.

Both baselines run today's models otherwise: paper 003's input is made one frame at a time and
the key-frame and severity inputs a batch at a time whatever ``CHUNK_FRAMES`` says (issue 20),
so they show less than those commits used. Every run sets up its process as ``lus-pacs serve``
does (``prepare_workers``: one worker's share of the cores, glibc's malloc kept compact).

Each run is a fresh Python process (its peak resident set, ``VmHWM``); the cines are JPEG
US Multi-frame of textured frames: 300 frames of 1920 x 1080 and 1000 frames of 640 x 480.
Issue 19 measured main f29e146 at 7.0 GB and 4.6 GB on them; the target is under 1.5 GB.

    .venv/bin/python bench/memory.py [--only 640x480] [--no-whole] [--together]

``--together`` then hands both cines at once to the node's workers (two by default, each with
its share of the cores, glibc's malloc kept compact, as ``lus-pacs serve`` runs them): once
within the node's pixel budget (``concurrent_pixels``: the long cines run one at a time) and
once without it (side by side).
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom

from lus_pacs.imaging.writer import (
    CineInstance,
    CineSyntax,
    Equipment,
    StudyIdentity,
    write_us_cine,
)

CINES = {"1920x1080": (300, 1080, 1920), "640x480": (1000, 480, 640)}
BEFORE_GB = {"1920x1080": 7.0, "640x480": 4.6}
"""Issue 19's figures on main f29e146."""

RUN = """
import sys
from pathlib import Path
import pydicom
from lus_pacs.inference import transforms
from lus_pacs.inference.threads import prepare_workers
from lus_pacs.settings import Settings
prepare_workers(Settings().workers)  # as lus-pacs serve: one worker's share of the cores
from lus_pacs.pipeline import Models, analyse, encode
from lus_pacs.settings import Settings
from lus_pacs.imaging.decode import read_header
path, chunk, stream = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stream"
transforms.CHUNK_FRAMES = chunk
settings = Settings()
models = Models.load(settings)
header, in_file = read_header(path) if stream else (pydicom.dcmread(path), None)
findings = analyse(header, path.name, models, settings, in_file)
objects = encode(findings, header, settings.output_kinds, models.key, {})
# VmHWM, this process's own peak: ru_maxrss would also count the parent's peak before fork.
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(int(peak) * 1024, len(objects))
"""


TOGETHER = """
import sys, tempfile, threading
from pathlib import Path
from lus_pacs.inference.threads import prepare_workers
from lus_pacs.settings import Settings
settings = Settings(concurrent_pixels=int(sys.argv[1]), data_dir=tempfile.mkdtemp())
prepare_workers(settings.workers)  # as lus-pacs serve
from lus_pacs.imaging.decode import read_header
from lus_pacs.node import stored_pixels
from lus_pacs.pipeline import Models, analyse, encode, warm_up
from lus_pacs.queue.budget import PixelBudget
from lus_pacs.inference.threads import release_free_memory
models = Models.load(settings)
warm_up(models, settings)  # as a started node
budget = PixelBudget(settings.concurrent_pixels)
def run(path):  # a node worker's cine: within the pixel budget, as Node._process
    pixels = stored_pixels(path)
    with budget.hold(pixels):
        header, in_file = read_header(path)
        findings = analyse(header, path.name, models, settings, in_file)
        encode(findings, header, settings.output_kinds, models.key, {})
        del header, in_file, findings
        if budget.is_long(pixels):
            release_free_memory()
workers = [threading.Thread(target=run, args=(Path(p),)) for p in sys.argv[2:]]
for w in workers: w.start()
for w in workers: w.join()
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(int(peak) * 1024)
"""
"""Both cines handed to the node's workers at once (``--together``)."""


def _together(paths: list[Path], concurrent_pixels: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", TOGETHER, str(concurrent_pixels), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1]) / 1e9


def _cine(path: Path, frames: int, rows: int, cols: int) -> None:
    """A JPEG cine of a textured sector-like image that moves a little from frame to frame."""
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, size=(rows, cols), dtype=np.uint8)
    base[: rows // 10] = 0  # a dark band above the image, as scanners leave
    pixels = np.empty((frames, rows, cols), np.uint8)
    for i in range(frames):
        pixels[i] = np.roll(base, shift=i % 7, axis=0)
    study = StudyIdentity(
        patient_id="BENCH",
        patient_name="Bench^Memory",
        study_instance_uid=pydicom.uid.generate_uid(),
        study_date=dt.date(2026, 12, 5),
        study_time=dt.time(9, 0),
        study_id="1",
        accession_number="B1",
    )
    instance = CineInstance(
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=1,
        series_description="Lung R1",
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        fps=30.0,
        acquisition_datetime=dt.datetime(2026, 12, 5, 9, 0),
    )
    equipment = Equipment("bench", "bench", "1", "1")
    write_us_cine(
        path, pixels, study=study, instance=instance, equipment=equipment, syntax=CineSyntax.JPEG
    )


def _peak(path: Path, chunk: int, stream: bool) -> float:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(path), str(chunk), "stream" if stream else "read"],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_bytes, _ = done.stdout.split()[-2:]
    return int(peak_bytes) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CINES))
    parser.add_argument(
        "--no-whole", action="store_true", help="skip the whole-cine baseline (13 GB at 1080p)"
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="also both cines at once on the node's two workers, with and without its budget",
    )
    args = parser.parse_args()
    if args.together and args.only:
        parser.error("--together needs both cines: leave out --only")
    from lus_pacs.inference.transforms import CHUNK_FRAMES
    from lus_pacs.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        for name, (frames, rows, cols) in CINES.items():
            if args.only and name != args.only:
                continue
            path = Path(tmp) / f"{name}.dcm"
            _cine(path, frames, rows, cols)
            raw = frames * rows * cols / 1e9
            node = _peak(path, CHUNK_FRAMES, stream=True)
            in_memory = _peak(path, 4, stream=False)
            whole = _peak(path, frames, stream=False) if not args.no_whole else float("nan")
            print(
                f"{frames} frames of {name} (JPEG {path.stat().st_size / 1e6:.0f} MB, "
                f"luminance {raw:.2f} GB): peak {node:.3f} GB node, {in_memory:.3f} GB as at "
                f"63fc2fc, {whole:.2f} GB whole-cine pre-processing (issue 19 on f29e146: "
                f"{BEFORE_GB[name]:.1f} GB; target 1.5); node / 63fc2fc = "
                f"{node / in_memory:.2f}, node / whole = {node / whole:.2f}"
            )
        if args.together:
            paths = [Path(tmp) / f"{name}.dcm" for name in CINES]
            budget = Settings().concurrent_pixels
            kept = _together(paths, budget)
            unbounded = _together(paths, 10**12)
            print(
                f"both cines handed to the node's {Settings().workers} workers at once: peak "
                f"{kept:.3f} GB within its pixel budget ({budget / 1e6:.0f} M: one at a time), "
                f"{unbounded:.3f} GB side by side (target 1.5)"
            )


if __name__ == "__main__":
    main()
