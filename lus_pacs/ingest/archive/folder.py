"""Studies in a folder tree or on DICOMDIR media, read where they lie."""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lus_pacs.dicom_vocabulary import IMAGE_SOP_CLASSES, is_uid
from lus_pacs.errors import ArchiveError
from lus_pacs.ingest.archive.common import ArchiveStudy, dataset_study, select

logger = logging.getLogger(__name__)


class FolderSource:
    """Studies in a folder tree or on DICOMDIR media.

    A folder is scanned recursively for ``*.dcm`` files and files with no extension or a
    numeric one (files named by their UID); a DICOMDIR's referenced files are read. Only
    headers are read, up to the pixel data. Thread-safe.
    """

    def __init__(self, path: Path) -> None:
        path = path.expanduser().absolute()
        self.name = f"folder:{path}"
        if path.is_file():
            try:
                directory = dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError) as exc:
                raise ArchiveError(self.name, f"not a DICOMDIR ({exc})") from exc
            meta = directory.get("file_meta", Dataset())
            if meta.get("MediaStorageSOPClassUID") != "1.2.840.10008.1.3.10":
                raise ArchiveError(self.name, "not a DICOMDIR: give a folder or a DICOMDIR file")
        elif not path.is_dir():
            raise ArchiveError(self.name, "no such folder or DICOMDIR")
        self.path = path
        self._lock = threading.Lock()
        self._index: dict[str, list[tuple[Path, str, ArchiveStudy]]] | None = None
        self.skipped: tuple[tuple[str, str], ...] = ()

    def studies(self, since: datetime.date | None = None) -> list[ArchiveStudy]:
        """Scans the folder again; the studies are those with an instance of an image class."""
        index = self._scan()
        return select([instances[0][2] for instances in index.values()], since)

    def listed_instances(self, study: ArchiveStudy) -> frozenset[str] | None:
        with self._lock:
            index = self._index
        if index is None:
            return None
        return frozenset(sop for _, sop, _ in index.get(study.study_instance_uid, ()))

    def fetch(self, study: ArchiveStudy, folder: Path) -> list[Path]:
        """The study's image files where they are, not copied: not under ``folder`` (which is
        created, for the same contract as the other sources), nor named by their UID. A caller
        that deletes what ``fetch`` returned must not do so for a folder source."""
        with self._lock:
            index = self._index
        if index is None or study.study_instance_uid not in index:
            index = self._scan()
        if study.study_instance_uid not in index:
            raise ArchiveError(
                self.name, "no image instance of this study here", study=study.study_instance_uid
            )
        folder.mkdir(parents=True, exist_ok=True)
        return sorted(path for path, _, _ in index[study.study_instance_uid])

    def _scan(self) -> dict[str, list[tuple[Path, str, ArchiveStudy]]]:
        index: dict[str, list[tuple[Path, str, ArchiveStudy]]] = {}
        seen: set[str] = set()
        skipped: list[tuple[str, str]] = []
        for path, referenced in self._candidates():
            if referenced and not path.is_file():
                # A DICOMDIR names it: a cine of its study is missing (before, it was left out
                # without a word, and the study processed on its other cines or not listed).
                reason = "referenced by the DICOMDIR but not found"
                logger.warning("Skipped %s: %s", path, reason)
                skipped.append((str(path), reason))
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
                if str(ds.get("SOPClassUID", "")) not in IMAGE_SOP_CLASSES:
                    continue
                sop, study = str(ds.get("SOPInstanceUID", "")), dataset_study(ds)
            # pydicom raises many kinds on a damaged file, some only when an element is read:
            # one such file is skipped, never the whole archive.
            except Exception as exc:
                if referenced or path.suffix.lower() == ".dcm":
                    logger.warning("Skipped %s: not readable as DICOM (%r)", path, exc)
                    skipped.append((str(path), f"not readable as DICOM ({exc!r})"))
                continue
            if not is_uid(sop) or not is_uid(study.study_instance_uid):
                reason = (
                    f"no valid SOP Instance UID or Study Instance UID ({sop[:80]!r}, "
                    f"{study.study_instance_uid[:80]!r})"
                )
                logger.warning("Skipped %s: %s", path, reason)
                skipped.append((str(path), reason))
                continue
            if sop in seen:
                logger.warning("Skipped %s: another file holds instance %s", path, sop)
                skipped.append((str(path), f"another file holds instance {sop}"))
                continue
            seen.add(sop)
            index.setdefault(study.study_instance_uid, []).append((path, sop, study))
        with self._lock:
            self._index = index
            self.skipped = tuple(skipped)
        return index

    def _candidates(self) -> Iterator[tuple[Path, bool]]:
        """Each file to read, and whether a DICOMDIR references it (it must then be there)."""
        if self.path.is_file():
            # The directory records' file IDs, read here: pydicom's FileSet leaves out, with a
            # warning only, the files it does not find as named.
            root = self.path.parent
            try:
                records = dcmread(self.path).get("DirectoryRecordSequence") or []
                ids = [r.ReferencedFileID for r in records if r.get("ReferencedFileID")]
            except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
                raise ArchiveError(self.name, f"cannot read the DICOMDIR ({exc})") from exc
            named = [[i] if isinstance(i, str) else [str(part) for part in i] for i in ids]
            files = set()
            for parts in named:
                # Not outside the media: no "..", no absolute part (a linked folder inside it,
                # as a cohort assembled of links, is the media's).
                if any(p in ("..", "") or p.startswith(("/", "\\")) for p in parts):
                    logger.warning(
                        "%s: the DICOMDIR names %s, outside its media: not read",
                        self.name,
                        "\\".join(parts),
                    )
                    continue
                files.add(root.joinpath(*parts))
            for path in sorted(files):
                yield _on_disk(path, root), True
            return
        for path in sorted(_files(self.path)):
            suffix = path.suffix.lower()
            dicom_name = suffix in ("", ".dcm") or suffix[1:].isdigit()
            if dicom_name and not path.name.startswith(".") and path.is_file():
                yield path, False


def _on_disk(path: Path, root: Path) -> Path:
    """A DICOMDIR's file as it lies on disk: its file IDs are upper case, and media copied to a
    file system that keeps case often has them in lower case (``pt000000/st000000/...``), so
    each part is matched without case where it is not found as written. ``path`` itself when
    nothing matches."""
    if path.is_file():
        return path
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path
    current = root
    for part in parts:
        try:
            names = {entry.name.lower(): entry for entry in current.iterdir()}
        except OSError:
            return path
        found = names.get(part.lower())
        if found is None:
            return path
        current = found
    return current if current.is_file() else path


def _files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, through linked folders too (a cohort assembled as links to
    exam folders: ``rglob`` does not follow them, and the run found nothing and said so
    nowhere), each folder once (a link back up the tree is not followed round)."""
    visited: set[Path] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = Path(folder).resolve()
        if real in visited:
            subfolders.clear()
            continue
        visited.add(real)
        yield from (Path(folder) / name for name in names)
