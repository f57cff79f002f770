"""Making one cine's result objects and writing them as files: what :func:`lus_pacs.pipeline.
process_file` does after the analysis, in the worker's thread or in an encoding process of the
node (:class:`lus_pacs.pipeline.Encoder`: this module imports neither a network runtime nor
OpenCV, so that such a process stays small)."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lus_pacs import LOG_FORMAT, __version__
from lus_pacs.domain import Findings, Output, OutputKind, ResultIdentity
from lus_pacs.durable import durable_file, durable_folder
from lus_pacs.encode.common import (
    repaired_header,
    restore_character_set,
    restore_source_class,
    restore_time_zone,
)
from lus_pacs.encode.objects import SERIES_NUMBERS, encode_objects

log = logging.getLogger(__name__)


def result_identity(
    source: str, models_key: str, kind: OutputKind, context: Sequence[str] = ()
) -> ResultIdentity:
    """A result object's UIDs derive from its source (a cine, or a study and the cines it
    covers), the model versions and its kind: encoding the same result again (after a crash)
    gives the same object. The instance UID also derives from ``context``, what else decides
    the object's content (the zone, the other kinds it references, this software's version):
    different content is never sent under a UID a PACS already holds (it would keep the old
    object, a wrong-side zone say). The series stays the source's."""
    return ResultIdentity(
        instance_uid=str(
            generate_uid(entropy_srcs=[source, models_key, kind, "instance", *context])
        ),
        series_uid=str(generate_uid(entropy_srcs=[source, models_key, kind, "series"])),
        series_number=SERIES_NUMBERS[kind],
    )


def encode(
    findings: Findings,
    header: Dataset,
    kinds: Sequence[OutputKind],
    models_key: str,
    failed: dict[OutputKind, str] | None = None,
    revision: str = "",
) -> list[tuple[OutputKind, Dataset]]:
    """The result objects of one cine (:data:`lus_pacs.encode.objects.ENCODERS`).

    With ``failed``, a kind that cannot be made for this source is logged, put in it with the
    reason and left out; the others are still made. ``revision`` (the content digest of an
    instance received again with other content) gives the objects UIDs of their own.

    Raises
    ------
    EncodeError
        Without ``failed``: an encoder refused the findings.
    """
    source = findings.source.sop_instance_uid
    identity_source = f"{source}#{revision}" if revision else source

    def report(kind: OutputKind, reason: str) -> None:
        log.error("%s: the %s object could not be made: %s", source, kind.value, reason)
        assert failed is not None
        failed[kind] = reason

    context = [findings.source.zone or "", *sorted(kinds), __version__]
    objects = encode_objects(
        findings,
        repaired_header(header),
        kinds,
        lambda kind: result_identity(identity_source, models_key, kind, context),
        None if failed is None else report,
    )
    for _, dataset in objects:
        restore_source_class(dataset, header)
        restore_character_set(dataset, header)
        restore_time_zone(dataset, header)
    return objects


def output_name(kind: OutputKind, ds: Dataset) -> str:
    """The file name of a result object: ``<kind>-<SOPInstanceUID>.dcm``."""
    return f"{kind}-{ds.SOPInstanceUID}.dcm"


def output_kind(path: Path) -> str:
    """The kind of the result object at ``path``, from its :func:`output_name` (a UID has no
    ``-``, a kind may)."""
    return path.name.rpartition("-")[0]


def write_outputs(objects: Sequence[tuple[OutputKind, Dataset]], folder: Path) -> list[Output]:
    """Each object as a DICOM file, written durably, named by its SOP Instance UID (a new
    folder's entry synced in its parent too: a power cut cannot take the folder away)."""
    durable_folder(folder)
    outputs = []
    for kind, ds in objects:
        path = folder / output_name(kind, ds)
        with durable_file(path) as f:
            ds.save_as(f, enforce_file_format=True)
        outputs.append(Output(kind, str(ds.SOPInstanceUID), path))
    return outputs


# What an encoding process runs (:class:`lus_pacs.pipeline.Encoder`).


def configure_encoder_process(level: int, node_pid: int) -> None:
    """A new encoding process logs to the node's standard error at the node's level, and ends
    as soon as the node process ``node_pid`` has ended, however it ended. Without that, a node
    that was killed left its encoding processes and their server running for good: each holds
    the pipe whose end tells the server to stop, and waits for work on a queue it also holds."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    threading.Thread(target=_end_with, args=(node_pid,), name="node-watch", daemon=True).start()


def _end_with(node_pid: int) -> None:
    try:
        handle = os.pidfd_open(node_pid)  # readable once that process has ended (Linux 5.3)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no process handles here: look every second
        while True:
            time.sleep(1)
            try:
                os.kill(node_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # there, but another user's: the pid was reused
                os._exit(0)
    select.select([handle], [], [])
    os._exit(0)


def own_memory() -> tuple[int, int]:
    """This process's id and its peak resident memory in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            peak = next(line for line in status if line.startswith("VmHWM:"))
        return os.getpid(), int(peak.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return os.getpid(), 0


def encoder_ready(pause_s: float) -> tuple[int, int]:
    """:func:`own_memory`, after ``pause_s``."""
    time.sleep(pause_s)  # long enough that each process of the pool takes one
    return own_memory()


def encode_and_write(
    findings: Findings,
    header: Dataset,
    kinds: Sequence[OutputKind],
    models_key: str,
    revision: str,
    out_dir: Path,
) -> tuple[list[Output], dict[OutputKind, str], tuple[int, int]]:
    """:func:`encode` (with ``failed``) and :func:`write_outputs`, and :func:`own_memory`.

    Raises
    ------
    OSError
        Writing the files failed.
    RuntimeError
        Anything else that raised, as its type and message: what crosses back to the node
        must be rebuilt there from its pickle, which the project's own errors are not (the
        traceback is logged here).
    """
    failed: dict[OutputKind, str] = {}
    try:
        objects = encode(findings, header, kinds, models_key, failed, revision)
        return write_outputs(objects, out_dir), failed, own_memory()
    except OSError:
        raise
    except Exception as exc:
        log.exception("%s: the result objects could not be made", findings.source.sop_instance_uid)
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
