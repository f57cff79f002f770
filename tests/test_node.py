"""The node end to end with its real neighbours on loopback: dcmtk's storescu as the scanner,
``lus-pacs serve`` as a process, Orthanc as the PACS, dciodvfy as the judge."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from lus_pacs.encode.readback import read_study_summary
from lus_pacs.node import backoff_s
from tests.node_process import NodeProcess, echo, lus_pacs, storescu, wait_for, write_config
from tests.orthanc import OrthancHandle, free_ports, running_orthanc
from tests.tools import dciodvfy_errors

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("Orthanc") is None,
    reason="dcmtk or Orthanc not installed (make install adds them)",
)

SR = pydicom.uid.ComprehensiveSRStorage
KOS = pydicom.uid.KeyObjectSelectionDocumentStorage
SEG = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage
SEG_BINARY = pydicom.uid.SegmentationStorage
CSPS = pydicom.uid.ColorSoftcopyPresentationStateStorage
DELIVERY_MODELS = ["b_lines", "severity"]
"""The tests of queueing and delivery run without segmentation: they count objects per source,
and each segmented key frame costs seconds of Monte-Carlo dropout on a CPU."""
DELIVERY_KINDS = ["sr", "kos"]
"""... and send two objects per cine, none per study: the counts stay simple."""


@pytest.fixture(scope="module")
def sources(synth_exams: Path) -> list[Path]:
    """Three zones of a simulated exam and pydicom's real 120-frame JPEG Baseline cine."""
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    real = Path(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    return [exam / "R1.dcm", exam / "R2.dcm", exam / "L1.dcm", real]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancHandle]:
    with running_orthanc(tmp_path) as handle:
        yield handle


def _by_class(orthanc: OrthancHandle) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for ds in orthanc.datasets():
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def _references_only(ds: pydicom.Dataset, uid: str) -> bool:
    """Whether the object references this one source and no other (a cine's own results)."""
    return {u for u, _ in _referenced(ds)} == {uid}


def _referenced(ds: pydicom.Dataset) -> list[tuple[str, list[int]]]:
    """(SOP Instance UID, frame numbers) of every image reference in an SR or KOS tree, of
    every SEG frame's source, or of every presentation state annotation."""
    found = []
    for annotation in ds.get("GraphicAnnotationSequence", []):
        for ref in annotation.ReferencedImageSequence:
            found.append((str(ref.ReferencedSOPInstanceUID), _frames_of(ref)))
    for group in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in group.get("DerivationImageSequence", []):
            for ref in derivation.SourceImageSequence:
                found.append((str(ref.ReferencedSOPInstanceUID), _frames_of(ref)))
    for item in ds.get("ContentSequence", []):
        for ref in item.get("ReferencedSOPSequence", []):
            if str(ref.ReferencedSOPClassUID).startswith(SEGMENTATION_CLASSES):
                continue  # the SR's pointer to its own cine's SEG, not a source
            found.append((str(ref.ReferencedSOPInstanceUID), _frames_of(ref)))
        found += _referenced(item)
    return found


SEGMENTATION_CLASSES = "1.2.840.10008.5.1.4.1.1.66."


def test_pushed_cines_come_back_to_pacs_as_the_whole_object_set(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    node = NodeProcess(write_config(tmp_path, orthanc))
    node.start()
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in sources}
    # The simulated lung cines get SR, KOS, LABELMAP and BINARY SEG and CSPS; pydicom's cine, an
    # echocardiogram, is not assessable: no lung finding, so no SEG. A summary SR per study.
    lung = sources[:-1]
    expected = 5 * len(lung) + 3 + len(studies)
    try:
        assert echo(node.port).returncode == 0
        assert echo(node.port, aet="INTRUDER").returncode != 0
        pushed = storescu(node.port, sources)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        wait_for(lambda: orthanc.count() >= expected, 300, "the objects of every source and study")
    finally:
        node.stop()
    # Warmed up on a simulated cine before it listened; nothing of that cine left the node
    # (the counts below are the pushed sources' own).
    log = node.log_text()
    assert log.index("Models warmed up") < log.index("listening on"), log[-2000:]
    results = _by_class(orthanc)
    assert len(results[KOS]) == len(results[CSPS]) == len(sources)
    assert len(results[SEG]) == len(results[SEG_BINARY]) == len(lung)
    assert len(results[SR]) == len(sources) + len(studies)
    for path in sources:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        kinds = (SR, KOS, SEG, SEG_BINARY, CSPS) if path in lung else (SR, KOS, CSPS)
        for kind in kinds:
            (obj,) = [
                ds
                for ds in results[kind]
                if _references_only(ds, source.SOPInstanceUID) and ds.SeriesNumber != 906
            ]
            assert obj.StudyInstanceUID == source.StudyInstanceUID
            assert obj.PatientID == source.PatientID
            assert obj.SeriesInstanceUID != source.SeriesInstanceUID
            frames = [f for uid, fs in _referenced(obj) for f in fs if uid == source.SOPInstanceUID]
            assert frames, f"{kind} of {path.name} references no frame"
            assert all(1 <= f <= int(source.NumberOfFrames) for f in frames)
    for study in studies:
        (summary,) = [
            ds
            for ds in results[SR]
            if ds.StudyInstanceUID == study and ds.SeriesNumber == 906  # the study summary
        ]
        cines = {
            p
            for p in sources
            if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == study
        }
        assert {uid for uid, _ in _referenced(summary)} == {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in cines
        }
    for ds in results[SR] + results[KOS] + results[SEG] + results[SEG_BINARY] + results[CSPS]:
        out = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(out, enforce_file_format=True)
        assert dciodvfy_errors(out) == [], out
    summaries = list((tmp_path / "node" / "results").glob("*/study-summary.json"))
    assert summaries, node.log_text()[-2000:]
    assert json.loads(summaries[0].read_text())["cines"] >= 1
    # Patient data for the node's own user only (a host's umask 022 left it world-readable).
    written = [p for p in (tmp_path / "node").rglob("*") if p.is_file()]
    assert written
    assert [p for p in written if p.stat().st_mode & 0o077] == []


def test_a_crash_after_acknowledging_loses_nothing_and_sends_once(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    node = NodeProcess(
        write_config(tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS)
    )
    node.start()
    pushed = storescu(node.port, sources[:3])
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    node.kill()  # acknowledged, and at most partly processed or sent
    before = orthanc.count()
    assert before < 6
    node.start()
    try:
        wait_for(lambda: orthanc.count() >= 6, 180, "every result after the restart")
        status = lus_pacs("status", "--config", str(node.config))
        wait_for(
            lambda: "sent: 3" in lus_pacs("status", "--config", str(node.config)).stdout,
            30,
            "all jobs sent",
        )
    finally:
        node.stop()
    assert orthanc.count() == 6, status.stdout  # exactly once: no duplicate results


def test_outage_retries_then_budget_zero_fails_visibly_and_retry_delivers(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    orthanc.stop()
    (tmp_path / "a").mkdir()
    node = NodeProcess(
        write_config(tmp_path / "a", orthanc, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS)
    )
    node.start()
    try:
        assert storescu(node.port, sources[:1]).returncode == 0
        wait_for(
            lambda: "attempt" in node.log_text() and "failed" in node.log_text(),
            120,
            "a failed delivery attempt",
        )
        orthanc.start()
        wait_for(lambda: orthanc.count() == 2, 120, "the results after the PACS came back")
    finally:
        node.stop()

    orthanc.stop()
    (tmp_path / "b").mkdir()
    config = write_config(
        tmp_path / "b", orthanc, retry_budget=0, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS
    )
    node = NodeProcess(config)
    node.start()
    try:
        assert storescu(node.port, sources[1:2]).returncode == 0
        wait_for(
            lambda: "failed: 1" in lus_pacs("status", "--config", str(config)).stdout,
            120,
            "the job shown as failed",
        )
        status = lus_pacs("status", "--config", str(config)).stdout
        assert "-> pacs: failed after 1 attempt(s)" in status
        orthanc.start()
        assert (
            "1 failed job(s) and study summaries queued again"
            in lus_pacs("retry", "--config", str(config)).stdout
        )
        wait_for(lambda: orthanc.count() == 4, 120, "the retried results")
    finally:
        node.stop()


def test_an_unavailable_pacs_is_tried_by_one_delivery_at_a_time(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    """With the PACS down (or refusing this node's credentials), every due delivery was tried
    in turn, each attempt one more connection timeout or one more refused login (an account
    lockout at a DICOMweb server): a destination that is unavailable holds all of them, and
    one tries when the wait is over. Its recovery is the test above."""
    orthanc.stop()
    try:
        (metrics,) = free_ports(1)
        config = write_config(
            tmp_path,
            orthanc,
            retry_base_s=60.0,
            models=DELIVERY_MODELS,
            output_kinds=DELIVERY_KINDS,
            metrics_port=metrics,
        )
        node = NodeProcess(config)
        node.start()
        try:
            assert storescu(node.port, sources[:3]).returncode == 0
            wait_for(
                lambda: "encoded: 3" in lus_pacs("status", "--config", str(config)).stdout,
                120,
                "three cines processed, their results waiting for the PACS",
            )
            time.sleep(1)  # an exporter trying each due delivery would have by now
            # /healthz names it (without calling the node unhealthy: a restart brings no PACS).
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(f"http://127.0.0.1:{metrics}/healthz", timeout=10) as r:
                checks = json.loads(r.read())["checks"]
            assert list(checks["unavailable_destinations"]) == ["pacs"]
        finally:
            node.stop()
        tries = re.findall(r"Delivery of job \d+ to pacs failed \(attempt", node.log_text())
        assert len(tries) == 1, node.log_text()[-3000:]
        assert "pacs is unavailable" in node.log_text()
        status = lus_pacs("status", "--config", str(config)).stdout
        # The one that tried, and the others not yet tried (the study's summary may be one).
        assert status.count("-> pacs: pending after 1 attempt(s)") == 1, status
        assert status.count("-> pacs: pending after 0 attempt(s)") >= 2, status
    finally:
        orthanc.start()


def test_bad_input_fails_with_a_reason_and_the_node_keeps_serving(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    broken = pydicom.dcmread(sources[0])
    broken.SOPInstanceUID = pydicom.uid.generate_uid()
    frames = list(generate_frames(broken.PixelData, number_of_frames=broken.NumberOfFrames))
    # The last frame is missing (a frame cut short is read and named damaged instead).
    broken.PixelData = encapsulate(frames[:-1])
    truncated = tmp_path / "truncated.dcm"
    broken.save_as(truncated, enforce_file_format=True)
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    config = write_config(tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS)
    node = NodeProcess(config)
    node.start()
    try:
        refused = storescu(node.port, [ct])
        assert "Refused: SOPClassNotSupported" in refused.stdout + refused.stderr
        assert storescu(node.port, [truncated]).returncode == 0  # acknowledged: it is on disk
        wait_for(
            lambda: f"Failed {broken.SOPInstanceUID}" in node.log_text(),
            120,
            "the processing failure in the log",
        )
        assert storescu(node.port, sources[1:2]).returncode == 0
        wait_for(lambda: orthanc.count() == 2, 180, "the next cine's results")
        # The exam's summary counts the cine it could make and names the one it could not.
        summary = tmp_path / "node" / "results" / broken.StudyInstanceUID / "study-summary.json"
        wait_for(summary.exists, 60, "the study's summary")
    finally:
        node.stop()
    assert f"NumberOfFrames is {len(frames)} but the Pixel Data holds {len(frames) - 1}" in (
        node.log_text()
    )
    written = json.loads(summary.read_text())
    assert written["cines"] == 1
    assert list(written["failed_cines"]) == [broken.SOPInstanceUID]
    status = lus_pacs("status", "--config", str(config)).stdout
    assert f"failed {broken.SOPInstanceUID}" in status


def test_process_gives_the_records_the_node_made(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    config = write_config(tmp_path, orthanc)
    node = NodeProcess(config)
    node.start()
    try:
        assert storescu(node.port, sources[:2]).returncode == 0
        wait_for(lambda: orthanc.count() >= 10, 240, "the node's results")
    finally:
        node.stop()
    from lus_pacs.queue.store import JobStore

    node_records = [
        json.loads(r) for r in JobStore(tmp_path / "node" / "jobs.sqlite").studies.records()
    ]
    out, plots = tmp_path / "offline", tmp_path / "plots"
    result = lus_pacs(
        "process", *map(str, sources[:2]), "--out", str(out), "--plots", str(plots),
        "--config", str(config),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources[:2]}
    assert {p.name for p in plots.glob("*.png")} == {f"{uid}_b_lines.png" for uid in uids}
    offline = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]

    def comparable(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in ("timings_ms",)}

    key = lambda r: r["source"]["sop_instance_uid"]  # noqa: E731
    assert sorted(map(comparable, offline), key=key) == sorted(
        map(comparable, node_records), key=key
    )


def test_the_sr_key_frame_points_into_the_true_b_line_frames(
    tmp_path: Path, orthanc: OrthancHandle, synth_exams: Path
) -> None:
    truths = [json.loads(p.read_text()) for p in sorted(synth_exams.glob("*/*.truth.json"))]
    # The cine with the most B-line frames: the clearest case for a small model.
    truth = max(truths, key=lambda t: len(t["clip"]["b_line_frames"]))
    assert truth["clip"]["b_lines"]
    cine = synth_exams / truth["patient_id"] / truth["file"]
    node = NodeProcess(
        write_config(tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS)
    )
    node.start()
    try:
        assert storescu(node.port, [cine]).returncode == 0
        wait_for(lambda: orthanc.count() == 2, 180, "the SR and KOS of the cine")
    finally:
        node.stop()
    (sr,) = _by_class(orthanc)[SR]
    best = [
        item
        for item in _walk(sr)
        if item.get("ConceptNameCodeSequence")
        and item.ConceptNameCodeSequence[0].CodeValue == "121080"  # Best illustration of finding
    ]
    (key,) = best
    frames = _frames_of(key.ReferencedSOPSequence[0])
    assert frames
    assert set(frames) <= set(truth["clip"]["b_line_frames"])


def test_the_study_summary_totals_the_zone_scores(
    tmp_path: Path, orthanc: OrthancHandle, synth_exams: Path
) -> None:
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    cines = sorted(exam.glob("*.dcm"))
    config = write_config(
        tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=[*DELIVERY_KINDS, "study-sr"]
    )
    node = NodeProcess(config)
    node.start()
    try:
        assert storescu(node.port, cines).returncode == 0
        study = pydicom.dcmread(cines[0], stop_before_pixels=True).StudyInstanceUID
        summary_file = tmp_path / "node" / "results" / study / "study-summary.json"
        wait_for(summary_file.is_file, 300, "the study summary")
        wait_for(
            lambda: orthanc.count() >= 2 * len(cines) + 1,
            120,
            "an SR and a KOS per cine, a summary",
        )
    finally:
        node.stop()
    from lus_pacs.queue.store import JobStore

    records = [json.loads(r) for r in JobStore(tmp_path / "node" / "jobs.sqlite").studies.records()]
    scores = {r["source"]["zone"]: r["severity"]["score"] for r in records}
    assert len(scores) == len(cines)
    summary = json.loads(summary_file.read_text())["lus_score"]
    assert summary["per_zone"] == scores
    assert summary["total"] == sum(scores.values())
    assert summary["zones_scored"] == len(cines)
    # Each zone's score is the shipped bundle's score of that cine, as `lus-pacs process` gives it.
    from lus_pacs.families.severity.inference import SeverityModel
    from lus_pacs.imaging.decode import read_cine
    from lus_pacs.settings import Settings

    model = SeverityModel.load(Settings().models_dir / "severity")
    for truth in (json.loads(t.read_text()) for t in exam.glob("*.truth.json")):
        expected = model.predict(read_cine(exam / truth["file"])).score
        assert scores[truth["zone"]] == expected, (truth["zone"], scores)
    (summary_sr,) = [ds for ds in _by_class(orthanc)[SR] if ds.SeriesNumber == 906]
    exam_file = tmp_path / "summary-sr.dcm"
    summary_sr.save_as(exam_file, enforce_file_format=True)
    assert read_study_summary(exam_file)["lus_score"] == summary
    # The SR of each cine carries its clip score.
    for sr in _by_class(orthanc)[SR]:
        if sr.SeriesNumber == 906:
            continue
        zone_scores = [
            float(item.MeasuredValueSequence[0].NumericValue)
            for item in _walk(sr)
            if item.get("ConceptNameCodeSequence")
            and item.ConceptNameCodeSequence[0].CodeValue == "LUS003"
            and "MeasuredValueSequence" in item
        ]
        source_uid = (
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
        (record,) = [r for r in records if r["source"]["sop_instance_uid"] == source_uid]
        assert zone_scores[0] == record["severity"]["score"]


def _walk(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items += _walk(item)
    return items


def _frames_of(ref: pydicom.Dataset) -> list[int]:
    value = ref.get("ReferencedFrameNumber")
    values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
    return [int(v) for v in values if v is not None]


def test_interleaved_patients_on_parallel_associations_stay_apart(
    tmp_path: Path, orthanc: OrthancHandle, synth_exams: Path
) -> None:
    """Two patients' exams pushed at once, each association mixing both patients' cines:
    every result carries its own source's patient and study, never the other's."""
    exams = sorted(p for p in synth_exams.iterdir() if p.is_dir())[:2]
    a, b = (sorted(exam.glob("*.dcm"))[:3] for exam in exams)
    first = [a[0], b[1], a[2]]
    second = [b[0], a[1], b[2]]
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in a + b)
    }
    assert len({ds.PatientID for ds in sources.values()}) == 2
    kinds = [*DELIVERY_KINDS, "pr", "study-sr"]
    config = write_config(tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=kinds)
    node = NodeProcess(config)
    node.start()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pushes = list(pool.map(lambda files: storescu(node.port, files), [first, second]))
        assert all(p.returncode == 0 for p in pushes), [p.stdout + p.stderr for p in pushes]
        # SR, KOS and CSPS per cine; per study a summary SR once its three cines are in (an
        # association's release may summarise a study early: a later summary supersedes it).
        wait_for(lambda: _complete_summaries(orthanc, sources) == 2, 300, "both final summaries")
    finally:
        node.stop()
    results = [ds for ds in orthanc.datasets() if str(ds.SOPInstanceUID) not in sources]
    summaries = [ds for ds in results if ds.get("SeriesNumber") == 906]
    assert len(results) - len(summaries) == 3 * 6
    for ds in results:
        referenced = {uid for uid, _ in _referenced(ds)}
        assert referenced, ds.SOPClassUID
        assert referenced <= set(sources)
        for uid in referenced:
            source = sources[uid]
            for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
                assert ds.get(keyword) == source.get(keyword), (keyword, ds.SOPClassUID)
    by_patient: dict[str, list[tuple[int, int, pydicom.Dataset]]] = {}
    for summary in summaries:
        cines = {uid for uid, _ in _referenced(summary)}
        assert cines <= {u for u, ds in sources.items() if ds.PatientID == summary.PatientID}
        by_patient.setdefault(str(summary.PatientID), []).append(
            (int(summary.InstanceNumber), len(cines), summary)
        )
    # A study summarised early (an association's release) and again: each later summary is
    # numbered after the earlier ones and names the one before it.
    for made in by_patient.values():
        made.sort(key=lambda m: m[0])
        assert [number for number, _, _ in made] == list(range(1, len(made) + 1))
        assert [covered for _, covered, _ in made] == sorted(covered for _, covered, _ in made)
        for (_, _, before), (_, _, after) in itertools.pairwise(made):
            (document,) = after.PredecessorDocumentsSequence
            (earlier,) = document.ReferencedSeriesSequence[0].ReferencedSOPSequence
            assert earlier.ReferencedSOPInstanceUID == before.SOPInstanceUID


def _complete_summaries(orthanc: OrthancHandle, sources: Mapping[str, pydicom.Dataset]) -> int:
    """How many studies have a summary SR in Orthanc that covers all their cines."""
    studies: dict[str, set[str]] = {}
    for uid, ds in sources.items():
        studies.setdefault(str(ds.StudyInstanceUID), set()).add(uid)
    complete = set()
    for ds in orthanc.datasets():
        if ds.get("SeriesNumber") == 906:
            cines = {uid for uid, _ in _referenced(ds)}
            if cines == studies.get(str(ds.StudyInstanceUID)):
                complete.add(str(ds.StudyInstanceUID))
    return len(complete)


def _get(node: NodeProcess, path: str) -> bytes:
    """GET ``path`` from the node's metrics server (its port is in the node's log)."""
    import re
    import urllib.request

    (port,) = re.findall(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics", node.log_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        assert answer.status == 200
        body: bytes = answer.read()
    return body


def _scrape(node: NodeProcess) -> dict[str, float]:
    """The node's /metrics, as sample name with labels -> value."""
    text = _get(node, "/metrics").decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _healthz(node: NodeProcess) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_get(node, "/healthz"))
    return doc


def test_the_metrics_move_for_a_pushed_cine(
    tmp_path: Path, orthanc: OrthancHandle, sources: list[Path]
) -> None:
    node = NodeProcess(
        write_config(tmp_path, orthanc, models=DELIVERY_MODELS, output_kinds=DELIVERY_KINDS)
    )
    node.start()
    try:
        before = _scrape(node)
        assert before['lus_pacs_jobs{state="queued"}'] == 0
        assert echo(node.port, aet="INTRUDER").returncode != 0  # a refusal, audited
        assert storescu(node.port, sources[:1]).returncode == 0
        wait_for(lambda: orthanc.count() >= 2, 120, "the results in the PACS")
        wait_for(
            lambda: _scrape(node).get('lus_pacs_results_sent_total{destination="pacs"}') == 1,
            30,
            "the delivery counted",
        )
        after = _scrape(node)
        health = _healthz(node)
    finally:
        node.stop()
    assert health["status"] == "ok"
    assert health["checks"]["job_store"] is True
    assert all(health["checks"]["threads"].values())
    # The audit trail: the refused association (with why), the accepted one, the instance
    # (with its patient) and the result sent.
    lines = [
        json.loads(line)
        for line in (tmp_path / "node" / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    source = pydicom.dcmread(sources[0], stop_before_pixels=True)
    (instance,) = [line for line in lines if line["event"] == "instance"]
    assert instance["outcome"] == "new"
    assert instance["sop_instance_uid"] == source.SOPInstanceUID
    assert instance["patient_id"] == source.PatientID
    assert instance["calling_ae"] == "SCANNER"
    assert instance["status"] == "0x0000"
    assert any(line["event"] == "association" and line["outcome"] == "accepted" for line in lines)
    (refusal,) = [line for line in lines if line["outcome"] == "rejected"]
    assert refusal["event"] == "association"
    assert refusal["calling_ae"] == "INTRUDER"
    assert refusal["reason"] == "calling AE title not recognised"
    (result,) = [line for line in lines if line["event"] == "result"]
    assert result["outcome"] == "sent"
    assert result["destination"] == "pacs"
    # ... and the same lines counted for the metrics, by event and outcome.
    for event in ("association", "instance", "result"):
        for outcome in {line["outcome"] for line in lines if line["event"] == event}:
            key = f'lus_pacs_audit_events_total{{event="{event}",outcome="{outcome}"}}'
            assert after[key] == sum(
                1 for line in lines if line["event"] == event and line["outcome"] == outcome
            ), key
    assert len(result["sop_instance_uids"]) == orthanc.count()  # every object it stored
    assert after['lus_pacs_instances_received_total{outcome="new"}'] == 1
    assert after['lus_pacs_cines_processed_total{outcome="done"}'] == 1
    assert after['lus_pacs_jobs{state="sent"}'] == 1
    assert after["lus_pacs_queue_depth"] == 0
    assert after["lus_pacs_oldest_queued_seconds"] == 0
    assert after['lus_pacs_deliveries{destination="pacs",state="sent"}'] == 1
    assert after['lus_pacs_deliveries{destination="pacs",state="failed"}'] == 0  # 0, not gone
    # Every stage of the cine was timed once: read, decode, each model, encode.
    for stage in ("read", "decode", *DELIVERY_MODELS, "encode"):
        assert after[f'lus_pacs_stage_seconds_count{{stage="{stage}"}}'] == 1, stage
        assert after[f'lus_pacs_stage_seconds_sum{{stage="{stage}"}}'] > 0, stage


def test_the_wait_between_tries_doubles_up_to_its_limit_for_any_budget() -> None:
    assert [backoff_s(n, 2.0, 300.0) for n in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(8, 2.0, 300.0) == 300.0
    assert backoff_s(5000, 2.0, 300.0) == 300.0  # a budget of a week of tries
