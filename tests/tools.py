"""Real command-line tools the tests drive: the project's own CLI and dciodvfy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from lus_pacs.validate import dciodvfy


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``lus-pacs`` command (the console script beside this Python); with
    ``check`` false a failing command is returned, not raised, for tests of its exit."""
    exe = Path(sys.executable).with_name("lus-pacs")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=check)


def refused_by_cli(*args: str, saying: str) -> None:
    """``lus-pacs args`` ends with exit status 2 and one line ``saying`` what is wrong, no
    traceback (a user's error, :func:`lus_pacs.cli.main`)."""
    done = run_cli(*args, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert saying in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines dciodvfy reports as errors (it exits 0 even when there are some)."""
    return dciodvfy(path).errors


POCUS_HEADER = (
    "file,label,probe,source,license,fps,resolution,b_lines,consolidations,effusion,a_lines,"
    "pleural_irregularities,air_bronchogram,healthy,severity"
)
"""The columns of ``pocus/labels.csv``."""


def measured_pocus(
    root: Path, rows: list[str], names: list[str], features: Any
) -> tuple[Path, Path]:
    """A ``pocus/labels.csv`` of ``rows`` under ``root/data`` and a measurement cache under
    ``root/cache`` that holds every clip's measurements already (``features``, in the order of
    ``names``): a fit reads them and never the (absent) videos. Returns (data, cache)."""
    import numpy as np

    from lus_pacs.inference.lung_features import CLIP_FEATURES
    from lus_pacs.training.real import feature_table_name

    data = root / "data"
    (data / "pocus").mkdir(parents=True)
    (data / "pocus" / "labels.csv").write_text("\n".join([POCUS_HEADER, *rows]) + "\n")
    cache = root / "cache"
    cache.mkdir()
    np.savez(
        cache / feature_table_name(),
        names=np.array(names),
        features=features,
        columns=np.array(CLIP_FEATURES),
    )
    return data, cache


def write_cine(path: Path, frames: Any, syntax: str, **kwargs: Any) -> Path:
    """``frames`` written as a US Multi-frame cine of a one-cine test study (``syntax`` a
    :class:`~lus_pacs.imaging.writer.CineSyntax` value); ``kwargs`` go to ``write_us_cine``
    (``regions``, ``jpeg_quality``)."""
    import datetime as dt

    import pydicom

    from lus_pacs.imaging.writer import (
        CineInstance,
        CineSyntax,
        Equipment,
        StudyIdentity,
        write_us_cine,
    )

    study = StudyIdentity(
        patient_id="P1",
        patient_name="Test^Patient",
        study_instance_uid=pydicom.uid.generate_uid(),
        study_date=dt.date(2026, 1, 1),
        study_time=dt.time(9, 0),
        study_id="1",
        accession_number="A1",
    )
    instance = CineInstance(
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=1,
        series_description="Lung L3",
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        fps=25.0,
        acquisition_datetime=dt.datetime(2026, 1, 1, 9, 0),
    )
    equipment = Equipment("test", "test", "1", "1")
    write_us_cine(
        path,
        frames,
        study=study,
        instance=instance,
        equipment=equipment,
        syntax=CineSyntax(syntax),
        **kwargs,
    )
    return path


def chosen_frames(record: dict[str, Any]) -> set[int]:
    """Every frame a cine's record presents as chosen: key frames, the B-line and severity key
    frames, the segmented frames."""
    chosen = {k["frame"] for k in record["key_frames"]}
    if record.get("b_lines") and record["b_lines"]["key_frame"]:
        chosen.add(record["b_lines"]["key_frame"])
    if record.get("severity"):
        chosen.add(record["severity"]["top_frame"])
    if record.get("segmentation"):
        chosen.update(record["segmentation"]["frames"])
    return chosen
