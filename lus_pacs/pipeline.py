"""The stages between a stored cine and its result files, as functions over typed values:

decode (``imaging``) -> the enabled model families (``families``, in the order of the
registry) -> encode (``encode``) -> files + record (``records``).

The live node and ``lus-pacs process`` call the same :func:`process_file`; only what happens to
the files afterwards (C-STORE or nothing) differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lus_pacs.dicom_vocabulary import is_uid
from lus_pacs.domain import (
    Findings,
    KeyFrame,
    KeyFrameReason,
    Output,
    OutputKind,
)
from lus_pacs.encode.common import (
    repaired_header,
    restore_character_set,
    restore_source_class,
    restore_time_zone,
    results_character_set,
)
from lus_pacs.encode.files import (
    configure_encoder_process,
    encode,
    encode_and_write,
    encoder_ready,
    output_name,
    result_identity,
    write_outputs,
)
from lus_pacs.errors import (
    LusPacsError,
    StageError,
    UnreadableImageError,
    describe,
    failure_stage,
)
from lus_pacs.families.family import Family, Found, Runner
from lus_pacs.families.registry import FAMILIES, Registry
from lus_pacs.imaging.decode import PixelsInFile, decode_dataset, read_header
from lus_pacs.records import (
    CineRecord,
    FailedOutputRecord,
    KeyFrameRecord,
    OutputRecord,
    StudySummary,
    source_record,
    to_json,
)
from lus_pacs.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Models:
    """The enabled families' bundles, loaded once, in the order they run."""

    families: tuple[Family, ...]
    runners: Mapping[str, Runner]
    key: str
    """The identity of the results they make (:meth:`Registry.identity`); result UIDs derive
    from it: ``b_lines@0.4.0~1a2b3c,...,segmentation@0.1.0~4d5e6f[best,mc10]``."""
    registry: Registry = FAMILIES
    """The registry they come from, which writes their records."""

    @classmethod
    def load(cls, settings: Settings, families: Registry = FAMILIES) -> Models:
        """Every family of ``settings.models`` from its bundle under ``models_dir``.

        Raises
        ------
        ConfigError
            A name is not a family of ``families``.
        ModelError
            A bundle is missing or does not fit its family's code.
        """
        ordered = families.ordered(settings.models)
        if any(f.lung_finding for f in ordered) and not any(f.gate for f in ordered):
            log.warning(
                "No assessment runs (models = %s): every cine gets lung findings, a black, "
                'noise or cardiac one too; add "assessment" to models',
                ", ".join(f.name for f in ordered),
            )
        runners = {f.name: f.load(settings.models_dir / f.name, settings) for f in ordered}
        from lus_pacs.inference.bundle import bundle_content  # torch: the runners load it too

        contents = {f.name: bundle_content(settings.models_dir / f.name) for f in ordered}
        return cls(ordered, runners, families.identity(runners, contents), families)


def warm_up(models: Models, settings: Settings, encoder: Encoder | None = None) -> CineRecord:
    """Process a small simulated cine with ``models``, drop its result files and return its
    record. The node runs it as it starts, before it listens (``lus-pacs serve`` and ``demo``),
    so that the first cine a node is sent costs what the others do: on the first cine
    highdicom reads its tables of the standard and each runtime makes its first runs (0.8 s
    more than the next cines on two cores).

    Raises
    ------
    LusPacsError
        The models cannot process the simulated cine (the message says at which stage).
    """
    import shutil

    from lus_pacs.inference.threads import release_free_memory
    from lus_pacs.synth.exam import sample_cine

    # One folder, cleared first: a start interrupted during the warm-up leaves nothing that
    # piles up. The site's limits on what it accepts are not the sample cine's to meet.
    folder = settings.data_dir / "warm-up"
    shutil.rmtree(folder, ignore_errors=True)
    limits = ("max_instance_bytes", "max_cine_frames", "max_cine_pixels")
    defaults = settings.model_copy(
        update={k: type(settings).model_fields[k].default for k in limits}
    )
    try:
        cine = sample_cine(folder / "cine")
        record, _ = process_file(cine, models, defaults, folder / "results", encoder=encoder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # What the sample's processing freed goes back to the system: the heap kept up to 128 MB
    # of it, above which the first long cine would start (bench/memory.py --together: 1.51 GB
    # instead of 1.37).
    release_free_memory()
    return record


_Read = TypeVar("_Read")
"""What a reader of a source file gives: a data set, or a data set and where its pixels are."""

_IDENTITY = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
"""What a source needs for its results to reference it and join its study."""


def analyse(
    header: Dataset,
    name: str,
    models: Models,
    settings: Settings,
    in_file: PixelsInFile | None = None,
    timings: dict[str, float] | None = None,
) -> Findings:
    """Decode the cine and run every enabled family on it, each after those it needs. A source
    without one of :data:`_IDENTITY`, or with one that is not a valid UID, is refused. With
    ``timings``, the milliseconds of the decode (``decode``) and of each family (by its name)
    are put in it.

    With ``in_file`` (:func:`~lus_pacs.imaging.decode.read_header`), the encapsulated frames
    are read from the file a batch at a time and never held in memory whole. Otherwise, once
    decoded, the header's Pixel Data is released (deleted from ``header``): the result objects
    refer to the source but never read its pixels, and a long cine's encoded frames are
    hundreds of MB that would otherwise stay in memory beside the decoded cine while the models
    run.
    """
    missing = [k for k in _IDENTITY if not header.get(k)]
    if missing:
        raise UnreadableImageError(
            name, f"{', '.join(missing)} missing: its results could not be placed beside it"
        )
    malformed = [
        f"{k} {str(header[k].value)[:80]!r}" for k in _IDENTITY if not is_uid(str(header[k].value))
    ]
    if malformed:
        raise UnreadableImageError(
            name, f"{', '.join(malformed)} not a valid UID: its results could not reference it"
        )
    spent = timings if timings is not None else {}
    start = time.perf_counter()
    cine = decode_dataset(
        header,
        name,
        zone_rules=settings.zone_rules,
        max_frames=settings.max_cine_frames,
        max_pixels=settings.max_cine_pixels,
        in_file=in_file,
    )
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    spent["decode"] = (time.perf_counter() - start) * 1000
    if cine.damaged:
        log.warning(
            "%s: frames read only in part: %s",
            name,
            "; ".join(f"{f}: {r}" for f, r in sorted(cine.damaged.items())),
        )
    intact = cine.intact()
    by_family: dict[str, object] = {}
    key_frames: tuple[KeyFrame, ...] = ()
    for family in models.families:
        if family.lung_finding and not _may_read(family, models.families, by_family):
            continue
        start = time.perf_counter()
        found = models.runners[family.name].predict(cine, Found(by_family, key_frames))
        spent[family.name] = (time.perf_counter() - start) * 1000
        by_family[family.name] = found
        # A damaged frame is never a key frame, whichever family proposes it.
        proposed = [k for k in family.key_frames(found) if intact[k.frame - 1]]
        key_frames = tuple(sorted((*key_frames, *proposed), key=lambda k: _REASONS[k.reason]))
    return Findings(
        source=cine.source,
        n_frames=cine.n_frames,
        fps=cine.timing.fps,
        key_frames=key_frames,
        by_family=by_family,
        damaged=dict(cine.damaged),
        blank=cine.blank,
    )


def _may_read(family: Family, families: Sequence[Family], by_family: Mapping[str, object]) -> bool:
    """No gate family that ran found the cine not assessable for ``family``: not at all, or,
    for a family that reads a loop, not as a still image."""
    for gate in (f for f in families if f.gate and f.name in by_family):
        found = by_family[gate.name]
        if getattr(found, "assessable", True):
            continue
        if family.temporal or not getattr(found, "frames_assessable", False):
            return False
    return True


_REASONS = {reason: i for i, reason in enumerate(KeyFrameReason)}
"""Key frames are listed in the order of :class:`KeyFrameReason`, whoever proposed them."""


def result_record(
    findings: Findings,
    outputs: Sequence[Output],
    timings_ms: Mapping[str, float],
    families: Registry = FAMILIES,
    outputs_failed: Mapping[OutputKind, str] | None = None,
) -> CineRecord:
    """The record of one cine (also what the SR encodes). Frames are 1-based; the parts of
    families that did not run are absent; ``outputs_failed`` names the objects that could not
    be made, with the reason."""
    parts = {}
    for name, found in findings.by_family.items():
        family = families.get(name, where="findings")
        parts[family.json_key] = family.record(found)
    return CineRecord(
        source=source_record(findings.source, findings.n_frames, findings.fps, findings.damaged),
        parts=parts,
        key_frames=tuple(KeyFrameRecord(k.frame, k.reason) for k in findings.key_frames),
        outputs=tuple(OutputRecord(o.kind, o.sop_instance_uid, o.path.name) for o in outputs),
        models={m.name: m.version for m in findings.models},
        timings_ms={k: round(v, 1) for k, v in timings_ms.items()},
        outputs_failed=tuple(
            FailedOutputRecord(kind.value, reason)
            for kind, reason in (outputs_failed or {}).items()
        ),
    )


def process_file(
    path: Path,
    models: Models,
    settings: Settings,
    out_dir: Path,
    plots_dir: Path | None = None,
    revision: str = "",
    encoder: Encoder | None = None,
) -> tuple[CineRecord, list[Output]]:
    """Every stage for one stored cine: its result files in ``out_dir`` and its record.
    ``revision`` marks a later content of an instance (see :func:`encode`). With ``encoder``,
    the result objects are made and written in its processes (:class:`Encoder`), otherwise in
    this thread.

    With ``plots_dir``, the B-line frame scores over time are also drawn there as
    ``<SOPInstanceUID>_b_lines.png`` (the paper's Fig. 1, without truth).

    A result object that cannot be made for this source is left out and named in the record
    (``outputs_failed``); the others are made.

    Raises
    ------
    UnreadableImageError
        The cine cannot be decoded; the message names the file and the reason.
    StageError
        Reading the file, the analysis or writing the results failed; the message names the
        file, the stage and the reason.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise StageError(path.name, "read", describe(exc)) from exc
    if size > settings.max_instance_bytes:
        raise StageError(
            path.name,
            "read",
            f"{size} bytes is over the limit of {settings.max_instance_bytes} (max_instance_bytes)",
        )
    header, in_file = _read_dataset(
        lambda: read_header(path, settings.max_instance_bytes), path.name
    )
    timings["read"] = (time.perf_counter() - start) * 1000
    findings = _analysed(header, path.name, models, settings, timings, in_file)
    start = time.perf_counter()
    failed: dict[OutputKind, str] = {}
    try:
        if encoder is None:
            objects = encode(findings, header, settings.output_kinds, models.key, failed, revision)
            outputs = write_outputs(objects, out_dir)
        else:
            outputs, failed = encoder.encode_and_write(
                path.name, findings, header, settings.output_kinds, models.key, revision, out_dir
            )
    except OSError as exc:
        raise StageError(path.name, "write", describe(exc)) from exc
    timings["encode"] = (time.perf_counter() - start) * 1000
    if plots_dir is not None and findings.b_lines is not None and findings.b_lines.frame_scores:
        from lus_pacs.families.b_lines.plots import plot_attention

        plots_dir.mkdir(parents=True, exist_ok=True)
        name = f"{findings.source.sop_instance_uid}_b_lines.png"
        plot_attention(findings.b_lines, plots_dir / name)
    return result_record(findings, outputs, timings, models.registry, failed), outputs


def process_bytes(
    data: bytes, name: str, models: Models, settings: Settings
) -> tuple[CineRecord, list[tuple[str, bytes]]]:
    """Every stage for one cine held in memory, nothing written: its record and its result
    objects as (file name, DICOM Part 10 bytes), named as :func:`write_outputs` names them.

    What a worker on another machine returns (Ray): the caller writes the files.

    Raises
    ------
    UnreadableImageError
        The cine cannot be decoded; the message names ``name`` and the reason.
    StageError
        As :func:`process_file`.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if len(data) > settings.max_instance_bytes:
        raise StageError(
            name,
            "read",
            f"{len(data)} bytes is over the limit of {settings.max_instance_bytes} "
            "(max_instance_bytes)",
        )
    header = _read_dataset(lambda: pydicom.dcmread(BytesIO(data)), name)
    if not len(header):
        # pydicom reads a file that ends inside its encapsulated Pixel Data as an empty data
        # set, with a warning only: the failure read "SOPInstanceUID ... missing".
        raise UnreadableImageError(name, "the file is cut short: no data set could be read")
    timings["read"] = (time.perf_counter() - start) * 1000
    findings, objects, failed = _analyse_and_encode(header, name, models, settings, timings)
    files = []
    outputs = []
    for kind, ds in objects:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        file_name = output_name(kind, ds)
        files.append((file_name, buffer.getvalue()))
        outputs.append(Output(kind, str(ds.SOPInstanceUID), Path(file_name)))
    return result_record(findings, outputs, timings, models.registry, failed), files


def _read_dataset(read: Callable[[], _Read], name: str) -> _Read:
    try:
        return read()
    # pydicom raises many kinds of error on a damaged file: this is the trust boundary.
    except Exception as exc:
        raise StageError(name, "read", f"not a readable DICOM file: {describe(exc)}") from exc


def _analyse_and_encode(
    header: Dataset,
    name: str,
    models: Models,
    settings: Settings,
    timings: dict[str, float],
    revision: str = "",
    in_file: PixelsInFile | None = None,
) -> tuple[Findings, list[tuple[OutputKind, Dataset]], dict[OutputKind, str]]:
    findings = _analysed(header, name, models, settings, timings, in_file)
    start = time.perf_counter()
    failed: dict[OutputKind, str] = {}
    objects = encode(findings, header, settings.output_kinds, models.key, failed, revision)
    timings["encode"] = (time.perf_counter() - start) * 1000
    return findings, objects, failed


def _analysed(
    header: Dataset,
    name: str,
    models: Models,
    settings: Settings,
    timings: dict[str, float],
    in_file: PixelsInFile | None = None,
) -> Findings:
    try:
        return analyse(header, name, models, settings, in_file, timings)
    except LusPacsError:
        raise
    # A model or a pre-processing step failing on one cine is that cine's failure only.
    except Exception as exc:
        log.exception("%s: the analysis failed", name)
        raise StageError(name, "analyse", describe(exc)) from exc


class Encoder:
    """Processes of their own that make and write the result objects of the node's cines.

    Making the objects (highdicom, pydicom) is pure Python: in the workers' threads it holds
    the interpreter's lock, so the other worker's cine waits for it between two network calls
    (on bench/realtime.py's exam the two workers kept 1.74 of the 2 cores busy, and the objects
    took 370-500 ms a cine against 210-280 alone). Here the workers only wait for the answer,
    without the lock. The processes import neither a network runtime nor OpenCV and are forked
    from a server process started clean (``forkserver``: no copy of the models or of the
    workers' threads) that has imported what they share (:mod:`lus_pacs.encode.preload`, and
    the node's main module, which each would import anyway) and frozen it out of the garbage
    collector's reach (a node's three encoding processes held 0.29 GB before, 0.20 GB since). Each
    reports its own peak resident memory with every answer (:attr:`peak_bytes`; shared pages
    counted in each).

    A process that dies (the out-of-memory killer) takes the others' calls down with it (the
    standard library's pool ends them all): the pool is replaced once per death and each cine
    in flight is encoded again, up to :data:`ATTEMPTS` times, after which it fails at its
    ``encode`` stage (``lus-pacs retry`` tries it again). A cine whose objects are not made
    within :attr:`encode_s` fails at its ``encode`` stage at once, and the pool's processes
    are killed and replaced (a process stuck in a loop would otherwise hold its worker for
    good); the other cines in flight are encoded again.
    """

    ATTEMPTS = 3
    START_S = 60.0
    """How long the processes may take to start and import what they need."""
    ENCODE_S = 300.0
    """How long one cine's objects may take by default (a cine takes 0.1-0.5 s; one of 1000
    frames a few seconds)."""
    CLOSE_S = 10.0
    """How long :meth:`close` waits for the processes to finish what they make before it
    kills them."""

    def __init__(self, processes: int, encode_s: float = ENCODE_S) -> None:
        self.encode_s = encode_s
        """How long one cine's objects may take before its encoding is given up."""
        self._processes = processes
        self._lock = threading.Lock()
        self._closed = False
        self._generation = 0
        """Which pool is current: a pool is replaced once, whoever saw it break first."""
        self._pool = self._new_pool()
        self._peaks: dict[int, int] = {}

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", "lus_pacs.encode.preload"])  # before it starts
        return ProcessPoolExecutor(
            self._processes,
            mp_context=context,
            initializer=configure_encoder_process,
            initargs=(logging.getLogger().getEffectiveLevel(), os.getpid()),
        )

    def start(self) -> None:
        """Start every process and import what encoding needs in it, so that the first cine
        does not wait for that (``warm_up`` then makes highdicom read its tables in each).

        Raises
        ------
        TimeoutError
            They did not answer within :data:`START_S`.
        """
        started = [self._submit(encoder_ready, 0.2)[0] for _ in range(self._processes)]
        for future in started:
            self._note(future.result(timeout=self.START_S))

    @property
    def pids(self) -> list[int]:
        """The processes that have answered, the replaced ones included."""
        with self._lock:
            return sorted(self._peaks)

    @property
    def peak_bytes(self) -> int:
        """The largest resident memory each process has had, summed over the processes
        (those that died included)."""
        with self._lock:
            return sum(self._peaks.values())

    def encode_and_write(
        self,
        name: str,
        findings: Findings,
        header: Dataset,
        kinds: Sequence[OutputKind],
        models_key: str,
        revision: str,
        out_dir: Path,
    ) -> tuple[list[Output], dict[OutputKind, str]]:
        """:func:`encode` (with ``failed``) and :func:`write_outputs` in one of the processes.

        Raises
        ------
        OSError
            Writing the files failed.
        StageError
            Stage ``write`` once :meth:`close` was called (the node is stopping: the job
            waits in the queue, as after a full disk); stage ``encode`` when the process died
            :data:`ATTEMPTS` times on this cine.
        RuntimeError
            Making the objects raised (the type and message of the error; the traceback is in
            the encoding process's log).
        """
        for attempt in range(1, self.ATTEMPTS + 1):
            generation = -1  # none replaced when the submission itself failed
            future = None
            try:
                future, generation, pool = self._submit(
                    encode_and_write, findings, header, kinds, models_key, revision, out_dir
                )
                outputs, failed, memory = future.result(timeout=self.encode_s)
            except _ClosedError:
                raise StageError(name, "write", "the node is stopping") from None
            except TimeoutError:
                if future is not None and future.done():
                    # The process's own: an OSError whose errno is ETIMEDOUT (a network share
                    # that timed out while it wrote) is a TimeoutError too; the disk's, not
                    # the cine's, like any other OSError.
                    raise
                log.error(
                    "%s: its result objects were not made within %.0f s; the encoding "
                    "processes are replaced",
                    name,
                    self.encode_s,
                )
                # The pool it was given to: if another worker has replaced it since, it broke
                # and the standard library has ended its processes already.
                kill_processes(pool_processes(pool))
                self._replace(generation)
                raise StageError(
                    name, "encode", f"its result objects were not made within {self.encode_s:.0f} s"
                ) from None
            except (BrokenProcessPool, CancelledError):
                if self._closed:  # close() ended the processes: the cine waits in the queue
                    raise StageError(name, "write", "the node is stopping") from None
                log.error(
                    "%s: an encoding process died (attempt %d of %d)", name, attempt, self.ATTEMPTS
                )
                self._replace(generation)
                continue
            self._note(memory)
            return outputs, failed
        raise StageError(
            name, "encode", f"the processes making its result objects died {self.ATTEMPTS} times"
        )

    def _submit(
        self, function: Callable[..., _T], *args: object
    ) -> tuple[Future[_T], int, ProcessPoolExecutor]:
        """The call's future, the generation and the pool it was given to."""
        with self._lock:
            if self._closed:
                raise _ClosedError
            try:
                return self._pool.submit(function, *args), self._generation, self._pool
            except BrokenProcessPool:  # one died while idle: not this cine's doing
                self._renew()
                return self._pool.submit(function, *args), self._generation, self._pool

    def _replace(self, broken: int) -> None:
        with self._lock:
            if self._generation == broken and not self._closed:
                self._renew()

    def _renew(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self._generation += 1

    def _note(self, memory: tuple[int, int]) -> None:
        pid, peak = memory
        with self._lock:
            self._peaks[pid] = max(peak, self._peaks.get(pid, 0))

    def close(self, wait: bool = True) -> None:
        """No more cines; with ``wait``, until the processes have ended: those still making
        objects after :data:`CLOSE_S` are killed (their cines wait in the queue)."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if not wait:
            pool.shutdown(wait=False, cancel_futures=True)
            return
        killed = end_pool(pool, self.CLOSE_S)
        if killed:
            log.warning(
                "%d encoding process(es) still busy after %.0f s are killed", killed, self.CLOSE_S
            )


def end_pool(pool: ProcessPoolExecutor, within_s: float) -> int:
    """Shut ``pool`` down (its waiting calls cancelled) and wait up to ``within_s`` for its
    processes to end; those still busy then are killed (the standard library's shutdown waited
    for them for good). Returns how many were killed."""
    processes = pool_processes(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + within_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    left = [p for p in processes if p.is_alive()]
    kill_processes(left)
    return len(left)


def pool_processes(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The pool's worker processes (the standard library keeps them by pid; none yet before
    its first call)."""
    return list((pool._processes or {}).values())


def kill_processes(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Kill those still alive and wait up to 5 s for each to end."""
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(5.0)


class _ClosedError(Exception):
    """The encoder was closed."""


_T = TypeVar("_T")


def encode_summary(
    summary: StudySummary,
    sources: Sequence[Dataset],
    models_key: str,
    previous: Sequence[str] | None = None,
) -> tuple[OutputKind, Dataset]:
    """The study summary SR. Its instance UID derives from the study, the cines it covers, the
    model versions, what the summary says and the sources' headers: the same exam summarised
    again gives the same object, and a summary that changed (a cine received again with other
    pixels or a corrected patient) is a new object, sent again. A study that grows after a
    summary (a late cine) gets a new one in the same series, its Instance Number the count of
    cines it covers, so the latest summary is the highest-numbered. With ``previous``, the
    SOP Instance UIDs of the study's summaries made before (the node's store; empty for its
    first; those of the same series, sent or waiting), oldest first: a summary is numbered
    after them and names the one before it as its predecessor (a corrected cine, its score
    changed, gave a second summary of the same number and nothing to tell which replaced
    which)."""
    from lus_pacs.encode.summary import encode_study_summary

    study = summary.study_instance_uid
    cines = sorted(u for uids in summary.zone_cines.values() for u in uids)
    kind = OutputKind.STUDY_SR
    identity = result_identity(study, models_key, kind)
    headers = [repaired_header(s) for s in sources]
    said = [summary.dumps(), *sorted(map(_header_digest, headers))]

    def uid_after(predecessor: str | None) -> str:
        """This summary's UID, made after ``predecessor`` (None: the study's first)."""
        after = [predecessor] if predecessor else []  # "": a place of an unknown one
        return str(generate_uid(entropy_srcs=[study, models_key, *cines, kind, *said, *after]))

    made = list(previous or ())
    # The latest summary made again (the study summarised once more, unchanged) is that
    # object; any other content is a new one after it: a study that goes back to what its
    # first summary said (A, B, A) gets a third, so the highest-numbered is always current.
    before_latest = made[-2] if len(made) > 1 else None
    if made and uid_after(before_latest) == made[-1]:
        instance_uid, number = made[-1], len(made)
        made = made[:-1]
    else:
        instance_uid, number = uid_after(made[-1] if made else None), len(made) + 1
    dataset = encode_study_summary(
        summary,
        headers,
        series_number=identity.series_number,
        instance_uid=instance_uid,
        series_uid=identity.series_uid,
        instance_number=len(cines) if previous is None else number,
    )
    if made and made[-1]:  # not a place held for an unknown one (a run of an earlier release)
        predecessor = Dataset()
        predecessor.ReferencedSOPClassUID = dataset.SOPClassUID
        predecessor.ReferencedSOPInstanceUID = made[-1]
        series = Dataset()
        series.SeriesInstanceUID = identity.series_uid
        series.ReferencedSOPSequence = [predecessor]
        document = Dataset()
        document.StudyInstanceUID = study
        document.ReferencedSeriesSequence = [series]
        dataset.PredecessorDocumentsSequence = [document]
    for source in sources:
        restore_source_class(dataset, source)
    # The sources' own character set where they agree on one; else UTF-8 holds every name.
    if sources and all(
        results_character_set(s) == results_character_set(sources[0]) for s in sources
    ):
        restore_character_set(dataset, sources[0])
    # Their time zone where they agree on one (the study's moments are copied as they are).
    if sources and all(
        s.get("TimezoneOffsetFromUTC") == sources[0].get("TimezoneOffsetFromUTC") for s in sources
    ):
        restore_time_zone(dataset, sources[0])
    return kind, dataset


def _header_digest(header: Dataset) -> str:
    """What a source's header holds (patient, study, equipment), as one digest."""
    content = json.dumps(header.to_json_dict(suppress_invalid_tags=True), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def process_paths(
    files: Sequence[Path],
    out: Path,
    models: Models,
    settings: Settings,
    plots_dir: Path | None = None,
    echo: Callable[[str, bool], None] = lambda line, err: None,
) -> int:
    """``lus-pacs process``: every file through :func:`process_file` into ``out`` with its
    record in ``summary.jsonl``, then per study its summary in ``studies.jsonl`` and the study
    summary SR. A file that fails gets a line in ``failed.jsonl`` (file, stage, reason) instead
    and the others go on. ``echo(line, is_error)`` hears of each file. Returns the number of
    files that failed."""
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    studies: dict[str, list[tuple[Path, CineRecord]]] = {}
    with (out / "summary.jsonl").open("w") as summary, (out / "failed.jsonl").open("w") as bad:
        for path in files:
            try:
                record, _ = process_file(path, models, settings, out, plots_dir)
            # Whatever one file does, the next is processed: this is the run's boundary.
            except Exception as exc:
                if not isinstance(exc, LusPacsError):
                    log.exception("%s: unexpected failure", path)
                stage, reason = failure_stage(exc), describe(exc)
                echo(f"{path}: failed at {stage}: {reason}", True)
                bad.write(json.dumps({"file": str(path), "stage": stage, "reason": reason}))
                bad.write("\n")
                failed += 1
                continue
            for kind in record.outputs_failed:
                echo(f"{path}: no {kind.kind} object: {kind.reason}", True)
            summary.write(record.dumps() + "\n")
            studies.setdefault(record.source.study_instance_uid, []).append((path, record))
            echo(f"{path}: {to_json(record.b_lines) if record.b_lines else {}}", False)
    with (out / "studies.jsonl").open("w") as lines:
        for study, done in studies.items():
            exam = StudySummary.of(study, [record for _, record in done])
            lines.write(exam.dumps() + "\n")
            if OutputKind.STUDY_SR in settings.output_kinds:
                headers = [pydicom.dcmread(p, stop_before_pixels=True) for p, _ in done]
                write_outputs([encode_summary(exam, headers, models.key)], out)
    return failed
