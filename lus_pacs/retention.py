"""Retention: the files of studies done long ago go, the job store's memory of them stays.

The node keeps every instance it acknowledged (``incoming/``) and every result object it made
(``results/``) until they are not needed: a study is done when it is summarised, every job is
sent (or replaced by other content) and every summary delivered. :func:`prune` removes the
files of the studies done and quiet for longer than a given time; their rows stay in the store
(records, what was sent where, and the memory that stops an instance sent again from being
processed again). A study with a failed job or delivery keeps its files for ``lus-pacs retry``.

Only files older than the cut-off are removed: an instance that arrives for a study while it
is pruned (a late cine) keeps its file and is processed; the study is pruned again once it is
done. A late cine of a study pruned earlier gets its results; its study's summary SR cannot be
made again without the earlier cines' files (logged), its JSON summary is.

``lus-pacs prune --older-than DAYS`` does it once; ``retention_days`` in the settings has the
node do it every hour.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lus_pacs.dicom_vocabulary import is_uid
from lus_pacs.queue.store import JobStore

DAY_S = 86400.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    """What one :func:`prune` removed."""

    studies: int
    files: int
    bytes: int


def prune(
    store: JobStore,
    older_than_s: float,
    *,
    now: float | None = None,
    results_dir: Path | None = None,
) -> Pruned:
    """Remove the files of every study done and quiet for ``older_than_s`` seconds; with
    ``results_dir`` (the node's), its summary there too (``<study>/study-summary.json``, which
    the store does not record: it stayed, with the study's findings, and kept its folder)."""
    before = (time.time() if now is None else now) - older_than_s
    studies = files = freed = 0
    for study in store.studies.prunable(before):
        instances, results = store.studies.files(study)
        if results_dir is not None:
            results = [*results, results_dir / study / SUMMARY_NAME]
        paths = set(results)
        for sop, path in instances:
            paths.add(path)
            if is_uid(sop):  # every content received under the UID (a replaced one too)
                paths.update(path.parent.glob(f"{sop}-*.dcm"))
        newer = False
        for path in paths:
            try:
                size = remove_if_older(path, before)
            except OSError as exc:  # not ours to remove (permissions, a read-only mount)
                log.warning("Retention: %s stays (%s); study %s is pruned later", path, exc, study)
                newer = True
                continue
            if size is None:  # arrived or made while the study is pruned
                newer = True
            elif size:
                files += 1
                freed += size
        for folder in {p.parent for p in results}:  # not incoming/: a late instance's folder
            with contextlib.suppress(OSError):  # not empty: something newer is in it
                folder.rmdir()
        if not newer:  # else looked at again by the next prune
            studies += store.studies.pruned(study, before)
    return Pruned(studies, files, freed)


SUMMARY_NAME = "study-summary.json"
"""The node's summary of a study, in the study's results folder."""


def remove_if_older(path: Path, before: float) -> int | None:
    """Remove the file at ``path`` if it was last written before ``before``: its size (0 when
    there is none), or None when it is newer and stays.

    The file is first moved aside under a name of its own and judged there, so the file
    removed is always the one judged: an instance received again while its study is pruned
    is renamed over ``path`` (a new file), and checking the age at ``path`` then removing it
    could remove that fresh, acknowledged copy. A newer file moved aside is put back, unless a
    newer still took its place meanwhile.
    """
    aside = path.with_name(f".{path.name}.pruning")
    try:
        os.rename(path, aside)
        stat = aside.stat()
    except FileNotFoundError:  # gone, or taken by another prune (the CLI beside the node)
        return 0
    if stat.st_mtime < before:
        try:
            aside.unlink(missing_ok=True)
        except OSError:  # not removable after all: back where it was, for the next prune
            if not path.exists():
                with contextlib.suppress(OSError):
                    os.rename(aside, path)
            raise
        return stat.st_size
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.link(aside, path)
    aside.unlink(missing_ok=True)
    return None


def restore_aside(folder: Path) -> int:
    """Put back the files a prune killed mid-way left moved aside under ``folder`` (where
    nothing took their place since); the number put back. At the node's start, when no prune
    runs."""
    restored = 0
    for aside in folder.rglob(".*.pruning"):
        path = aside.with_name(aside.name[1 : -len(".pruning")])
        try:
            os.link(aside, path)
            restored += 1
        except (FileExistsError, FileNotFoundError):  # taken, or a prune beside finished it
            pass
        aside.unlink(missing_ok=True)
    return restored
