"""What the archive sources share: the study they list, the interface they meet, how they
choose and sort studies, and how a fetched instance is named and written."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from lus_pacs.durable import durable_file

UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
"""A UID as PS3.5 allows it: it names files and URL paths, so nothing else gets through."""


@dataclass(frozen=True)
class ArchiveStudy:
    """One study as the archive lists it."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    """DICOM DA ``YYYYMMDD``, or ``""`` when the archive does not know it."""
    description: str
    """StudyDescription, or ``""``."""


class ArchiveSource(Protocol):
    """Where ``lus-pacs reprocess`` finds ultrasound studies and brings their images from."""

    name: str
    """For logs and the manifest: ``folder:/data/x``, ``dimse:PACS@host:104``,
    ``dicomweb:http://host/dicom-web``."""
    skipped: tuple[tuple[str, str], ...]
    """The files the last :meth:`studies` could not take as an instance of a study, and why
    (a folder's damaged or unnamed files: their study is unknown); none for a network archive,
    whose instances are named by the archive (what fails there fails its study)."""

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        """The ultrasound studies, sorted by (study date, Study Instance UID); with ``since``,
        only those with a StudyDate on or after it (a study with no date is then left out)."""
        ...

    def listed_instances(self, study: ArchiveStudy) -> frozenset[str] | None:
        """The SOP Instance UIDs of ``study``'s images that the last :meth:`studies` saw, when
        it saw them (a folder, whose files it reads); None when knowing them would take a query
        of its own (a network archive)."""
        ...

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image instances as DICOM Part 10 files, sorted by path; non-image
        instances (earlier SR, SEG, KOS results) are skipped."""
        ...


def dataset_study(ds: Dataset) -> ArchiveStudy:
    """The study a header or a C-FIND answer names."""
    return ArchiveStudy(
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_date=dicom_date(str(ds.get("StudyDate", "") or "")),
        description=str(ds.get("StudyDescription", "") or ""),
    )


def dicom_date(value: str) -> str:
    """DICOM DA as YYYYMMDD, from the ACR-NEMA YYYY.MM.DD too; "" when it is neither."""
    digits = value.strip().replace(".", "")
    return digits if re.fullmatch(r"[0-9]{8}", digits) else ""


def select(studies: Iterable[ArchiveStudy], since: datetime.date | None) -> list[ArchiveStudy]:
    """Studies from ``since`` on (checked here too, as archives match dates loosely), sorted."""
    first = f"{since:%Y%m%d}" if since else ""
    chosen = [s for s in studies if s.study_instance_uid and (not first or s.study_date >= first)]
    return sorted(chosen, key=lambda s: (s.study_date, s.study_instance_uid))


def select_ultrasound(
    answers: Iterable[tuple[Sequence[str], ArchiveStudy]], since: datetime.date | None
) -> list[ArchiveStudy]:
    """The studies of a study-level query, given with their ModalitiesInStudy, that hold US (or
    do not say), the first answer for each UID, then :func:`select`-ed."""
    found: dict[str, ArchiveStudy] = {}
    for modalities, study in answers:
        # Checked here too: an archive may ignore a matching key it does not support.
        if not modalities or "US" in modalities:
            found.setdefault(study.study_instance_uid, study)
    return select(found.values(), since)


def instance_path(folder: Path, sop: str) -> Path:
    """Where a fetched instance is written: named by its SOP Instance UID."""
    return folder / f"{sop}.dcm"


def write_instance(folder: Path, sop: str, data: bytes) -> Path:
    """``data`` written durably at :func:`instance_path`; raises OSError if it cannot be."""
    path = instance_path(folder, sop)
    with durable_file(path) as f:
        f.write(data)
    return path
