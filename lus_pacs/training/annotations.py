"""The annotation formats the papers used, read and written, so a site's own labels load the same
way as simulated truth.

* VIA (VGG Image Annotator) JSON, paper 001: a clip label (B-line / non-B-line) and the temporal
  segments of B-line frames. Times are seconds; frames are 1-based.
* LabelMe JSON, paper 003: polygons labelled score0..score3 on one frame.
* Frame-score CSV, paper 003: ``file,frame,score``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lus_pacs.errors import AnnotationError

B_LINE, NO_B_LINE = "B-line", "non-B-line"
_SCORE_LABELS = ("score0", "score1", "score2", "score3")
BACKGROUND = 4


@dataclass(frozen=True)
class ClipBLines:
    """Paper 001's annotation of one clip."""

    file: str
    fps: float
    n_frames: int
    b_line_frames: tuple[int, ...]
    """1-based frame numbers showing B-lines."""

    @property
    def label(self) -> str:
        return B_LINE if self.b_line_frames else NO_B_LINE


def _segments(frames: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for f in sorted(frames):
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs


def write_via(path: Path, clips: Iterable[ClipBLines]) -> None:
    """A VIA 3 video project: one file entry per clip, a clip-level label and B-line segments."""
    files: dict[str, dict[str, object]] = {}
    metadata: dict[str, dict[str, object]] = {}
    for i, clip in enumerate(clips, start=1):
        fid = str(i)
        files[fid] = {"fid": fid, "fname": clip.file, "type": 4, "loc": 1, "src": ""}
        metadata[f"{fid}_clip"] = {
            "vid": fid,
            "flg": 0,
            "z": [],
            "xy": [],
            "av": {"1": clip.label, "3": str(clip.fps), "4": str(clip.n_frames)},
        }
        for n, (first, last) in enumerate(_segments(clip.b_line_frames)):
            # Frame f covers [(f-1)/fps, f/fps); a segment is the span of its frames.
            metadata[f"{fid}_bl{n}"] = {
                "vid": fid,
                "flg": 0,
                "z": [round((first - 1) / clip.fps, 6), round(last / clip.fps, 6)],
                "xy": [],
                "av": {"2": B_LINE},
            }
    project = {
        "project": {"pname": "lus-pacs B-lines", "vid_list": list(files)},
        "config": {"file": {"loc_prefix": {"1": ""}}},
        "attribute": {
            "1": {
                "aname": "clip_label",
                "anchor_id": "FILE1_Z0_XY0",
                "type": 4,
                "options": {B_LINE: B_LINE, NO_B_LINE: NO_B_LINE},
            },
            "2": {
                "aname": "B-line",
                "anchor_id": "FILE1_Z2_XY0",
                "type": 4,
                "options": {B_LINE: B_LINE},
            },
            "3": {"aname": "fps", "anchor_id": "FILE1_Z0_XY0", "type": 1},
            "4": {"aname": "frames", "anchor_id": "FILE1_Z0_XY0", "type": 1},
        },
        "file": files,
        "view": {fid: {"fid_list": [fid]} for fid in files},
        "metadata": metadata,
    }
    path.write_text(json.dumps(project, indent=1))


def read_via(path: Path, default_fps: float = 30.0) -> list[ClipBLines]:
    """Clips from a VIA 3 project: the clip label and the frames inside B-line segments."""
    try:
        project = json.loads(path.read_text())
        files = project["file"]
        metadata = project["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a VIA 3 project JSON ({exc})") from exc
    clips = []
    for fid, entry in files.items():
        items = [m for m in metadata.values() if str(m.get("vid")) == fid]
        clip_av: dict[str, str] = next((m["av"] for m in items if not m.get("z")), {})
        fps = float(clip_av.get("3", default_fps))
        segments = [m["z"] for m in items if len(m.get("z", [])) == 2]
        n_frames = int(clip_av.get("4", 0)) or max((round(z[1] * fps) for z in segments), default=0)
        frames: set[int] = set()
        for t0, t1 in segments:
            frames.update(range(round(t0 * fps) + 1, round(t1 * fps) + 1))
        if clip_av.get("1") == B_LINE and not frames:
            raise AnnotationError(
                f"{path}: clip {entry['fname']} is labelled B-line without frames"
            )
        clips.append(ClipBLines(entry["fname"], fps, n_frames, tuple(sorted(frames))))
    return clips


def write_labelme(path: Path, mask: npt.NDArray[np.uint8], image_path: str, frame: int) -> None:
    """One frame's class mask as LabelMe polygons (label score0..score3; background unlabelled)."""
    shapes = []
    for cls, label in enumerate(_SCORE_LABELS):
        contours, _ = cv2.findContours(
            (mask == cls).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        for c in contours:
            if len(c) < 3:
                continue
            shapes.append(
                {
                    "label": label,
                    "points": c[:, 0, :].astype(float).tolist(),
                    "group_id": None,
                    "shape_type": "polygon",
                    "flags": {},
                }
            )
    doc: dict[str, object] = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(mask.shape[0]),
        "imageWidth": int(mask.shape[1]),
        "frame": frame,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@dataclass(frozen=True)
class LabelMeFrame:
    image_path: str
    frame: int | None
    """1-based frame of a multi-frame source, None for a single image."""
    mask: npt.NDArray[np.uint8]


def read_labelme(path: Path) -> LabelMeFrame:
    """Rasterise a LabelMe file's polygons to a class mask (classes 0..3, background 4)."""
    try:
        doc = json.loads(path.read_text())
        height, width = int(doc["imageHeight"]), int(doc["imageWidth"])
        shapes = doc["shapes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"{path}: not a LabelMe JSON file ({exc})") from exc
    mask = np.full((height, width), BACKGROUND, np.uint8)
    for shape in shapes:
        label = shape.get("label")
        if label not in _SCORE_LABELS:
            raise AnnotationError(
                f"{path}: label {label!r} is not one of {', '.join(_SCORE_LABELS)}"
            )
        if shape.get("shape_type", "polygon") != "polygon":
            raise AnnotationError(f"{path}: only polygons are read; got {shape['shape_type']}")
        pts = np.round(np.asarray(shape["points"], np.float64)).astype(np.int32)
        cv2.fillPoly(mask, [pts], _SCORE_LABELS.index(label))
    frame = doc.get("frame")
    return LabelMeFrame(doc.get("imagePath", ""), int(frame) if frame is not None else None, mask)


@dataclass(frozen=True)
class FrameScore:
    file: str
    frame: int
    score: int


def write_frame_scores(path: Path, rows: Iterable[FrameScore]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "frame", "score"])
        for r in rows:
            w.writerow([r.file, r.frame, r.score])


def read_frame_scores(path: Path) -> list[FrameScore]:
    """Frame scores 0..3 from a CSV with columns file, frame (1-based), score."""
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "frame", "score"} - set(reader.fieldnames or ())
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, r in enumerate(reader, start=2):
            try:
                row = FrameScore(r["file"], int(r["frame"]), int(r["score"]))
            except ValueError as exc:
                raise AnnotationError(f"{path}:{line}: {exc}") from exc
            if row.frame < 1 or row.score not in (0, 1, 2, 3):
                raise AnnotationError(
                    f"{path}:{line}: frame must be >= 1 (1-based) and score 0..3; "
                    f"got frame {row.frame}, score {row.score}"
                )
            rows.append(row)
    return rows
