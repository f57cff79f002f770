"""One re-processing run: list an archive's ultrasound studies, bring each to local disk,
process its cines on the engine, write (and send) the results, keep the manifest.

The live node's stages, not a copy of them: each cine goes through
:func:`lus_pacs.pipeline.process_bytes`, each study through
:meth:`lus_pacs.records.StudySummary.of` and :func:`lus_pacs.pipeline.encode_summary`.

Results land in ``OUT/results/<study>/`` and, per run, ``OUT/summary.jsonl`` (a record per
cine, without timings, ordered by study and instance, so two engines give the same file),
``OUT/studies.jsonl`` (a summary per study) and ``OUT/exams/<study>.csv``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from tqdm import tqdm

from lus_pacs.dicom_vocabulary import is_uid
from lus_pacs.domain import OutputKind
from lus_pacs.durable import durable_file
from lus_pacs.encode.files import output_kind
from lus_pacs.errors import ArchiveError, ExportError
from lus_pacs.families.registry import FAMILIES, Registry
from lus_pacs.imaging.metadata import budget_pixels
from lus_pacs.ingest.archive import ArchiveSource, ArchiveStudy
from lus_pacs.pipeline import encode_summary, write_outputs
from lus_pacs.queue.manifest import Manifest
from lus_pacs.records import CineRecord, StudySummary
from lus_pacs.reprocess.engine import WORKER_DIED, Engine, Outcome, WorkItem
from lus_pacs.settings import DicomDestination, Settings

log = logging.getLogger(__name__)


@dataclass
class RunCounts:
    """What one run did, for its report."""

    studies: int = 0
    studies_skipped: int = 0
    processed: int = 0
    skipped: int = 0
    """Cines done by an earlier run with these model versions."""
    failed_before: int = 0
    """Cines an earlier run failed for good (:meth:`Manifest.failed_for_good`), not tried."""
    failed: int = 0
    problems: int = 0
    """Studies that could not be fetched and files that could not be read, in this run."""
    sent: int = 0
    send_failures: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cines_per_minute(self) -> float:
        return 60.0 * self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Study:
    """A study being worked on in this run."""

    archive: ArchiveStudy
    files: dict[str, Path]
    headers: dict[str, Dataset]
    """Each instance's header, read once when fetched (UIDs now, the summary SR later)."""
    pending: set[str]
    fetched_here: bool


class Run:
    """Re-process ``source`` into ``out`` with ``engine``; :meth:`execute` does it."""

    def __init__(
        self,
        settings: Settings,
        source: ArchiveSource,
        out: Path,
        engine: Engine,
        models_key: str,
        *,
        destination: DicomDestination | None = None,
        since: dt.date | None = None,
        progress: bool = True,
        families: Registry = FAMILIES,
        retry_failed: bool = False,
    ) -> None:
        self.settings = settings
        self.part_types = families.record_types()
        self.source = source
        self.out = out
        self.engine = engine
        self.key = models_key
        self.destination = destination
        self.since = since
        self.progress = progress
        self.retried: tuple[str, ...] | None = None if retry_failed else (WORKER_DIED,)
        """The failure reasons tried again (None: every failure); other failures are final."""
        self.manifest = Manifest(out / "manifest.sqlite")
        self.counts = RunCounts()
        self._studies: dict[str, _Study] = {}
        self._bar: tqdm[Any] | None = None

    # The run

    def execute(self) -> RunCounts:
        """Process everything not done yet. On Ctrl-C (KeyboardInterrupt) the manifest keeps
        every finished cine; the exception propagates after the engine is closed."""
        start = time.perf_counter()
        try:
            self.engine.start()  # every worker up (or those a cluster placed) before any cine
            self._send_leftovers()
            studies = self.source.studies(self.since)
            self.counts.studies = len(studies)
            # Files of no known study are named again by every run that meets them: the
            # last run's list goes first, so that a file mended or removed since drops out.
            self.manifest.solved("", self.key)
            for path, reason in self.source.skipped:
                self._problem(path, "", f"skipped: {reason}")
            self._bar = tqdm(
                total=0, unit="cine", disable=not self.progress, desc="reprocess", smoothing=0.1
            )
            for outcome in self.engine.run(self._work(studies)):
                self._finish(outcome)
        finally:
            self.counts.seconds = time.perf_counter() - start
            if self._bar is not None:
                self._bar.close()
            self.engine.close()
        self._write_summaries()
        self.counts.failures = self.manifest.failures(self.key)
        return self.counts

    def _work(self, studies: list[ArchiveStudy]) -> Iterator[WorkItem]:
        """The cines still to process, study by study, fetched just before they are needed."""
        for archive in studies:
            uid = archive.study_instance_uid
            if self.manifest.study_finished(
                uid, self.key, sending=self.destination is not None, retried=self.retried
            ):
                known = set(self.manifest.study_instances(uid, self.key) or [])
                listed = self.source.listed_instances(archive)
                if listed is None or listed == known:
                    self.counts.studies_skipped += 1
                    done = self.manifest.done(self.key, uid)
                    self.counts.skipped += len(done & known)
                    self.counts.failed_before += len(known - done)
                    continue
                # Cines added to or removed from a finished study since: the added made, and
                # the study summarised again over the cines it holds now.
                log.info(
                    "Study %s: %d cine(s) added and %d removed since it was finished",
                    uid,
                    len(listed - known),
                    len(known - listed),
                )
            subject = f"study {uid}"
            if not is_uid(uid):
                self._problem(subject, uid, f"{uid[:80]!r} is not a valid Study Instance UID")
                continue
            folder = self.out / "fetched" / uid
            try:
                files = self.source.fetch(archive, folder)
            except (ArchiveError, OSError) as exc:  # this study; the next may come
                self._problem(subject, uid, f"could not be fetched: {exc}")
                shutil.rmtree(folder, ignore_errors=True)  # what came of it: patients' files
                continue
            headers: dict[str, Dataset] = {}
            by_uid: dict[str, Path] = {}
            problems: list[tuple[str, str]] = []
            for f in files:
                header = self._header(f, uid, problems)
                if header is not None:
                    headers[str(header.SOPInstanceUID)] = header
                    by_uid[str(header.SOPInstanceUID)] = f
            # Its instances and its problems of now in one step: interrupted before, the last
            # run's stand (its problems dropped first, a file still unreadable was forgotten).
            self.manifest.record_study(
                uid, self.key, self.source.name, list(by_uid), problems=problems
            )
            for subject, reason in problems:
                log.error("%s: %s", subject, reason)
                self.counts.problems += 1
            done = self.manifest.done(self.key, uid)
            failed_before = set()
            if self.retried is not None:  # failed before for a reason this run would meet again
                failed_before = self.manifest.failed_for_good(self.key, uid, self.retried) - done
            pending = {u for u in by_uid if u not in done and u not in failed_before}
            fetched_here = any(folder in f.parents for f in files)
            study = _Study(archive, by_uid, headers, set(pending), fetched_here)
            self._studies[uid] = study
            self.counts.skipped += len(done & set(by_uid))
            self.counts.failed_before += len(failed_before & set(by_uid))
            if self._bar is not None:
                self._bar.total = (self._bar.total or 0) + len(pending)
                self._bar.refresh()
            if not pending:
                self._close_study(study)
                continue
            for sop in sorted(pending):
                limit = self.settings.max_instance_bytes
                try:
                    size = by_uid[sop].stat().st_size
                except OSError as exc:  # a folder's file removed since it was listed
                    reason = f"cannot read {by_uid[sop]}: {exc}"
                    self._finish(Outcome(WorkItem(sop, uid, by_uid[sop]), None, [], reason))
                    continue
                if size > limit:  # not read into memory to be refused there
                    reason = f"{size} bytes is over the limit of {limit} (max_instance_bytes)"
                    self._finish(Outcome(WorkItem(sop, uid, by_uid[sop]), None, [], reason))
                    continue
                yield WorkItem(sop, uid, by_uid[sop], budget_pixels(headers[sop], size))

    def _header(
        self, path: Path, study_uid: str, problems: list[tuple[str, str]]
    ) -> Dataset | None:
        """The header of a fetched file, or None (its subject and reason appended to
        ``problems``) when it cannot be read, has no valid SOP Instance UID or belongs to
        another study."""
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            sop, study = str(header.SOPInstanceUID), str(header.get("StudyInstanceUID", ""))
        except Exception as exc:  # pydicom raises many kinds on a damaged file
            problems.append((str(path), f"not readable as DICOM: {exc!r}"))
            return None
        if not is_uid(sop):
            problems.append((str(path), f"SOP Instance UID {sop[:80]!r} is not a valid UID"))
            return None
        if study != study_uid:
            reason = f"of study {study[:80]!r}, fetched for study {study_uid}"
            problems.append((str(path), reason))
            return None
        other = next((u for u, s in self._studies.items() if sop in s.files), None)
        other = other or self.manifest.study_of(sop, self.key)
        if other is not None and other != study_uid:  # results and records are keyed by it
            problems.append((str(path), f"instance {sop} is also one of study {other}"))
            return None
        return header

    def _problem(self, subject: str, study_uid: str, reason: str) -> None:
        log.error("%s: %s", subject, reason)
        self.manifest.problem(subject, self.key, study_uid, reason)
        self.counts.problems += 1

    def _finish(self, outcome: Outcome) -> None:
        item = outcome.item
        if outcome.error is not None or outcome.record is None:
            reason = outcome.error or "no result"
            log.error("Failed %s (%s): %s", item.sop_instance_uid, item.path.name, reason)
            self.manifest.fail(item.sop_instance_uid, self.key, item.study_instance_uid, reason)
            self.counts.failed += 1
        else:
            folder = self.out / "results" / item.study_instance_uid
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for name, data in outcome.files:
                with durable_file(folder / name) as f:
                    f.write(data)
                paths.append(folder / name)
            self.manifest.finish(
                item.sop_instance_uid,
                self.key,
                item.study_instance_uid,
                outcome.record,
                [p.name for p in paths],
            )
            self.counts.processed += 1
            self._send(item.sop_instance_uid, paths)
        if self._bar is not None:
            self._bar.update(1)
        study = self._studies[item.study_instance_uid]
        study.pending.discard(item.sop_instance_uid)
        if not study.pending:
            self._close_study(study)

    def _close_study(self, study: _Study) -> None:
        """Every cine of the study is through: its summary (JSON, SR, CSV), sent if asked;
        the fetched copies removed once nothing of the study is left to do."""
        uid = study.archive.study_instance_uid
        # Only the cines the archive holds now: one deleted since an earlier run drops out.
        records = [
            r
            for r in self.manifest.records(self.key, self.part_types, uid)
            if r.source.sop_instance_uid in study.headers
        ]
        failed = {
            u: why
            for u, why in self.manifest.failed_cines(self.key, uid).items()
            if u in study.headers
        }
        if records:
            summary = StudySummary.of(uid, records, failed)
            folder = self.out / "results" / uid
            # The files first, the manifest's note of the summary last: an interruption between
            # them leaves the study to summarise again, never noted done without its files.
            write_exam_csv(summary, self.out / "exams" / f"{uid}.csv")
            output = None
            if OutputKind.STUDY_SR in self.settings.output_kinds:
                headers = [study.headers[r.source.sop_instance_uid] for r in records]
                # Numbered after the study's earlier summaries, naming the one before (as the
                # node's): a cine removed since gave a summary numbered as the first, below
                # the stale one it replaced.
                previous = self.manifest.summary_uids(uid, self.key)
                if previous is None:
                    previous = _summaries_on_disk(folder)
                made = encode_summary(summary, headers, self.key, previous)
                (output,) = write_outputs([made], folder)
            self.manifest.record_summary(
                uid,
                self.key,
                summary,
                None if output is None else output.sop_instance_uid,
                previous,
            )
            sent = self.manifest.summary_is_sent(uid, self.key)  # this very summary, before
            if output is not None and not sent and self._send(None, [output.path]):
                self.manifest.summary_sent(uid, self.key)
        # Every cine is through (done or failed): the fetched copies go (a later run that has
        # something left to do fetches the study again), and so does what this run held of it.
        if study.fetched_here:
            shutil.rmtree(self.out / "fetched" / uid, ignore_errors=True)
        else:  # a folder's cines are read where they are: the run's folder for it is empty
            with contextlib.suppress(OSError):
                (self.out / "fetched" / uid).rmdir()
        del self._studies[uid]

    # Sending

    def _send(self, sop_uid: str | None, paths: list[Path]) -> bool:
        """C-STORE ``paths`` to the destination, if any; the manifest notes a cine as sent.
        A failed send is logged and left for the next run."""
        if self.destination is None:
            return False
        paths = [p for p in paths if self.destination.takes(output_kind(p))]
        if not paths:  # nothing of this cine goes out (only the study's summary is sent)
            if sop_uid is not None:
                self.manifest.mark_sent(sop_uid, self.key)
            return True
        from lus_pacs.export.dimse import store as c_store

        try:
            c_store(paths, self.destination, calling_ae=self.settings.ae_title)
        except ExportError as exc:
            log.warning(
                "Sending %s to %s failed: %s", paths[0].parent.name, self.destination.name, exc
            )
            self.counts.send_failures += 1
            return False
        if sop_uid is not None:
            self.manifest.mark_sent(sop_uid, self.key)
            self.counts.sent += 1
        return True

    def _send_leftovers(self) -> None:
        """Results made by an earlier run whose sending failed or was cut short."""
        if self.destination is None:
            return
        for sop_uid, study_uid, names in self.manifest.unsent(self.key):
            folder = self.out / "results" / study_uid
            self._send(sop_uid, [folder / n for n in names])

    # Reports

    def records(self) -> list[CineRecord]:
        """Every cine done so far with these model versions that its study still holds (as
        last fetched: not one removed from the archive since), in a fixed order."""
        holds: dict[str, set[str]] = {}  # each study's instances as last fetched
        kept = []
        for record in self.manifest.records(self.key, self.part_types):
            study = record.source.study_instance_uid
            if study not in holds:
                holds[study] = set(self.manifest.study_instances(study, self.key) or ())
            if record.source.sop_instance_uid in holds[study]:
                kept.append(record)
        return kept

    def _write_summaries(self) -> None:
        """summary.jsonl and studies.jsonl from the manifest: :meth:`records`, without timings
        (which differ run to run), and each study's summary."""
        with durable_file(self.out / "summary.jsonl") as f:
            for record in self.records():
                f.write((record.dumps(timings=False) + "\n").encode())
        with durable_file(self.out / "studies.jsonl") as f:
            for summary in self.manifest.summaries(self.key):
                f.write((summary.dumps() + "\n").encode())


def _summaries_on_disk(folder: Path) -> list[str]:
    """A study's summary SRs as an earlier release left them in ``folder`` (it recorded none,
    and numbered each by its count of cines): as many places as the highest Instance Number,
    the last of them that SR, so that the next is numbered after it and names it."""
    latest: tuple[int, str] | None = None
    for path in folder.glob(f"{OutputKind.STUDY_SR}-*.dcm"):
        with contextlib.suppress(Exception):  # one unreadable leaves the others
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            numbered = (int(ds.InstanceNumber), str(ds.SOPInstanceUID))
            latest = numbered if latest is None else max(latest, numbered)
    if latest is None:
        return []
    return [""] * (latest[0] - 1) + [latest[1]]


def write_exam_csv(summary: StudySummary, path: Path) -> None:
    """One exam as CSV: a row per zone (cines, LUS score, B-lines, consolidation), then the
    total; empty cells where a model did not run or read none of the zone's cines."""
    import csv
    import io

    scores = summary.lus_score.per_zone if summary.lus_score else {}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["zone", "cines", "lus_score", "b_lines", "consolidation"])
    consolidation_zones = summary.consolidation_zones
    for zone in summary.zones:
        read = summary.read(zone)  # a zone not looked at is empty, not "False"
        b_lines = (zone in summary.b_line_zones) if summary.b_lines_assessed and read else ""
        consolidation = (
            zone in consolidation_zones if consolidation_zones is not None and read else ""
        )
        writer.writerow(
            [zone, len(summary.zone_cines[zone]), scores.get(zone, ""), b_lines, consolidation]
        )
    writer.writerow(
        [
            "total",
            summary.cines,
            summary.lus_score.total if summary.lus_score else "",
            len(summary.b_line_zones) if summary.b_lines_assessed else "",
            len(consolidation_zones) if consolidation_zones is not None else "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable_file(path) as f:
        f.write(buffer.getvalue().encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
