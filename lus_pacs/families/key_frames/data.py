"""Training frames for the key-frame classifier (paper 004), drawn from simulated cines.

Müller, Eccel and Robert had only true frames (the images experts kept) and drew false frames
from the same videos. We have the truth of every frame, so both come from the cine:

* True frames: high-value frames (probe in contact, pleura visible, no rib shadow over it,
  showing the clip's score): the cine's best frame and up to ``positives_per_cine - 1`` other
  high-value frames, each as far in time from those already taken as possible. A cine without a
  high-value frame gives none, and so no false frame either.
* False frames, never high-value frames, by dataset variant (:data:`VARIANTS`):

  - ``brightness``: the paper's first rule. The bounds are the mean +- one standard deviation
    of the mean brightness of all true frames given; frames outside them are candidates, taken
    in random order but never within ``NEARBY_FRAMES`` of a frame already taken, up to as many
    as the cine has true frames.
  - ``<encoding>_<low>-<high>``: for each true frame, one frame whose cosine similarity to it
    (:mod:`lus_pacs.families.key_frames.similarity`, local-brightness matrix or CNN encoder)
    lies within the bounds [low, high], both included, drawn at random among those not yet taken
    in the cine. The paper took the first such frame of the video.

  A true frame for which no false frame is found keeps its place in the set; it is counted in
  :attr:`KeyFrameSet.unmatched`. (The paper dropped such a true image to keep the labels
  balanced; :attr:`KeyFrameSet.references` lets a caller do the same.) Every variant thus has
  the same true frames and differs only in its false ones.

Frames are the tissue region with the overlay black, fitted into ``image_size`` x
``image_size`` (aspect kept, zero padded), uint8 grey. All variants of one build share one array
of images (:attr:`KeyFrameSet.images`), so nine variants cost little more memory than one.

Training and evaluation hold out the same patients (:func:`held_out`) and POCUS publishers
(:func:`pocus_split`).
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lus_pacs.families.key_frames.inference import fit_square
from lus_pacs.families.key_frames.network import RESIZE
from lus_pacs.families.key_frames.similarity import (
    CnnEncoder,
    Encoding,
    cosine_similarity,
    local_brightness,
    masked_tissue,
    mean_brightness,
)
from lus_pacs.training.pocus import PocusClip, read_labels, source_group
from lus_pacs.training.simulated import SimulatedCine
from lus_pacs.training.splits import split_by_group

BRIGHTNESS = "brightness"
"""The variant of the paper's mean-brightness rule."""
SIMILARITY_BOUNDS: tuple[tuple[float, float], ...] = (
    (0.75, 0.85),
    (0.8, 0.9),
    (0.85, 0.95),
    (0.9, 0.97),
)
"""The paper's similarity bounds, far from the true frame to close to it."""
POSITIVES_PER_CINE = 3
"""True frames taken from a cine: its best frame and two others spread over the loop."""
NEARBY_FRAMES = 5
"""Brightness rule: a false frame closer than this to one already taken is skipped."""
IMAGE_SIZE = RESIZE
"""Rows and columns of the frames returned (the paper resizes to 349 x 256, then crops 224)."""
NO_PLEURA_BELOW = 0.25
"""A frame with less than this share of its beams on the pleura shows no pleura (the
simulator's high-value rule)."""


@dataclass(frozen=True)
class Variant:
    """How one dataset variant draws its false frames."""

    name: str
    encoding: Encoding | None
    """The encoding compared; None for the brightness rule."""
    bounds: tuple[float, float] | None
    """Similarity bounds, both included; None for the brightness rule."""

    def __post_init__(self) -> None:
        if (self.encoding is None) != (self.bounds is None):
            raise ValueError(
                f"Variant {self.name!r}: give both an encoding and similarity bounds, or "
                "neither (the brightness rule)."
            )
        if self.bounds is not None and not -1.0 <= self.bounds[0] <= self.bounds[1] <= 1.0:
            raise ValueError(
                f"Variant {self.name!r}: bounds {self.bounds} must satisfy "
                "-1 <= low <= high <= 1 (cosine similarity)."
            )

    def seed(self) -> int:
        """A number that tells this variant's draws from the others' for any order of work."""
        return zlib.crc32(self.name.encode())


VARIANTS: tuple[Variant, ...] = (
    Variant(BRIGHTNESS, None, None),
    *(
        Variant(f"{encoding.value}_{low:g}-{high:g}", encoding, (low, high))
        for low, high in SIMILARITY_BOUNDS
        for encoding in Encoding
    ),
)
"""Every variant, in the order of the paper's Table I."""


def variant_names() -> tuple[str, ...]:
    """The names of every dataset variant, brightness first, then as the paper's Table I."""
    return tuple(v.name for v in VARIANTS)


def find_variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises
    ------
    ValueError
        No variant has that name; the message suggests the closest and lists them all.
    """
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    names = variant_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"By {name!r}, did you mean {close[0]!r}? " if close else f"Unknown variant {name!r}. "
    raise ValueError(f"{hint}Available variants are: {', '.join(names)}.")


def held_out(
    cines: Sequence[SimulatedCine], folds: int, seed: int
) -> tuple[list[SimulatedCine], list[SimulatedCine]]:
    """(train, test): the first of ``folds`` patient folds held out."""
    split = split_by_group(list(cines), lambda c: c.patient_id, folds, seed)
    return [c for fold in split[1:] for c in fold], split[0]


def pocus_split(pocus_dir: Path, folds: int, seed: int) -> tuple[list[PocusClip], list[PocusClip]]:
    """(train, test) POCUS clips: the first of ``folds`` publisher folds held out."""
    clips = read_labels(pocus_dir / "labels.csv")
    split = split_by_group(clips, lambda c: source_group(c.file), folds, seed)
    return [c for fold in split[1:] for c in fold], split[0]


@dataclass(frozen=True, eq=False)
class KeyFrameSet:
    """One dataset variant: row ``i`` of every array describes one training frame.

    Split by :attr:`patient_ids`, never by frame: a cine's true and false frames are near
    copies of each other.
    """

    variant: str
    images: npt.NDArray[np.uint8]
    """(images, size, size) grey frames, shared by every variant of one build."""
    image_index: npt.NDArray[np.intp]
    """(rows,) the row's frame in :attr:`images`."""
    labels: npt.NDArray[np.bool_]
    """(rows,) True for a frame a clinician would keep."""
    patient_ids: npt.NDArray[np.str_]
    cines: npt.NDArray[np.str_]
    """``<patient id>/<zone>`` of the source cine."""
    frames: npt.NDArray[np.intp]
    """1-based frame of the source cine."""
    references: npt.NDArray[np.intp]
    """1-based true frame a false frame was drawn against (similarity variants), the frame
    itself for a true frame, 0 for a false frame of the brightness rule."""
    similarities: npt.NDArray[np.float64]
    """Similarity of a false frame to its reference; NaN for true frames and the brightness
    rule."""
    unmatched: int
    """True frames for which no false frame was found."""
    brightness_bounds: tuple[float, float] | None
    """The brightness rule's bounds (grey levels); None for the other variants."""

    def __post_init__(self) -> None:
        rows = len(self.labels)
        columns = (
            self.image_index,
            self.patient_ids,
            self.cines,
            self.frames,
            self.references,
            self.similarities,
        )
        if any(len(c) != rows for c in columns):
            raise ValueError(f"KeyFrameSet {self.variant}: every column needs {rows} rows.")
        if rows and not 0 <= self.image_index.min() <= self.image_index.max() < len(self.images):
            raise ValueError(f"KeyFrameSet {self.variant}: image_index points outside images.")

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self) -> npt.NDArray[np.uint8]:
        """The rows' frames, (rows, size, size) uint8: a copy gathered from :attr:`images`."""
        return np.asarray(self.images[self.image_index], np.uint8)


def true_frames(cine: SimulatedCine, count: int = POSITIVES_PER_CINE) -> tuple[int, ...]:
    """Up to ``count`` high-value frames (1-based): the best frame first, then each next the
    high-value frame farthest in time from those already taken (the earliest among equals)."""
    if count < 1:
        raise ValueError(f"A cine gives at least one true frame; got count={count}.")
    candidates = [f.frame for f in cine.frames if f.high_value]
    if not candidates:
        return ()
    first = cine.best_frame if cine.best_frame in candidates else candidates[0]
    taken = [first]
    rest = [f for f in candidates if f != first]
    while rest and len(taken) < count:
        pick = max(rest, key=lambda f: (min(abs(f - t) for t in taken), -f))
        taken.append(pick)
        rest.remove(pick)
    return tuple(taken)


def build_key_frame_sets(
    cines: Sequence[SimulatedCine],
    variants: Iterable[str | Variant] | None = None,
    *,
    encoder: CnnEncoder | None = None,
    seed: int = 0,
    positives_per_cine: int = POSITIVES_PER_CINE,
    image_size: int = IMAGE_SIZE,
) -> dict[str, KeyFrameSet]:
    """Build the dataset variants from simulated cines; same inputs and seed, same sets.

    Every cine is decoded twice (features first; the chosen frames once the brightness bounds,
    which depend on all cines, are known), so memory holds features and chosen frames only.

    Parameters
    ----------
    cines:
        The simulated cines, e.g. the training patients of :func:`find_simulated`.
    variants:
        Names from :func:`variant_names` or :class:`Variant` values (other bounds); all of
        :data:`VARIANTS` when None.
    encoder:
        The CNN encoder (:meth:`CnnEncoder.load` of ``models/b_lines``); needed by the ``cnn_``
        variants only.
    seed:
        Draws the false frames.
    positives_per_cine:
        True frames taken from each cine (:func:`true_frames`).
    image_size:
        Rows and columns of the returned frames.

    Returns
    -------
    dict
        One :class:`KeyFrameSet` per requested variant, by name, in the order requested.

    Raises
    ------
    ValueError
        An unknown or repeated variant, a CNN variant without an encoder, or a bad size or
        count.
    """
    chosen = [
        v if isinstance(v, Variant) else find_variant(v)
        for v in (VARIANTS if variants is None else variants)
    ]
    names = [v.name for v in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"Each variant may be asked for once; got {', '.join(names)}.")
    encodings = {v.encoding for v in chosen if v.encoding is not None}
    if Encoding.CNN in encodings and encoder is None:
        raise ValueError(
            "Variants that compare CNN encodings need the encoder: pass "
            "encoder=CnnEncoder.load(Path('models/b_lines'))."
        )
    if positives_per_cine < 1:
        raise ValueError(f"positives_per_cine must be at least 1; got {positives_per_cine}.")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels; got {image_size}.")

    features = [
        _features(sim, true_frames(sim, positives_per_cine), encodings, encoder) for sim in cines
    ]
    true_brightness = np.concatenate(
        [f.brightness[np.asarray(f.positives, np.intp) - 1] for f in features] or [np.empty(0)]
    )
    bounds = None
    if true_brightness.size:
        mu, sigma = float(true_brightness.mean()), float(true_brightness.std())
        bounds = (mu - sigma, mu + sigma)

    drawn: dict[str, list[_Negatives]] = {}
    for variant in chosen:
        drawn[variant.name] = [
            _draw(f, variant, bounds, np.random.default_rng([seed, variant.seed(), i]))
            for i, f in enumerate(features)
        ]

    wanted: list[set[int]] = [set(f.positives) for f in features]
    for per_cine in drawn.values():
        for i, negatives in enumerate(per_cine):
            wanted[i].update(negatives.frames)
    images, where = _gather(cines, wanted, image_size)

    return {
        variant.name: _assemble(variant, features, drawn[variant.name], images, where, bounds)
        for variant in chosen
    }


@dataclass(frozen=True, eq=False)
class _Features:
    sim: SimulatedCine
    positives: tuple[int, ...]
    high_value: npt.NDArray[np.bool_]
    brightness: npt.NDArray[np.float64]
    encodings: dict[Encoding, npt.NDArray[np.floating]]


@dataclass(frozen=True)
class _Negatives:
    frames: tuple[int, ...]
    references: tuple[int, ...]
    similarities: tuple[float, ...]
    unmatched: int


def _features(
    sim: SimulatedCine,
    positives: tuple[int, ...],
    encodings: set[Encoding],
    encoder: CnnEncoder | None,
) -> _Features:
    high_value = np.array([f.high_value for f in sim.frames], np.bool_)
    if not positives:  # a cine without true frames gives no false frames either
        return _Features(sim, positives, high_value, np.empty(0), {})
    cine = sim.load()
    if cine.n_frames != sim.n_frames:
        raise ValueError(
            f"{sim.dicom}: {cine.n_frames} frames, but its truth {sim.truth} describes "
            f"{sim.n_frames}; write the set again with `lus-pacs synth`."
        )
    encoded: dict[Encoding, npt.NDArray[np.floating]] = {}
    for encoding in encodings:
        if encoding is Encoding.LOCAL_BRIGHTNESS:
            encoded[encoding] = local_brightness(cine)
        elif encoder is not None:  # build_key_frame_sets demands it for this encoding
            encoded[encoding] = encoder(cine)
    return _Features(sim, positives, high_value, mean_brightness(cine), encoded)


def _draw(
    features: _Features,
    variant: Variant,
    bounds: tuple[float, float] | None,
    rng: np.random.Generator,
) -> _Negatives:
    positives = features.positives
    if not positives:
        return _Negatives((), (), (), 0)
    if variant.encoding is None or variant.bounds is None:
        return _draw_by_brightness(features, bounds, rng) if bounds else _Negatives((), (), (), 0)
    encoded = features.encodings[variant.encoding]
    low, high = variant.bounds
    free = ~features.high_value
    frames: list[int] = []
    similarities: list[float] = []
    references: list[int] = []
    for reference in positives:
        similarity = cosine_similarity(encoded[reference - 1], encoded)
        candidates = np.flatnonzero(free & (similarity >= low) & (similarity <= high))
        if candidates.size == 0:
            continue
        pick = int(rng.choice(candidates))
        free[pick] = False
        frames.append(pick + 1)
        references.append(reference)
        similarities.append(float(similarity[pick]))
    return _Negatives(
        tuple(frames), tuple(references), tuple(similarities), len(positives) - len(frames)
    )


def _draw_by_brightness(
    features: _Features, bounds: tuple[float, float], rng: np.random.Generator
) -> _Negatives:
    low, high = bounds
    b = features.brightness
    candidates = np.flatnonzero(~features.high_value & ((b < low) | (b > high)))
    taken: list[int] = []
    for index in rng.permutation(candidates):
        if len(taken) == len(features.positives):
            break
        if all(abs(int(index) - t) >= NEARBY_FRAMES for t in taken):
            taken.append(int(index))
    frames = tuple(t + 1 for t in taken)
    return _Negatives(
        frames,
        (0,) * len(frames),
        (float("nan"),) * len(frames),
        len(features.positives) - len(frames),
    )


def _gather(
    cines: Sequence[SimulatedCine], wanted: list[set[int]], size: int
) -> tuple[npt.NDArray[np.uint8], dict[tuple[int, int], int]]:
    """The wanted frames of every cine fitted to ``size``, and where (cine, frame) lies."""
    images: list[npt.NDArray[np.uint8]] = []
    where: dict[tuple[int, int], int] = {}
    for i, (sim, frames) in enumerate(zip(cines, wanted, strict=True)):
        if not frames:
            continue
        tissue = masked_tissue(sim.load())
        for frame in sorted(frames):
            where[i, frame] = len(images)
            images.append(fit_square(tissue[frame - 1], size))
    if not images:
        return np.zeros((0, size, size), np.uint8), where
    return np.stack(images), where


def _assemble(
    variant: Variant,
    features: list[_Features],
    drawn: list[_Negatives],
    images: npt.NDArray[np.uint8],
    where: dict[tuple[int, int], int],
    bounds: tuple[float, float] | None,
) -> KeyFrameSet:
    image_index: list[int] = []
    labels: list[bool] = []
    patients: list[str] = []
    cines: list[str] = []
    frames: list[int] = []
    references: list[int] = []
    similarities: list[float] = []
    for i, (f, negatives) in enumerate(zip(features, drawn, strict=True)):
        rows = [(p, True, p, float("nan")) for p in f.positives] + [
            (n, False, r, s)
            for n, r, s in zip(
                negatives.frames, negatives.references, negatives.similarities, strict=True
            )
        ]
        for frame, label, reference, similarity in rows:
            image_index.append(where[i, frame])
            labels.append(label)
            patients.append(f.sim.patient_id)
            cines.append(f"{f.sim.patient_id}/{f.sim.zone}")
            frames.append(frame)
            references.append(reference)
            similarities.append(similarity)
    return KeyFrameSet(
        variant=variant.name,
        images=images,
        image_index=np.array(image_index, np.intp),
        labels=np.array(labels, np.bool_),
        patient_ids=np.array(patients, np.str_),
        cines=np.array(cines, np.str_),
        frames=np.array(frames, np.intp),
        references=np.array(references, np.intp),
        similarities=np.array(similarities, np.float64),
        unmatched=sum(n.unmatched for n in drawn),
        brightness_bounds=bounds if variant.encoding is None else None,
    )
