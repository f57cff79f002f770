"""The ``lus-pacs`` command. Heavy imports (torch, monai, pydicom) happen inside the commands,
so ``lus-pacs --help`` answers at once."""

from __future__ import annotations

import importlib
import json
import sqlite3
from collections.abc import Mapping
from enum import StrEnum
from inspect import getdoc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lus_pacs import LOG_FORMAT, __version__
from lus_pacs.errors import LusPacsError
from lus_pacs.families.registry import FAMILIES, Registry
from lus_pacs.training.real_commands import evaluate_real, evaluate_simulator

if TYPE_CHECKING:
    from lus_pacs.domain import Cine
    from lus_pacs.queue.deliveries import DeliveryState
    from lus_pacs.queue.store import JobStore

app = typer.Typer(
    name="lus-pacs",
    help="Lung-ultrasound AI node for PACS. Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """The console script: a user's error (bad settings, unreadable input, an unreachable
    archive) is one line on stderr and exit status 2, never a traceback."""
    try:
        app()
    except LusPacsError as exc:
        typer.echo(f"lus-pacs: {exc}", err=True)
        raise SystemExit(2) from None


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="LUS_PACS_CONFIG",
        help="TOML settings file; embedded defaults if omitted.",
    ),
]


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


class ProbeChoice(StrEnum):
    convex = "convex"
    linear = "linear"


class SyntaxChoice(StrEnum):
    jpeg = "jpeg"
    rle = "rle"
    explicit = "explicit"


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the exams into.")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients (studies).")] = 3,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same pixels.")
    ] = 0,
    zones: Annotated[int, typer.Option(help="Zones per exam: 6, 8, 12 or 14.")] = 6,
    probe: Annotated[ProbeChoice, typer.Option(help="Probe geometry.")] = ProbeChoice.convex,
    frames: Annotated[int, typer.Option(min=2, help="Frames per cine.")] = 60,
    fps: Annotated[float, typer.Option(min=1.0, help="Frame rate.")] = 30.0,
    transfer_syntax: Annotated[
        SyntaxChoice, typer.Option("--transfer-syntax", help="Pixel encoding of the cines.")
    ] = SyntaxChoice.jpeg,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering in parallel.")] = 1,
    decouple_consolidation: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of zones whose consolidation is drawn independent of the score "
            "(training data for the consolidation model).",
        ),
    ] = 0.0,
    poor_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of zones whose whole loop is poor: probe lifted or a rib over the pleura "
            "(training and test data for the key-frame model).",
        ),
    ] = 0.0,
) -> None:
    """Simulate lung-ultrasound exams: US Multi-frame DICOM with ground truth beside each cine."""
    if zones not in (6, 8, 12, 14):
        raise typer.BadParameter(f"zones must be 6, 8, 12 or 14; got {zones}", param_hint="--zones")
    from tqdm import tqdm

    from lus_pacs.imaging.writer import CineSyntax
    from lus_pacs.synth.exam import SynthOptions, synthesize
    from lus_pacs.synth.geometry import Probe

    options = SynthOptions(
        patients=patients,
        seed=seed,
        zones=zones,
        probe=Probe(probe.value),
        frames=frames,
        fps=fps,
        syntax=CineSyntax(transfer_syntax.value),
        workers=workers,
        decouple_consolidation=decouple_consolidation,
        poor_share=poor_share,
    )
    with tqdm(total=patients * zones, unit="cine", desc="synth") as bar:
        records = synthesize(out, options, progress=bar.update)
    by_score = {s: sum(r.severity == s for r in records) for s in range(4)}
    typer.echo(
        f"wrote {len(records)} cines of {patients} exams to {out} "
        f"(clip severity 0/1/2/3: {by_score[0]}/{by_score[1]}/{by_score[2]}/{by_score[3]}; "
        f"montage: {out / 'montage.png'})"
    )


@app.command("import-video")
def import_video(
    files: Annotated[list[Path], typer.Argument(help="Video files: mp4, avi, mov, mpeg, gif.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the DICOM files into.")],
    patient_id: Annotated[
        str | None,
        typer.Option("--patient-id", help="Patient ID; derived from the file if omitted."),
    ] = None,
    zone: Annotated[str | None, typer.Option(help="Lung zone, for example R1.")] = None,
    transfer_syntax: Annotated[
        SyntaxChoice, typer.Option("--transfer-syntax", help="Pixel encoding of the cines.")
    ] = SyntaxChoice.jpeg,
    monochrome: Annotated[
        bool, typer.Option(help="Store luminance only (B-mode is grey): a third of the size.")
    ] = False,
    max_frames: Annotated[
        int | None,
        typer.Option(
            "--max-frames", min=1, help="Longer videos are refused (default: a minute at 50 fps)."
        ),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-bytes",
            min=1,
            help="Videos larger once decoded (RGB, or grey with --monochrome) are refused "
            "(default: 2 GiB); importing takes about twice this in memory.",
        ),
    ] = None,
) -> None:
    """Import exported videos as US Multi-frame DICOM, one study per video.

    Exits 1 when any file was refused; each refusal is printed with its reason.
    """
    from lus_pacs.imaging.writer import CineSyntax
    from lus_pacs.ingest.video import MAX_BYTES, MAX_FRAMES, check_labels, import_videos

    try:
        check_labels(zone, patient_id)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    report = import_videos(
        files,
        out,
        patient_id=patient_id,
        zone=zone,
        syntax=CineSyntax(transfer_syntax.value),
        monochrome=monochrome,
        max_frames=max_frames or MAX_FRAMES,
        max_bytes=max_bytes or MAX_BYTES,
    )
    for item in report.imported:
        same = f" (the same video as {item.same_as})" if item.same_as else ""
        typer.echo(f"imported {item.source} -> {item.output}{same}")
    for refusal in report.refused:
        typer.echo(f"refused {refusal.source}: {refusal.reason}", err=True)
    typer.echo(f"{len(report.imported)} imported, {len(report.refused)} refused")
    if report.refused:
        raise typer.Exit(1)


@app.command()
def inspect(
    files: Annotated[list[Path], typer.Argument(help="DICOM cine files.")],
    config: ConfigOption = None,
) -> None:
    """Read cines as the node does and print what each holds (frames, rate, region, zone).

    Exits 1 when any file cannot be read; the reason is printed.
    """
    from lus_pacs.errors import UnreadableImageError
    from lus_pacs.imaging.decode import read_cine
    from lus_pacs.settings import load_settings

    settings = load_settings(config)
    failed = 0
    for path in files:
        try:
            cine = read_cine(path, zone_rules=settings.zone_rules)
        except UnreadableImageError as exc:
            typer.echo(f"{path}: refused: {exc.reason}", err=True)
            failed += 1
            continue
        typer.echo(f"{path}: {describe(cine)}")
    if failed:
        raise typer.Exit(1)


@app.command()
def calibrate(
    labels: Annotated[
        Path,
        typer.Option(
            help="CSV of the site's labelled cines: file (DICOM, relative to the CSV), "
            "b_lines (0, 1 or empty), severity (0-3 or empty), optionally consolidation "
            "(0, 1 or empty)."
        ),
    ],
    site: Annotated[str, typer.Option(help="The site's name (letters, digits, '.', '-').")],
    out: Annotated[Path, typer.Option(help="The calibration file to write.")],
    config: ConfigOption = None,
) -> None:
    """Fit a site's calibration of the B-line, consolidation and severity decisions on cines it
    labelled.

    Point the node's ``calibration`` setting at the file written; those families' findings
    then carry the version ``<bundle version>+site.<site>.<digest>``. Prints each family's
    figures on the site's cines before and after (in-sample).
    """
    from lus_pacs.families.calibration import calibrate_site
    from lus_pacs.settings import load_settings

    settings = load_settings(config)
    try:
        report = calibrate_site(labels, site, settings.models_dir)
    except LusPacsError as exc:
        typer.echo(f"calibrate: {exc}", err=True)
        raise typer.Exit(1) from None
    for path, reason in report.refused:
        typer.echo(f"{path}: refused: {reason}", err=True)
    for line in report.lines:
        typer.echo(line)
    try:
        report.calibration.save(out)
    except OSError as exc:
        typer.echo(f"calibrate: cannot write {out}: {exc}", err=True)
        raise typer.Exit(1) from None
    for family, found in report.calibration.offsets.items():
        typer.echo(
            f"{family}: offset {found.offset:+.3f} from {found.clips} cines "
            f"(bundle {found.bundle_version})"
        )
    typer.echo(f"wrote {out}")


def describe(cine: Cine) -> str:
    """One line about a decoded cine, for people."""
    r = cine.region
    fps = f"{cine.timing.fps:.1f} fps ({cine.timing.source})" if cine.timing.fps else "no rate"
    spacing = f", {r.cm_per_pixel_x * 10:.2f} mm/px" if r.cm_per_pixel_x else ""
    tissue = cine.tissue()
    return (
        f"{cine.n_frames} frames {cine.frames.shape[2]}x{cine.frames.shape[1]}, {fps}, "
        f"zone {cine.source.zone or '?'}, tissue region {r.width}x{r.height} at ({r.x0},{r.y0}) "
        f"from {r.source.value}{spacing}, mean grey in region {tissue.mean():.1f}"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path(
        "lus-pacs-demo"
    ),
    config: ConfigOption = None,
) -> None:
    """The main job on the embedded defaults: start the node, push a simulated exam to it by
    C-STORE as a scanner would, wait for the results and print the findings per zone. The
    node's folder (OUT/node) is made anew on every run; an OUT/node that is not a node's folder
    is left alone and the demo stops."""
    import shutil
    import time

    from lus_pacs.domain import JobState
    from lus_pacs.export.dimse import store
    from lus_pacs.inference.threads import prepare_workers
    from lus_pacs.node import Node, hold_store, summary_path
    from lus_pacs.settings import DicomDestination, load_settings
    from lus_pacs.synth.exam import SynthOptions, synthesize

    _logging(verbose=False)
    typer.echo("lus-pacs demo: research software trained on simulated data, not a medical device.")
    # A fresh node each run: the last run's node would find the same exam already processed
    # and the demo would time nothing. Only a node's folder (its job store inside) is removed.
    node_dir = out / "node"
    if node_dir.exists():
        if not (node_dir / "jobs.sqlite").is_file():
            typer.echo(f"{node_dir} is not a node's folder; choose another --out", err=True)
            raise typer.Exit(2)
        # Not the folder of a node still running (the last demo, not yet ended): refused.
        hold_store(node_dir / "jobs.sqlite").close()
        shutil.rmtree(node_dir)
    records = synthesize(out / "scanner", SynthOptions(patients=1, seed=2026, frames=45))
    typer.echo(f"simulated a 6-zone exam in {out / 'scanner'} (ground truth beside each cine)")
    settings = load_settings(
        config,
        data_dir=out / "node",
        port=0,
        metrics_port=0,
        allowed_calling_aes=["DEMO-SCANNER"],
    )
    prepare_workers(settings.workers)
    node = Node(settings)
    node.start()
    try:
        scanner_view = DicomDestination(
            name="node", ae_title=settings.ae_title, host="127.0.0.1", port=node.port
        )
        started = time.monotonic()
        store([r.dicom for r in records], scanner_view, calling_ae="DEMO-SCANNER")
        typer.echo(f"pushed {len(records)} cines to {settings.ae_title} on port {node.port}")
        study = str(pydicom_study(records[0].dicom))
        deadline = started + 300
        while time.monotonic() < deadline and not summary_path(settings, study).exists():
            time.sleep(0.5)
        counts = node.store.jobs.counts()
    finally:
        node.stop()
    if not summary_path(settings, study).exists():
        typer.echo(f"the node did not finish in time: {counts}", err=True)
        raise typer.Exit(1)
    processing_s = time.monotonic() - started
    from lus_pacs.demo import describe_cine
    from lus_pacs.records import CineRecord

    types = node.models.registry.record_types()
    found = [CineRecord.loads(text, types) for text in node.store.studies.records(study)]
    cine_s = sum(r.source.frames / (r.source.fps or settings.default_fps) for r in found)
    typer.echo(
        f"processed {counts.get(JobState.SENT, 0)} cines in {processing_s:.1f} s, from the push "
        f"to the study summary; the cines last {cine_s:.1f} s: {processing_s / cine_s:.1f} "
        "times their duration (real time is 1.0)"
    )
    truth = {r.zone: r for r in records}
    for record in found:
        zone = record.source.zone or "?"
        typer.echo(describe_cine(record, truth[zone]))
    typer.echo(
        "results (SR, KOS, SEG, presentation states, study summary SR and JSON): "
        f"{settings.results_dir / study}"
    )


def pydicom_study(path: Path) -> str:
    """The StudyInstanceUID of a DICOM file."""
    from pydicom import dcmread

    return str(
        dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
    )


def _logging(verbose: bool = True) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
    )


@app.command()
def serve(
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="DICOM port; overrides the settings.")] = None,
) -> None:
    """Run the node: receive cines by C-STORE, process them, send the results on."""
    import logging
    import os
    import signal
    import threading

    from lus_pacs.inference.threads import prepare_workers
    from lus_pacs.node import Node, check_ports
    from lus_pacs.settings import load_settings

    _logging()
    # What the node writes (cines, results, the job store, the audit trail's patient IDs) is
    # for its own user: a host's umask 022 left it all readable by every account.
    os.umask(os.umask(0o077) | 0o077)
    overrides = {"port": port} if port is not None else {}
    settings = load_settings(config, **overrides)
    check_ports(settings)
    stopping = threading.Event()
    started = threading.Event()

    def terminate(*_: object) -> None:
        if not started.is_set():  # loading or warming up: nothing received yet, nothing lost
            raise SystemExit(128 + signal.SIGTERM)
        stopping.set()

    # Before the models load (tens of seconds): a container stopped while it starts exits at
    # once instead of ignoring SIGTERM (PID 1 has no default handler) until it is killed.
    signal.signal(signal.SIGTERM, terminate)
    prepare_workers(settings.workers)
    logging.getLogger("lus_pacs.cli").info("Loading the models: %s", ", ".join(settings.models))
    node = Node(settings)
    try:
        node.start()
    except BaseException:  # a port taken meanwhile: what started stops, the store released
        node.stop()
        raise
    started.set()
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        # An association still waiting on a hung destination would hold the exit until its
        # timeout: everything is in the job store, and that delivery is made after a restart.
        logging.shutdown()
        os._exit(0)


@app.command()
def process(
    paths: Annotated[list[Path], typer.Argument(help="DICOM cines, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for result files and summary.jsonl.")],
    plots: Annotated[
        Path | None,
        typer.Option("--plots", help="Folder for one B-line attention-over-time PNG per cine."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """The node's stages with no network: result DICOM files and summary.jsonl (a record per
    cine) in OUT, then per study its summary in studies.jsonl and the study summary SR.

    Exits 1 when any file could not be processed; the reason is printed.
    """
    from lus_pacs.pipeline import Models, process_paths
    from lus_pacs.settings import load_settings

    settings = load_settings(config)
    # Each file once, however it was named (twice, or in a folder given too): a cine counted
    # twice scored its study's zone and cines twice.
    found = {
        f.resolve(): f
        for p in paths
        for f in ([p] if p.is_file() else p.rglob("*.dcm"))
        if f.is_file()
    }
    files = sorted(found.values())
    _found_some(paths, files)  # before the models load
    if out.exists() and not out.is_dir():
        typer.echo(f"--out {out} is a file; give a folder", err=True)
        raise typer.Exit(2)
    failed = process_paths(
        files,
        out,
        Models.load(settings),
        settings,
        plots,
        lambda line, err: typer.echo(line, err=err),
    )
    typer.echo(f"{len(files) - failed} processed, {failed} failed; results in {out}")
    if failed:
        raise typer.Exit(1)


def _found_some(paths: list[Path], files: list[Path]) -> None:
    """Exit 2, naming why, when a path is missing or nothing was found to work on: a typo or
    an empty export is not a success."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"no such file or folder: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    if not files:
        typer.echo("no DICOM file found (folders are searched for *.dcm files)", err=True)
        raise typer.Exit(2)


class EngineKind(StrEnum):
    LOCAL = "local"
    RAY = "ray"


class RetrieveKind(StrEnum):
    GET = "get"
    MOVE = "move"


@app.command()
def reprocess(
    source: Annotated[
        str,
        typer.Argument(
            help="A folder or DICOMDIR; a PACS as dimse://AET@host:port; a DICOMweb base URL "
            "(http://host:port/dicom-web); or dimse://NAME, dicomweb://NAME: a destination or "
            "web destination of the settings, with its DICOM TLS or credentials."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Results, summary.jsonl, studies.jsonl, exams/*.csv, report.png and the "
            "manifest; default <data_dir>/reprocess.",
        ),
    ] = None,
    send: Annotated[
        str | None,
        typer.Option(
            "--send",
            help="Send results by C-STORE: a configured destination name or AET@host:port.",
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated bundles to run (default: the settings')."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only studies of this date or later (YYYY-MM-DD).")
    ] = None,
    engine: Annotated[EngineKind, typer.Option("--engine", help="Where the cines run.")] = (
        EngineKind.LOCAL
    ),
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Worker processes or Ray actors; default: the cores."
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="A Ray cluster (default: a local Ray).")
    ] = None,
    retrieve: Annotated[
        RetrieveKind,
        typer.Option(
            "--retrieve", help="For a PACS: C-GET, or C-MOVE to this AE (see --move-port)."
        ),
    ] = RetrieveKind.GET,
    move_port: Annotated[
        int, typer.Option("--move-port", help="Port of the C-MOVE receiver the PACS knows us at.")
    ] = 0,
    move_host: Annotated[
        str,
        typer.Option("--move-host", help="Address of the C-MOVE receiver (0.0.0.0: every one)."),
    ] = "127.0.0.1",
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1.0,
            help="Seconds allowed for connecting to the archive and for each of its DIMSE or "
            "HTTP answers (a PACS that recalls studies from near-line storage may need minutes).",
        ),
    ] = 30.0,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Process again the cines that failed in an earlier run (by default a failure "
            "is final, but a worker that died is always tried again).",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Re-run the models over an archive, resumably: what is done with the same model versions
    is skipped, what changed is re-done, a cine that failed is not tried again unless asked.
    Ctrl-C keeps every finished cine."""
    import datetime as dt
    import os

    from lus_pacs.errors import LusPacsError
    from lus_pacs.ingest.archive import open_source
    from lus_pacs.pipeline import Models
    from lus_pacs.reprocess.engine import make_engine
    from lus_pacs.reprocess.report import plot_report, text_report
    from lus_pacs.reprocess.run import Run
    from lus_pacs.settings import DicomDestination, load_settings

    _logging(verbose=False)
    overrides: dict[str, object] = {}
    if models:
        overrides["models"] = tuple(m.strip() for m in models.split(",") if m.strip())
    settings = load_settings(config, **overrides)
    destination = None
    if send:
        if "@" in send:
            ae, _, address = send.partition("@")
            host, _, port = address.rpartition(":")
            try:
                destination = DicomDestination(name=send, ae_title=ae, host=host, port=int(port))
            except ValueError as exc:  # pydantic's ValidationError is one
                raise typer.BadParameter(
                    f"--send {send!r}: give AE@host:port, or a destination named in the "
                    f"settings ({str(exc).splitlines()[0]})"
                ) from exc
        else:
            destination = settings.destination(send)
    try:
        since_date = dt.date.fromisoformat(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(f"--since {since!r}: {exc}") from exc
    folder = out or settings.data_dir / "reprocess"
    try:
        archive = open_source(
            source,
            calling_ae=settings.ae_title,
            retrieve=retrieve.value,
            move_port=move_port,
            move_host=move_host,
            timeout=timeout,
            dicom_nodes=settings.destinations,
            web_servers=settings.web_destinations,
        )
        key = Models.load(settings).key
        runner = make_engine(engine.value, settings, workers or os.cpu_count() or 1, ray_address)
        run = Run(
            settings,
            archive,
            folder,
            runner,
            key,
            destination=destination,
            since=since_date,
            progress=progress,
            retry_failed=retry_failed,
        )
        counts = run.execute()
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: every finished cine is kept in the manifest; run the same command "
            "again to do the rest",
            err=True,
        )
        raise typer.Exit(130) from None
    except LusPacsError as exc:
        typer.echo(f"reprocess failed: {exc}", err=True)
        raise typer.Exit(1) from None
    records = run.records()  # not the cines removed from the archive since they were made
    summaries = run.manifest.summaries(key)
    report = text_report(counts, records, summaries)
    (folder / "report.txt").write_text(report + "\n")
    plot_report(records, summaries, folder / "report.png")
    typer.echo(report)
    typer.echo(f"results in {folder}")
    if counts.failed or counts.problems or counts.send_failures:
        raise typer.Exit(1)


@app.command()
def status(config: ConfigOption = None) -> None:
    """List the node's jobs by state, with each delivery and its last error."""
    store = _node_store(config)
    counts = store.jobs.counts()
    typer.echo(", ".join(f"{state.value}: {n}" for state, n in sorted(counts.items())) or "no jobs")
    for job in store.jobs.rows():
        typer.echo(f"job {job.id} {job.state.value} {job.sop_instance_uid}")
        if job.error:
            typer.echo(f"    error: {job.error}")
        for note in record_notes(job.record):
            typer.echo(f"    {note}")
        _echo_deliveries(job.deliveries)
    for summary in store.studies.summaries():
        typer.echo(f"study summary {summary.id} of {summary.study_instance_uid}")
        _echo_deliveries(summary.deliveries)


def record_notes(record: str | None) -> list[str]:
    """What a processed cine's record says beside its findings that its operator should see:
    kept from the lung models (not assessable, and why), frames left out as damaged, result
    objects not made."""
    if not record:
        return []
    try:
        data = json.loads(record)
    except ValueError:
        return ["record unreadable"]
    notes = []
    assessment = data.get("assessment") or {}
    if assessment.get("assessable") is False:
        reasons = ", ".join(assessment.get("reasons") or ()) or "no reason recorded"
        notes.append(f"not assessable for lung findings: {reasons}")
    damaged = (data.get("source") or {}).get("frames_damaged") or ()
    if damaged:
        frames = ", ".join(str(d.get("frame")) for d in damaged)
        notes.append(f"{len(damaged)} damaged frame(s) left out: {frames}")
    for failed in data.get("outputs_failed") or ():
        notes.append(f"{failed.get('kind')} not made: {failed.get('reason')}")
    return notes


def _node_store(config: Path | None) -> JobStore:
    """The job store of the node these settings run; a store that is not there is not made
    (an empty new one answered "no jobs" for a mistyped data_dir or a missing --config)."""
    from lus_pacs.queue.store import JobStore
    from lus_pacs.settings import load_settings

    path = load_settings(config).store_path
    if not path.is_file():
        typer.echo(
            f"no job store at {path}: give the node's settings with --config "
            "(its data_dir holds jobs.sqlite)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        return JobStore(path)
    except sqlite3.DatabaseError as exc:  # not a database, or damaged
        typer.echo(f"{path}: cannot be read as a job store ({exc})", err=True)
        raise typer.Exit(2) from exc


def _echo_deliveries(deliveries: tuple[tuple[str, DeliveryState, int, str | None], ...]) -> None:
    for destination, state, attempts, error in deliveries:
        detail = f" ({error})" if error else ""
        typer.echo(f"    -> {destination}: {state.value} after {attempts} attempt(s){detail}")


@app.command()
def prune(
    older_than: Annotated[
        float, typer.Option("--older-than", help="Days a study has been done and quiet.", min=0)
    ],
    config: ConfigOption = None,
) -> None:
    """Remove the received instances and result files of studies done (summarised, every
    result sent) and quiet for --older-than days; the job store keeps their rows. Safe while
    the node runs."""
    from lus_pacs.retention import DAY_S
    from lus_pacs.retention import prune as prune_store
    from lus_pacs.settings import load_settings

    results_dir = load_settings(config).results_dir
    done = prune_store(_node_store(config), older_than * DAY_S, results_dir=results_dir)
    typer.echo(
        f"{done.studies} studies pruned: {done.files} files, {done.bytes / 1e6:.1f} MB removed"
    )


@app.command()
def retry(config: ConfigOption = None) -> None:
    """Give failed jobs a fresh retry budget; a running node picks them up. Deliveries to a
    destination no longer in the settings stay failed."""
    from lus_pacs.settings import load_settings

    names = load_settings(config).destination_names
    n = _node_store(config).deliveries.retry_failed(names)
    typer.echo(f"{n} failed job(s) and study summaries queued again")


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, or folders of them.")],
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every tool's whole output.")
    ] = False,
) -> None:
    """Check DICOM files with dciodvfy, dcentvfy (per study), dsrdump (SR, KOS) and dcmpschk
    (presentation states). Exits 1 on any error line, which the tools themselves do not."""
    from lus_pacs.validate import dicom_files
    from lus_pacs.validate import validate as run_validation

    _found_some(paths, dicom_files(p for p in paths if p.exists()))
    report = run_validation(paths)
    for verdict in report.verdicts:
        names = ", ".join(f.name for f in verdict.files)
        if verbose:
            typer.echo(str(verdict))
        typer.echo(f"{'FAIL' if verdict.errors else 'ok':4}  {verdict.tool:8}  {names}")
        for line in verdict.errors:
            typer.echo(f"    {line}")
    failed = len(report.failed)
    typer.echo(f"{len(report.verdicts)} checks, {failed} failed")
    if failed:
        raise typer.Exit(1)


train_app = typer.Typer(help="Train a model family (writes a MONAI bundle).", no_args_is_help=True)
evaluate_app = typer.Typer(
    help="Measure a model family the way its paper does.", no_args_is_help=True
)
pretrain_app = typer.Typer(
    help="Self-supervised pre-training on unlabeled cines.", no_args_is_help=True
)
fit_app = typer.Typer(
    help="Fit a family's measurement head on the real clips (no network training).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")
app.add_typer(fit_app, name="fit")
app.add_typer(pretrain_app, name="pretrain")
app.add_typer(evaluate_app, name="evaluate")


def add_family_commands(apps: Mapping[str, typer.Typer], families: Registry) -> None:
    """Register every family's commands (its ``commands`` module's ``COMMANDS``, verb to
    function) on the sub-app of that verb, named after the family with dashes (``b-lines``).

    The commands modules are light: each command imports its torch code when it runs.
    """
    for family in families.families:
        if family.commands is None:
            continue
        commands = importlib.import_module(family.commands).COMMANDS
        for verb, command in commands.items():
            apps[verb].command(family.name.replace("_", "-"), help=getdoc(command))(command)


add_family_commands(
    {"train": train_app, "evaluate": evaluate_app, "pretrain": pretrain_app, "fit": fit_app},
    FAMILIES,
)
evaluate_app.command("real", help=getdoc(evaluate_real))(evaluate_real)
evaluate_app.command("simulator", help=getdoc(evaluate_simulator))(evaluate_simulator)
