"""The viewer proof: a radiologist's viewer shows what the node sends to PACS.

A simulated cine and its SR, KOS and SEG objects from ``lus-pacs process`` go into Orthanc;
nginx serves OHIF with ``/dicom-web/`` proxied to it (``dicom_nodes/viewer/start.sh``); headless
Chromium, driven by ``dicom_nodes/viewer/screenshot.mjs``, opens the study, reads OHIF's study
panel and screenshots one segmented cine frame before and after loading each SEG. The
screenshots stay in ``build/test-artefacts/viewer/<kind>/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from tests.orthanc import free_ports, running_orthanc
from tests.tools import run_cli

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "dicom_nodes" / "viewer"
OHIF_DIR = Path(os.environ.get("OHIF_DIR", ROOT / "build" / "viewer" / "ohif"))
ARTEFACTS = ROOT / "build" / "test-artefacts" / "viewer"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SEG_KINDS = ("seg", "seg-binary")
"""The LABELMAP SEG (Label Map Segmentation Storage) and the same masks as a BINARY SEG."""
STARTUP_TIMEOUT = 30.0
BROWSER_TIMEOUT = 150.0
CHANGE_THRESHOLD = 30
"""A screen pixel counts as changed when a colour channel moved by more than this (0-255)."""
NEAR_MASK_PX = 3
"""Screen pixels this close to a segmented pixel may change (outline, resampling)."""
MIN_SATURATION_GAIN = 40
"""How much more coloured (channel spread, 0-255) a segmented screen pixel must become."""
# Loopback only: bypass any http_proxy/https_proxy set in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _missing_piece() -> str | None:
    """What the viewer proof needs and this machine lacks, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed"
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        return "nginx is not installed"
    if not CHROMIUM.is_file():
        return f"Chromium is not installed at {CHROMIUM} (set CHROMIUM to another path)"
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (VIEWER / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (bash dicom_nodes/viewer/install.sh)"
    if not (OHIF_DIR / "index.html").is_file():
        return f"OHIF is not unpacked at {OHIF_DIR} (bash dicom_nodes/viewer/install.sh)"
    return None


MISSING = _missing_piece()
pytestmark = pytest.mark.skipif(
    MISSING is not None, reason=f"viewer proof: {MISSING}; make install adds it"
)


@dataclass(frozen=True)
class ViewerStudy:
    """The study in Orthanc behind a running OHIF, and what its SEGs hold."""

    url: str
    study_uid: str
    frame: int
    """The 1-based cine frame the screenshots show: the one with the most segmented pixels."""
    series_numbers: dict[str, int]
    """SeriesNumber of each result kind (``sr``, ``kos``, ``seg``, ``seg-binary``)."""
    masks: dict[str, np.ndarray]
    """Per SEG kind, the pixels of ``frame`` in any segment (rows x columns of the cine)."""
    plane_geometry: dict[str, bool]
    """Per SEG kind, whether its Shared Functional Groups hold Pixel Measures and Plane
    Orientation (Patient), which OHIF needs to open it."""


def _has_plane_geometry(path: Path) -> bool:
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    shared = seg.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    return "PixelMeasuresSequence" in shared[0] and "PlaneOrientationSequence" in shared[0]


def _segmented_frames(path: Path) -> dict[int, np.ndarray]:
    """Source frame number -> pixels in any segment, from a LABELMAP or BINARY SEG file."""
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    masks: dict[int, np.ndarray] = {}
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(source.ReferencedFrameNumber)
        empty = np.zeros((seg.Rows, seg.Columns), bool)
        masks[frame] = masks.get(frame, empty) | (pixels[index] != 0)
    return masks


def _wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited while starting:\n{log.read_text(errors='replace')}")
        try:
            with _OPENER.open(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(0.1)
    raise RuntimeError(f"{url} not answering within {STARTUP_TIMEOUT:g} s")


@pytest.fixture(scope="module")
def viewer_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStudy]:
    """One simulated cine with its results in Orthanc, and OHIF behind nginx in front of it."""
    work = tmp_path_factory.mktemp("viewer")
    run_cli(
        "synth", "--out", str(work / "exam"), "--patients", "1", "--seed", "3", "--frames", "20"
    )
    cine = sorted((work / "exam").glob("*/*.dcm"))[0]
    # Three segmented frames (1, 8, 15) in one run without dropout: seconds, not minutes.
    config = work / "lus-pacs.toml"
    config.write_text(
        'output_kinds = ["sr", "kos", "seg", "seg-binary"]\n'
        'models = ["b_lines", "severity", "segmentation"]\n'
        f'data_dir = "{work / "node"}"\n'
        "[segmentation]\n"
        'frames = "every"\n'
        "every = 7\n"
        "mc_samples = 0\n"
    )
    results = work / "results"
    run_cli("process", str(cine), "--out", str(results), "--config", str(config))
    (record,) = [json.loads(line) for line in (results / "summary.jsonl").read_text().splitlines()]
    paths = {output["kind"]: results / output["path"] for output in record["outputs"]}
    series_numbers = {
        kind: int(pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber)
        for kind, path in paths.items()
    }
    by_kind = {kind: _segmented_frames(paths[kind]) for kind in SEG_KINDS}
    frame = max(by_kind["seg"], key=lambda f: int(by_kind["seg"][f].sum()))
    assert by_kind["seg"][frame].sum() > 500, "the model segmented (almost) nothing to show"

    with running_orthanc(work) as orthanc:
        for path in [cine, *paths.values()]:
            orthanc.upload(path)
        (http_port,) = free_ports(1)
        nginx_dir = work / "nginx"
        nginx_dir.mkdir()
        log = nginx_dir / "start.log"
        with log.open("wb") as out:
            nginx = subprocess.Popen(
                [
                    "bash",
                    str(VIEWER / "start.sh"),
                    str(nginx_dir),
                    str(http_port),
                    str(orthanc.http_port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{http_port}"
            _wait_for_http(f"{url}/app-config.js", nginx, log)
            _wait_for_http(f"{url}/dicom-web/studies", nginx, log)
            yield ViewerStudy(
                url=url,
                study_uid=str(pydicom.dcmread(cine, stop_before_pixels=True).StudyInstanceUID),
                frame=frame,
                series_numbers=series_numbers,
                masks={kind: by_kind[kind][frame] for kind in SEG_KINDS},
                plane_geometry={kind: _has_plane_geometry(paths[kind]) for kind in SEG_KINDS},
            )
        finally:
            nginx.terminate()  # SIGTERM: nginx's fast shutdown
            nginx.wait(timeout=20)


@pytest.fixture(scope="module")
def open_in_viewer(
    viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Any]]:
    """Run screenshot.mjs once per SEG kind (cached): its JSON report, the screenshots copied to
    the artefact folder."""
    reports: dict[str, dict[str, Any]] = {}

    def open_with(kind: str) -> dict[str, Any]:
        if kind in reports:
            return reports[kind]
        out = tmp_path_factory.mktemp(f"screenshots-{kind}")
        command = [
            "node",
            str(VIEWER / "screenshot.mjs"),
            viewer_study.url,
            viewer_study.study_uid,
            str(out),
            "--seg-series",
            str(viewer_study.series_numbers[kind]),
            "--frame",
            str(viewer_study.frame),
        ]
        env = {**os.environ, "CHROMIUM": str(CHROMIUM)}
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, env=env, check=False
        )
        assert result.returncode == 0, f"screenshot.mjs failed:\n{result.stderr}"
        report: dict[str, Any] = json.loads(result.stdout)
        artefacts = ARTEFACTS / kind
        shutil.rmtree(artefacts, ignore_errors=True)
        artefacts.mkdir(parents=True)
        for key, name in (("without", "without-seg.png"), ("with", "with-seg.png")):
            shutil.copy2(out / name, artefacts / name)
            report["screenshots"][key] = str(artefacts / name)
        (artefacts / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        reports[kind] = report
        return report

    return open_with


def test_the_study_panel_lists_the_cine_and_its_sr_kos_and_seg_series(
    viewer_study: ViewerStudy, open_in_viewer: Callable[[str], dict[str, Any]]
) -> None:
    panel = open_in_viewer("seg")["series"]
    modality_of = {entry["series_number"]: entry["modality"] for entry in panel}
    numbers = viewer_study.series_numbers
    assert modality_of[numbers["sr"]] == "SR"
    assert modality_of[numbers["kos"]] == "KO"
    assert modality_of[numbers["seg"]] == "SEG"
    assert modality_of[numbers["seg-binary"]] == "SEG"
    assert "US" in modality_of.values()  # the cine itself
    results = [entry for entry in panel if entry["modality"] != "US"]
    assert all(entry["description"].startswith("lus-pacs AI") for entry in results), panel


def _screen_mask(
    mask: np.ndarray, mapping: dict[str, float], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Screen pixels (of a ``shape`` screenshot) showing a pixel of ``mask``, and those showing
    any image pixel; ``mapping`` is screenshot.mjs's image_to_page."""
    rows, columns = mask.shape
    column = np.floor((np.arange(shape[1]) - mapping["x0"]) / mapping["sx"] + 0.5).astype(int)
    row = np.floor((np.arange(shape[0]) - mapping["y0"]) / mapping["sy"] + 0.5).astype(int)
    in_x = (column >= 0) & (column < columns)
    in_y = (row >= 0) & (row < rows)
    image = in_y[:, None] & in_x[None, :]
    shown = np.zeros(shape, bool)
    shown[image] = mask[np.clip(row, 0, rows - 1)[:, None], np.clip(column, 0, columns - 1)][image]
    return shown, image


@pytest.mark.parametrize("kind", SEG_KINDS)
def test_loading_the_seg_colours_the_segmented_pixels_of_the_cine(
    kind: str, viewer_study: ViewerStudy, open_in_viewer: Callable[[str], dict[str, Any]]
) -> None:
    report = open_in_viewer(kind)
    seg = report["seg"]
    # OHIF 3.13 opens a SEG only with Pixel Measures and Plane Orientation in its Shared
    # Functional Groups (without them: "Something went wrong"); both default SEG kinds carry them.
    assert viewer_study.plane_geometry[kind], f"the {kind} SEG has no plane geometry"
    assert seg["loaded"], (
        f"OHIF did not load the {kind} SEG: {seg['error']}\npage console:\n"
        + "\n".join(report["console"])
    )
    assert report["frame"] == viewer_study.frame
    # Same frame, same zoom and pan in both shots, so their pixels are comparable.
    assert report["image_to_page"] == report["image_to_page_with_seg"]

    without = np.asarray(Image.open(report["screenshots"]["without"]).convert("RGB"), np.int16)
    with_seg = np.asarray(Image.open(report["screenshots"]["with"]).convert("RGB"), np.int16)
    changed = np.abs(with_seg - without).max(axis=2) > CHANGE_THRESHOLD
    segmented, image = _screen_mask(
        viewer_study.masks[kind], report["image_to_page"], changed.shape
    )
    near = ndimage.binary_dilation(segmented, iterations=NEAR_MASK_PX)
    on_segment = int((changed & near).sum())
    elsewhere_on_image = int((changed & image & ~near).sum())
    # The overlay colours most of the segmented pixels, and (almost) nothing else on the image.
    assert on_segment >= 0.8 * segmented.sum(), (on_segment, int(segmented.sum()))
    assert elsewhere_on_image <= 0.05 * on_segment, (elsewhere_on_image, on_segment)
    # In colour (the segments' display colours, green to red), not darkened grey: the grey cine
    # gains saturation where the SEG is drawn. (With highdicom's background segment first in a
    # LABELMAP's Segment Sequence, OHIF 3.13 drew score 0 in the background's black.)
    saturation_gain = _saturation(with_seg) - _saturation(without)
    gain_on_segment = float(np.median(saturation_gain[segmented & changed]))
    assert gain_on_segment > MIN_SATURATION_GAIN, gain_on_segment


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """Per screen pixel, how far from grey: the spread of its three channels (0-255)."""
    return rgb.max(axis=2) - rgb.min(axis=2)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/dicom-web/studies"),
        ("DELETE", "/dicom-web/studies"),
        ("GET", "/dicom-web/servers"),
    ],
)
def test_the_viewer_passes_only_reads_to_the_pacs(
    viewer_study: ViewerStudy, method: str, path: str
) -> None:
    """nginx lets the viewer read the PACS's DICOMweb, and nothing else through it: no STOW-RS
    or deletion, not the plugin's routes that make the PACS send studies elsewhere."""
    data = b"" if method != "GET" else None
    request = urllib.request.Request(f"{viewer_study.url}{path}", data=data, method=method)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _OPENER.open(request, timeout=10)
    assert refused.value.code == 403
    reads = urllib.request.Request(f"{viewer_study.url}/dicom-web/studies", method="GET")
    with _OPENER.open(reads, timeout=10) as answer:
        assert answer.status == 200
