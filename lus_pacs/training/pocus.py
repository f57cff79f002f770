"""The real POCUS clips (COVID-19 POCUS dataset, 130 labelled lung-ultrasound videos) for training
and validating the clip-level models.

Clips reach the models the way scanner data does: each video is imported once as an RLE lossless
US Multi-frame instance into a cache folder (no second lossy step after the video codec), and
read back with :func:`lus_pacs.imaging.decode.read_cine`.

Split by :attr:`PocusClip.group`, never by frame or clip: see :func:`source_group`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TypeVar

from lus_pacs.domain import Cine
from lus_pacs.errors import AnnotationError
from lus_pacs.imaging.decode import read_cine
from lus_pacs.imaging.writer import CineSyntax
from lus_pacs.ingest.video import ImportReport, import_video, import_videos


class PocusLabel(StrEnum):
    COVID = "COVID-19"
    BACTERIAL = "Bacterial pneumonia"
    VIRAL = "Viral pneumonia"
    REGULAR = "regular"
    """Healthy lung."""


class Probe(StrEnum):
    CONVEX = "convex"
    LINEAR = "linear"


FINDINGS = (
    "b_lines",
    "consolidations",
    "effusion",
    "a_lines",
    "pleural_irregularities",
    "air_bronchogram",
    "healthy",
)
"""The finding columns of labels.csv, in order."""

_COLUMNS = ("file", "label", "probe", "source", "license", "fps", "resolution", *FINDINGS)

# The publisher or site behind each clip, found in the file name. The sheet's `source` column
# cannot serve: it holds the folder the clip sat in upstream (data/pocus_videos/Convex,
# pocus_videos/convex, ...), which says when a clip was added, not where it came from, and puts
# clips of one hospital on both sides of a split. The names were checked against the upstream
# metadata sheet (jannisborn/covid19_ultrasound, data/dataset_metadata.csv, "Source ID" and URL):
# "Avi" clips and "northumbria" clips are both from Northumbria Specialist Emergency Care
# Hospital, LITFL is spelt three ways, Reg_Image_* and Reg_pat*Image_* are one contributor's own
# recordings. First match wins, on the lower-case file stem.
_PUBLISHERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("pocusatlas", re.compile(r"atlas")),
    ("litfl", re.compile(r"litfl|liftl|rippey|basal-pneumonia-ruq")),
    ("northumbria", re.compile(r"northumbria|_avi_")),
    ("charlotte", re.compile(r"^reg_(pat\d+)?image_\d")),
    ("stemlynsblog", re.compile(r"combatting")),
    ("radiopaedia", re.compile(r"radiopa|normallungs")),
    ("volpicelli-ultrasoundj-2020", re.compile(r"volpecelli|volpicelli")),
    ("denault", re.compile(r"denault")),
    ("recommendations-ultrasoundj-2020", re.compile(r"recommendations")),
    ("prospective-critultrasoundj-2012", re.compile(r"prospective")),
    ("h1n1-critcare-2012", re.compile(r"whitelung")),
    # Evaluation-only clips (../pocus-extra, its README): GrepMed's under four spellings, one
    # journal article's three "advancesVid" clips.
    ("grepmed", re.compile(r"grep|gred")),
    ("emergmed-clinics-2015", re.compile(r"advancesvid")),
)
_BY_PATH = {
    "videos/linear/reg-nephropocus.mp4": "everydayultrasound",
    "videos/linear/reg-normallung.mp4": "criticalcarenorthampton",
    "videos/linear/reg-minimalmovement.mp4": "criticalcarenorthampton",
    "videos/convex/reg_alines-1-90.mov": "bja-education",
    "videos/convex/pneu_air bronc2.mov": "bja-education",
}
"""Evaluation-only clips whose file name does not name their publisher (pocus-extra's README
and the upstream sheet's URLs: the linear Reg-nephropocus is everydayultrasound.com's, the
convex one nephropocus's; two clips of criticalcarenorthampton.com; two of one BJA Education
article, one video library)."""
_CLASS_PREFIX = re.compile(r"^(cov|pneu|reg|vir)[-_+ ]+", re.IGNORECASE)

_CACHE_SYNTAX = CineSyntax.RLE

_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True)
class PocusClip:
    """One row of labels.csv."""

    file: str
    """Path below the dataset folder, with forward slashes."""
    label: PocusLabel
    probe: Probe
    source: str
    """The sheet's ``source`` column: the upstream folder, not the publisher (see ``group``)."""
    license: str
    fps: float
    """Frame rate as recorded in the sheet."""
    resolution: tuple[int, int]
    """(width, height) as recorded in the sheet."""
    b_lines: bool | None
    consolidations: bool | None
    effusion: bool | None
    a_lines: bool | None
    pleural_irregularities: bool | None
    air_bronchogram: bool | None
    healthy: bool | None
    group: str
    """The publisher or site of the clip (:func:`source_group`): the key to split by."""
    severity: int | None = None
    """The dataset's lung severity score 0-3 (Gare et al., 2022); None when not scored."""
    device: str = ""
    """The scanner, where the sheet names one (``Butterfly iQ``); empty otherwise."""
    weak_labels: bool = False
    """The finding flags come from the file name, not from an annotator (Bolzano clips)."""


def source_group(file: str) -> str:
    """The publisher or site that a POCUS clip came from, from its file name.

    Known publishers have fixed names (``pocusatlas``, ``litfl``, ``northumbria``, ...); any
    other file gets the first word after its class prefix (``Cov-youtube-3.mp4`` -> ``youtube``).
    """
    if group := _BY_PATH.get(file.lower()):
        return group
    stem = PurePosixPath(file).stem.lower()
    for group, pattern in _PUBLISHERS:
        if pattern.search(stem):
            return group
    words = re.split(r"[-_+ ()]+", _CLASS_PREFIX.sub("", stem))
    return next((word for word in words if word), stem)


def read_labels(csv_path: Path) -> list[PocusClip]:
    """The rows of the dataset's labels.csv.

    Raises
    ------
    AnnotationError
        A column is missing or a value cannot be read; the message names the line and column.
    """
    if not csv_path.is_file():
        raise AnnotationError(f"{csv_path}: no labels sheet (is --data the folder above pocus/?)")
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise AnnotationError(f"{csv_path}: missing columns {', '.join(missing)}")
        return [_clip(row, csv_path, reader.line_num) for row in reader]


def cache_clips(
    clips: Iterable[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    *,
    progress: bool = True,
    workers: int = 1,
) -> ImportReport:
    """Import every clip not yet in ``cache_dir`` (``workers`` at once); refusals are
    reported, not raised."""
    return import_videos(
        [pocus_dir / clip.file for clip in clips],
        cache_dir,
        syntax=_CACHE_SYNTAX,
        monochrome=True,
        reuse_existing=True,
        progress=progress,
        workers=workers,
    )


def import_clip(clip: PocusClip, pocus_dir: Path, cache_dir: Path) -> Path:
    """The clip's DICOM import in ``cache_dir`` (made on first use).

    Raises
    ------
    UnreadableImageError
        The video cannot be read.
    """
    return import_video(
        pocus_dir / clip.file,
        cache_dir,
        syntax=_CACHE_SYNTAX,
        monochrome=True,
        reuse_existing=True,
    )


def load_clip(clip: PocusClip, pocus_dir: Path, cache_dir: Path) -> Cine:
    """The clip as the pipeline sees it: imported once into ``cache_dir``, then decoded.

    Raises
    ------
    UnreadableImageError
        The video cannot be read.
    """
    return read_cine(import_clip(clip, pocus_dir, cache_dir))


def _clip(row: Mapping[str, str], csv_path: Path, line: int) -> PocusClip:
    def fail(column: str, expected: str) -> AnnotationError:
        return AnnotationError(
            f"{csv_path}: line {line}, column {column!r} is {row[column]!r}; expected {expected}"
        )

    def enum(column: str, kind: type[_E]) -> _E:
        try:
            return kind(row[column].strip())
        except ValueError:
            raise fail(column, "one of " + ", ".join(repr(k.value) for k in kind)) from None

    def finding(column: str) -> bool | None:
        value = row[column].strip()
        if value not in ("", "0", "1"):
            raise fail(column, "1 (present), 0 (absent) or empty (not recorded)")
        return None if value == "" else value == "1"

    severity_text = (row.get("severity") or "").strip()
    if severity_text not in ("", "0", "1", "2", "3"):
        raise fail("severity", "0, 1, 2, 3 or empty (not scored)")
    try:
        fps = float(row["fps"])
    except ValueError:
        raise fail("fps", "a number") from None
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", row["resolution"])
    if size is None:
        raise fail("resolution", "WIDTHxHEIGHT such as 640x480")
    file = row["file"].strip()
    return PocusClip(
        file=file,
        label=enum("label", PocusLabel),
        probe=enum("probe", Probe),
        source=row["source"].strip(),
        license=row["license"].strip(),
        fps=fps,
        resolution=(int(size[1]), int(size[2])),
        b_lines=finding("b_lines"),
        consolidations=finding("consolidations"),
        effusion=finding("effusion"),
        a_lines=finding("a_lines"),
        pleural_irregularities=finding("pleural_irregularities"),
        air_bronchogram=finding("air_bronchogram"),
        healthy=finding("healthy"),
        group=source_group(file),
        severity=int(severity_text) if severity_text else None,
        device=(row.get("device") or "").strip(),
        weak_labels="file name" in (row.get("label_origin") or ""),
    )
