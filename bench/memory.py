"""Peak memory of the node's whole analysis (decode, every default model, the result objects)
on two long cines (issue 19, case 5), side by side with the baseline:

* ``chunked``: the node as it is: JPEG frames decoded into the cine's array a batch at a
  time, the encoded Pixel Data released once decoded, every model's pre-processing taken to
  float at most ``CHUNK_FRAMES`` frames at once, the B-line windows scored 8 at a time;
* ``whole``: the same code with the pre-processing taken to float for the whole cine at once
  (``CHUNK_FRAMES`` = the cine's length), as before the fix.

Each run is a fresh Python process (its peak resident set, ``VmHWM``); the cines are JPEG
US Multi-frame of textured frames: 300 frames of 1920 x 1080 and 1000 frames of 640 x 480.
Issue 19 measured main f29e146 at 7.0 GB and 4.6 GB on them; the target is under 1.5 GB.

    .venv/bin/python bench/memory.py [--only 640x480]
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
from lus_pacs.pipeline import Models, analyse, encode
from lus_pacs.settings import Settings
path, chunk = Path(sys.argv[1]), int(sys.argv[2])
transforms.CHUNK_FRAMES = chunk
settings = Settings()
models = Models.load(settings)
header = pydicom.dcmread(path)
findings = analyse(header, path.name, models, settings)
objects = encode(findings, header, settings.output_kinds, models.key, {})
# VmHWM, this process's own peak: ru_maxrss would also count the parent's peak before fork.
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(int(peak) * 1024, len(objects))
"""


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


def _peak(path: Path, chunk: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(path), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_bytes, _ = done.stdout.split()[-2:]
    return int(peak_bytes) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CINES))
    args = parser.parse_args()
    from lus_pacs.inference.transforms import CHUNK_FRAMES

    with tempfile.TemporaryDirectory() as tmp:
        for name, (frames, rows, cols) in CINES.items():
            if args.only and name != args.only:
                continue
            path = Path(tmp) / f"{name}.dcm"
            _cine(path, frames, rows, cols)
            raw = frames * rows * cols / 1e9
            chunked = _peak(path, CHUNK_FRAMES)
            whole = _peak(path, frames)
            print(
                f"{frames} frames of {name} (JPEG {path.stat().st_size / 1e6:.0f} MB, "
                f"luminance {raw:.2f} GB): peak {chunked:.3f} GB chunked, {whole:.2f} GB "
                f"whole-cine pre-processing (issue 19 on f29e146: {BEFORE_GB[name]:.1f} GB); "
                f"chunked / whole = {chunked / whole:.2f}"
            )


if __name__ == "__main__":
    main()
