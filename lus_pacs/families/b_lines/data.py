"""The B-line networks' data: windows of annotated cines with their truth, and of the POCUS
clips.

Windows are the network's input as the node makes it (:func:`b_line_windows`); a window is
positive when any of its frames shows a B-line. Simulated exams and a site's VIA-annotated cines
(:mod:`lus_pacs.training.annotated`) have frame-level truth (:func:`load_windows`).

The real POCUS clips only say whether a clip shows B-lines somewhere. For simplicity every window
of a clip is labelled with the clip's label, although a positive clip may have windows without
B-lines; clips whose ``b_lines`` is not recorded are skipped. Their windows are resampled in time
to the simulated window length (nearest frame) so that they batch together, and a long clip gives
at most ``max_pocus_windows`` windows spread over it (:func:`load_pocus_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from lus_pacs.inference.transforms import b_line_windows
from lus_pacs.training.annotated import BLineCine, read_via_cines
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels
from lus_pacs.training.simulated import find_simulated

MAX_POCUS_WINDOWS = 4
"""Default of ``max_pocus_windows``: 1-s windows of one POCUS clip at most."""


@dataclass(frozen=True)
class Windows:
    """The windows of a set of cines, with their truth."""

    x: torch.Tensor
    """(windows, 1, frames, 64, 64) float32 in [0, 1]."""
    label: torch.Tensor
    """(windows,) float32: 1 when any frame of the window shows a B-line."""
    frame_truth: npt.NDArray[np.bool_]
    """(windows, frames): B-line at each position of the window."""
    cine: npt.NDArray[np.intp]
    """(windows,) index of the window's cine in the list it was made from."""
    starts: tuple[int, ...]
    """1-based first frame of each window."""


def load_windows(cines: Sequence[BLineCine], progress: bool = True) -> Windows:
    """Cut every cine into the network's windows (the cine's own frame rate sets their length)."""
    xs, labels, truths, owner, starts = [], [], [], [], []
    for i, sim in enumerate(tqdm(cines, desc="windows", unit="cine", disable=not progress)):
        x, first = b_line_windows(sim.load(), default_fps=sim.fps)
        positive = np.zeros(sim.n_frames, dtype=bool)
        positive[np.asarray(sim.b_line_frames, dtype=np.intp) - 1] = True
        length = x.shape[2]
        for s in first:
            index = np.minimum(np.arange(s - 1, s - 1 + length), sim.n_frames - 1)
            truths.append(positive[index])
            labels.append(float(positive[index].any()))
        xs.append(x)
        owner.extend([i] * len(first))
        starts.extend(first)
    return Windows(
        x=torch.cat(xs),
        label=torch.tensor(labels, dtype=torch.float32),
        frame_truth=np.stack(truths),
        cine=np.asarray(owner, dtype=np.intp),
        starts=tuple(starts),
    )


def select_windows(windows: Windows, cines: Sequence[int]) -> Windows:
    """The windows of ``cines``, their ``cine`` renumbered to positions in ``cines``."""
    position = {c: i for i, c in enumerate(cines)}
    rows = np.flatnonzero(np.isin(windows.cine, list(cines)))
    return Windows(
        x=windows.x[torch.from_numpy(rows)],
        label=windows.label[torch.from_numpy(rows)],
        frame_truth=windows.frame_truth[rows],
        cine=np.array([position[int(c)] for c in windows.cine[rows]], dtype=np.intp),
        starts=tuple(windows.starts[r] for r in rows),
    )


def load_pocus_windows(
    clips: Sequence[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    length: int,
    progress: bool = True,
    max_windows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (n, 1, ``length``, 64, 64) of the clips with a ``b_lines`` label, and the labels.

    Every window carries its clip's label; windows are resampled to ``length`` frames. With
    ``max_windows``, a longer clip gives that many windows spread evenly over it: neighbouring
    windows of one clip are nearly the same picture, and the long clips would otherwise
    outweigh the short ones.
    """
    xs, labels = [], []
    labelled = [c for c in clips if c.b_lines is not None]
    for clip in tqdm(labelled, desc="pocus windows", unit="clip", disable=not progress):
        x, _ = b_line_windows(load_clip(clip, pocus_dir, cache_dir), default_fps=clip.fps)
        if max_windows is not None and len(x) > max_windows:
            keep = np.unique(np.round(np.linspace(0, len(x) - 1, max_windows)).astype(np.intp))
            x = x[torch.from_numpy(keep)]
        index = np.round(np.linspace(0, x.shape[2] - 1, length)).astype(np.intp)
        xs.append(x[:, :, torch.from_numpy(index)])
        labels.extend([float(bool(clip.b_lines))] * len(x))
    if not xs:
        return torch.zeros(0, 1, length, 64, 64), torch.zeros(0)
    return torch.cat(xs), torch.tensor(labels, dtype=torch.float32)


@dataclass(frozen=True)
class TrainingData:
    """Everything loaded once: the windows of the simulated and annotated cines, and the
    labelled POCUS clips' windows."""

    cines: list[BLineCine]
    windows: Windows
    clips: list[PocusClip]
    pocus_x: torch.Tensor
    pocus_label: torch.Tensor
    pocus_clip: torch.Tensor
    """(windows,) index into ``clips`` of each POCUS window."""
    sources: dict[str, Any]
    """Names of the data folders and files, for the bundle's metadata."""


def load_training_data(
    data_root: Path | None,
    via: Sequence[Path],
    via_root: Path | None,
    pocus_dir: Path | None,
    pocus_cache: Path | None,
    max_pocus_windows: int | None,
    progress: bool,
) -> TrainingData:
    """The windows of the simulated cines under ``data_root`` and of the ``via`` projects, and
    those of the labelled POCUS clips; arguments as
    :func:`lus_pacs.families.b_lines.train.train_b_lines`."""
    if (pocus_dir is None) != (pocus_cache is None):
        raise ValueError("Give pocus_dir and pocus_cache together (the cache may be empty).")
    cines: list[BLineCine] = []
    if data_root is not None:
        cines.extend(find_simulated(data_root))
        if not cines:
            raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {data_root}.")
    for project in via:
        cines.extend(read_via_cines(project, via_root))
    if not cines:
        raise ValueError("No cines to train on: give simulated data, VIA projects, or both.")
    # Folder and file names only: the bundle is committed, and paths of the training machine
    # mean nothing elsewhere.
    sources = {
        "root": data_root.name if data_root else None,
        "via": [p.name for p in via],
        "pocus": pocus_dir.name if pocus_dir else None,
    }
    windows = load_windows(cines, progress)
    clips: list[PocusClip] = []
    pocus_x, pocus_label = torch.zeros(0, *windows.x.shape[1:]), torch.zeros(0)
    owner: list[int] = []
    if pocus_dir is not None and pocus_cache is not None:
        clips = [c for c in read_labels(pocus_dir / "labels.csv") if c.b_lines is not None]
        xs, labels = [], []
        for i, clip in enumerate(tqdm(clips, desc="pocus", unit="clip", disable=not progress)):
            x, label = load_pocus_windows(
                [clip], pocus_dir, pocus_cache, windows.x.shape[2], False, max_pocus_windows
            )
            xs.append(x)
            labels.append(label)
            owner.extend([i] * len(x))
        pocus_x, pocus_label = torch.cat(xs), torch.cat(labels)
    owners = torch.tensor(owner, dtype=torch.long)
    return TrainingData(cines, windows, clips, pocus_x, pocus_label, owners, sources)
