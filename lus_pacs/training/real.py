"""The real clips as the real-data models see them: both POCUS sets, their roles, their
measurements.

* ``../shared/data/pocus`` (:data:`TRAINABLE`): clips with stated licences; they train the shipped
  weights and are measured leave-source-out.
* ``../shared/data/pocus-extra`` (:data:`EXTERNAL`): another handheld device (Butterfly iQ),
  another site's linear probe (Bolzano) and web clips, with no licence stated: evaluation only.
  They never train, tune or select a shipped model. Footage also found in the trainable set, and
  second copies, are left out (:data:`EXTERNAL_LEFT_OUT`, from that folder's README).

Each clip is imported once into an RLE DICOM cache (:func:`lus_pacs.training.pocus.load_clip`),
decoded as the node decodes it, and measured by :mod:`lus_pacs.inference.lung_features`; the
measurements are cached beside the DICOM files, keyed by file and the feature version.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import numpy.typing as npt

from lus_pacs import domain
from lus_pacs.errors import LusPacsError
from lus_pacs.imaging import decode, metadata, region
from lus_pacs.inference import lung_features
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION, cine_features
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels

log = logging.getLogger(__name__)

TRAINABLE = "pocus"
EXTERNAL = "pocus-extra"

EXTERNAL_LEFT_OUT = frozenset(
    {
        # Footage also in ../pocus.
        "cov-grep-7500",
        "cov_linear_abrams_2020_v1",
        "cov-grep-7432",
        "vir_or_pneu_prospective_file4",
        "reg-grep-normal",
        # Second copies inside pocus-extra.
        "cov_bolzano_vid-20200427-wa0040",
        "cov_bolzano_consolidamento copia",
        "cov_bolzano_vid-20200427-wa0039",
        "cov-grep-7543",
    }
)
"""Lower-case stems of the extra clips left out of every measurement (see that README)."""
EXTERNAL_NO_SEVERITY = frozenset({"cov-grep-7525"})
"""Its severity disagrees with its second copy's; left out of severity only."""


@dataclass(frozen=True)
class RealClip:
    """A labelled real clip and the set it belongs to."""

    clip: PocusClip
    dataset: str
    """:data:`TRAINABLE` or :data:`EXTERNAL`."""

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.clip.file}"

    @property
    def group(self) -> str:
        """The source to split by; every external clip is one group per publisher or device."""
        return self.clip.group

    @property
    def severity(self) -> int | None:
        stem = PurePosixPath(self.clip.file).stem.strip().lower()
        return None if stem in EXTERNAL_NO_SEVERITY else self.clip.severity


@dataclass(frozen=True)
class Measured:
    """The clips that could be read, with their clip measurements in the same order."""

    clips: tuple[RealClip, ...]
    features: npt.NDArray[np.float32]
    """(clips, len(CLIP_FEATURES))."""
    refused: tuple[tuple[str, str], ...]
    """(clip name, reason) of every clip that could not be read."""


def real_clips(data_root: Path) -> list[RealClip]:
    """Every usable clip of both sets under ``data_root`` (the folder holding ``pocus/``).

    The external set is optional (absent: only trainable clips); its left-out footage is dropped.
    """
    clips = [RealClip(c, TRAINABLE) for c in read_labels(data_root / TRAINABLE / "labels.csv")]
    extra = data_root / EXTERNAL / "labels.csv"
    if extra.is_file():
        for clip in read_labels(extra):
            stem = PurePosixPath(clip.file).stem.strip().lower()
            if stem not in EXTERNAL_LEFT_OUT:
                clips.append(RealClip(clip, EXTERNAL))
    return clips


def feature_table_name() -> str:
    """The file of cached measurements: named by :data:`FEATURE_VERSION` and by the digest of
    the code that reads and measures a cine (:data:`_MEASURING`), so that a change of a
    measurement made without a new version (one went unnoticed: a clip's figures stayed those
    of the code before) measures again. The clips' DICOM imports are cached apart."""
    code = hashlib.sha256()
    for module in _MEASURING:
        code.update(Path(module.__file__ or "").read_bytes())
    return f"features-v{FEATURE_VERSION}-{code.hexdigest()[:12]}.npz"


_MEASURING = (lung_features, decode, region, metadata, domain)
"""The modules whose code makes a clip's measurements from its DICOM import."""


def measure(clips: Sequence[RealClip], data_root: Path, cache_dir: Path) -> Measured:
    """The clip measurements of every clip, from the cache where present.

    A clip that cannot be read is reported in :attr:`Measured.refused` and left out.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    table_path = cache_dir / feature_table_name()
    cached: dict[str, npt.NDArray[np.float32]] = {}
    if table_path.is_file():
        with np.load(table_path) as table:
            if list(table["columns"]) == list(CLIP_FEATURES):
                cached = dict(zip(table["names"], table["features"], strict=True))
    kept: list[RealClip] = []
    rows: list[npt.NDArray[np.float32]] = []
    refused: list[tuple[str, str]] = []
    for clip in clips:
        features = cached.get(clip.name)
        if features is None:
            try:
                cine = load_clip(clip.clip, data_root / clip.dataset, cache_dir / clip.dataset)
            except (LusPacsError, ValueError, OSError) as exc:
                log.warning("%s: not read (%s)", clip.name, exc)
                refused.append((clip.name, str(exc)))
                continue
            features = cine_features(cine)[1]
            cached[clip.name] = features
        kept.append(clip)
        rows.append(features)
    names = sorted(cached)
    np.savez(
        table_path,
        names=np.array(names),
        features=np.stack([cached[n] for n in names]) if names else np.zeros((0, 0)),
        columns=np.array(CLIP_FEATURES),
    )
    return Measured(
        tuple(kept),
        np.stack(rows) if rows else np.zeros((0, len(CLIP_FEATURES)), np.float32),
        tuple(refused),
    )
