"""Writing files so that a reader or a crash never sees half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for writing through a temporary name; on a clean exit the data is flushed
    to disk, renamed into place and the rename itself made durable. On an error the temporary
    file is removed and ``path`` is untouched.

    The temporary name is the writer's own (``.<name>.<random>.part``): two writers of one path
    at once (a sender that sends an instance twice on two associations) each rename a whole
    file into place, never one another's half. Folders made for ``path`` are made durable in
    their parents too."""
    durable_folder(path.parent)
    # Not mkstemp: its files are private (0600); this one gets the umask's permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with tmp.open("xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def durable_folder(folder: Path) -> None:
    """Make ``folder`` and its missing parents, each new one's entry synced to disk in its
    parent: a crash after a file in it is acknowledged cannot take the folder away."""
    missing = []
    at = folder
    while not at.exists():
        missing.append(at)
        at = at.parent
    folder.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        _sync_folder(made.parent)


def _sync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_partial(folder: Path) -> tuple[int, int]:
    """Remove the temporary files (``.<name>.<random>.part``) that writers killed mid-write
    left anywhere under ``folder``, each up to a cine's size: the number removed and their
    bytes. Only where no writer is at work (the node at its start holds its store's lock)."""
    removed = freed = 0
    for tmp in folder.rglob(".*.part"):
        try:
            size = tmp.stat().st_size
            tmp.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        freed += size
    return removed, freed
