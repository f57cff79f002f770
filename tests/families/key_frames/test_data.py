"""Paper 004's training sets from simulated cines: true frames, and false frames by variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lus_pacs.families.key_frames.data import (
    BRIGHTNESS,
    NEARBY_FRAMES,
    VARIANTS,
    KeyFrameSet,
    Variant,
    build_key_frame_sets,
    find_variant,
    true_frames,
    variant_names,
)
from lus_pacs.families.key_frames.similarity import (
    CnnEncoder,
    Encoding,
    cosine_similarity,
    local_brightness,
    masked_tissue,
    mean_brightness,
)
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.training.simulated import SimulatedCine, find_simulated

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "b_lines"
WIDE = (
    Variant("local_brightness_any", Encoding.LOCAL_BRIGHTNESS, (0.0, 1.0)),
    Variant("cnn_any", Encoding.CNN, (0.0, 1.0)),
)
"""Bounds every frame meets: the small exam has false frames for these whatever the paper's
bounds find in it."""


@pytest.fixture(scope="module")
def cines(tmp_path_factory: pytest.TempPathFactory) -> list[SimulatedCine]:
    out = tmp_path_factory.mktemp("key-frames")
    synthesize(out, SynthOptions(patients=1, seed=4, frames=12, zones=6))
    found = find_simulated(out)
    # What the tests below need of the exam: cines with and without high-value frames, and a
    # cine with both kinds.
    kinds = {tuple(sorted({f.high_value for f in c.frames})) for c in found}
    assert kinds == {(False,), (True,), (False, True)}
    return found


@pytest.fixture(scope="module")
def encoder() -> CnnEncoder:
    return CnnEncoder.load(BUNDLE)


@pytest.fixture(scope="module")
def sets(cines: list[SimulatedCine], encoder: CnnEncoder) -> dict[str, KeyFrameSet]:
    return build_key_frame_sets(cines, [*VARIANTS, *WIDE], encoder=encoder, seed=11)


def _by_cine(cines: list[SimulatedCine]) -> dict[str, SimulatedCine]:
    return {f"{c.patient_id}/{c.zone}": c for c in cines}


def test_variant_names() -> None:
    names = variant_names()
    assert names[0] == BRIGHTNESS
    assert len(names) == len(set(names)) == 9
    assert "local_brightness_0.75-0.85" in names
    assert "cnn_0.9-0.97" in names
    assert all(find_variant(n).name == n for n in names)
    with pytest.raises(ValueError, match=r"did you mean 'cnn_0\.8-0\.9'"):
        find_variant("cnn_0.8-0.90")
    with pytest.raises(ValueError, match="both an encoding"):
        Variant("x", Encoding.CNN, None)
    with pytest.raises(ValueError, match="low <= high"):
        Variant("x", Encoding.CNN, (0.9, 0.8))


def test_true_frames_are_high_value_best_first_and_spread(cines: list[SimulatedCine]) -> None:
    for cine in cines:
        high = [f.frame for f in cine.frames if f.high_value]
        picked = true_frames(cine, 3)
        if not high:
            assert picked == ()
            continue
        assert picked[0] == cine.best_frame
        assert len(picked) == min(3, len(high)) == len(set(picked))
        assert set(picked) <= set(high)
        if len(high) == cine.n_frames:  # all 12 frames: best, then the farthest ends
            assert picked[1] in (1, cine.n_frames)
            assert abs(picked[2] - picked[1]) > 3


def test_every_variant_has_the_same_true_frames(
    sets: dict[str, KeyFrameSet], cines: list[SimulatedCine]
) -> None:
    expected = sorted((f"{c.patient_id}/{c.zone}", f) for c in cines for f in true_frames(c))
    assert expected
    for s in sets.values():
        got = sorted(zip(s.cines[s.labels].tolist(), s.frames[s.labels].tolist(), strict=True))
        assert got == expected


def test_false_frames_are_never_high_value_and_true_frames_are(
    sets: dict[str, KeyFrameSet], cines: list[SimulatedCine]
) -> None:
    by_cine = _by_cine(cines)
    for s in sets.values():
        for cine, frame, label, patient in zip(
            s.cines, s.frames, s.labels, s.patient_ids, strict=True
        ):
            sim = by_cine[str(cine)]
            assert sim.frames[frame - 1].high_value == label
            assert patient == sim.patient_id


def test_false_frames_lie_within_the_variants_bounds(
    sets: dict[str, KeyFrameSet], cines: list[SimulatedCine], encoder: CnnEncoder
) -> None:
    by_cine = _by_cine(cines)
    encoded: dict[tuple[str, Encoding], np.ndarray] = {}
    checked = 0
    for variant in (*VARIANTS, *WIDE):
        if variant.bounds is None or variant.encoding is None:
            continue
        s = sets[variant.name]
        low, high = variant.bounds
        negatives = np.flatnonzero(~s.labels)
        positives = int(s.labels.sum())
        assert s.unmatched == positives - len(negatives)
        for row in negatives:
            cine = str(s.cines[row])
            key = (cine, variant.encoding)
            if key not in encoded:
                loaded = by_cine[cine].load()
                encoded[key] = (
                    encoder(loaded)
                    if variant.encoding is Encoding.CNN
                    else local_brightness(loaded)
                )
            e = encoded[key]
            reference, frame = s.references[row], s.frames[row]
            assert by_cine[cine].frames[reference - 1].high_value
            similarity = cosine_similarity(e[reference - 1], e)[frame - 1]
            assert low <= similarity <= high
            assert s.similarities[row] == pytest.approx(similarity)
            checked += 1
        # A cine's false frames are distinct frames.
        pairs = list(zip(s.cines[negatives].tolist(), s.frames[negatives].tolist(), strict=True))
        assert len(pairs) == len(set(pairs))
    assert all((~sets[v.name].labels).sum() > 0 for v in WIDE)
    assert checked >= 2 * len(WIDE)


def test_narrow_bounds_leave_out_frames_outside_them(
    cines: list[SimulatedCine], encoder: CnnEncoder
) -> None:
    mixed = next(c for c in cines if 0 < sum(f.high_value for f in c.frames) < c.n_frames)
    best = mixed.best_frame
    encoded = local_brightness(mixed.load())
    similarity = cosine_similarity(encoded[best - 1], encoded)
    candidates = np.array([not f.high_value for f in mixed.frames])
    values = np.sort(similarity[candidates])
    assert values[0] < values[-1]
    # Bounds around the lower half of the candidates: the upper ones must never be drawn.
    bounds = (float(values[0]), float(values[(len(values) - 1) // 2]))
    narrow = Variant("narrow", Encoding.LOCAL_BRIGHTNESS, bounds)
    for seed in range(5):
        s = build_key_frame_sets([mixed], [narrow], positives_per_cine=1, seed=seed)["narrow"]
        (negative,) = s.frames[~s.labels]
        assert bounds[0] <= similarity[negative - 1] <= bounds[1]
        assert s.references[~s.labels][0] == best


def test_brightness_rule(sets: dict[str, KeyFrameSet], cines: list[SimulatedCine]) -> None:
    s = sets[BRIGHTNESS]
    by_cine = _by_cine(cines)
    brightness = {name: mean_brightness(c.load()) for name, c in by_cine.items()}
    truth = np.array(
        [
            brightness[str(c)][f - 1]
            for c, f in zip(s.cines[s.labels], s.frames[s.labels], strict=True)
        ]
    )
    assert s.brightness_bounds is not None
    low, high = s.brightness_bounds
    assert (low, high) == pytest.approx((truth.mean() - truth.std(), truth.mean() + truth.std()))
    negatives = np.flatnonzero(~s.labels)
    assert len(negatives) > 0
    for row in negatives:
        value = brightness[str(s.cines[row])][s.frames[row] - 1]
        assert not low <= value <= high
        assert s.references[row] == 0
        assert np.isnan(s.similarities[row])
    for cine in set(s.cines[negatives].tolist()):
        frames = np.sort(s.frames[negatives][s.cines[negatives] == cine])
        assert (np.diff(frames) >= NEARBY_FRAMES).all()
        assert len(frames) <= (s.labels & (s.cines == cine)).sum()
    assert sets["cnn_0.8-0.9"].brightness_bounds is None


def test_images_are_the_masked_tissue_of_their_frame(
    sets: dict[str, KeyFrameSet], cines: list[SimulatedCine]
) -> None:
    s = sets["cnn_any"]
    assert all(other.images is s.images for other in sets.values())
    pixels = s.pixels()
    assert pixels.shape == (len(s), 256, 256)
    assert pixels.dtype == np.uint8
    # At the tissue's own size the image is the frame itself, padded.
    sim = next(c for c in cines if f"{c.patient_id}/{c.zone}" == s.cines[0])
    tissue = masked_tissue(sim.load())
    rows, cols = tissue.shape[1:]
    size = max(rows, cols)
    one = build_key_frame_sets([sim], ["local_brightness_0.9-0.97"], image_size=size)
    only = one["local_brightness_0.9-0.97"]
    top, left = (size - rows) // 2, (size - cols) // 2
    for image, frame in zip(only.pixels(), only.frames, strict=True):
        np.testing.assert_array_equal(
            image[top : top + rows, left : left + cols], tissue[frame - 1]
        )
        assert not image[:top].any()


def test_same_seed_same_sets(
    cines: list[SimulatedCine], encoder: CnnEncoder, sets: dict[str, KeyFrameSet]
) -> None:
    again = build_key_frame_sets(cines, [*VARIANTS, *WIDE], encoder=encoder, seed=11)
    assert list(again) == list(sets)
    np.testing.assert_array_equal(again[BRIGHTNESS].images, sets[BRIGHTNESS].images)
    for name, s in sets.items():
        a = again[name]
        for column in ("image_index", "labels", "patient_ids", "cines", "frames", "references"):
            np.testing.assert_array_equal(getattr(a, column), getattr(s, column))
        np.testing.assert_array_equal(a.similarities, s.similarities)
        assert a.unmatched == s.unmatched
    # A variant's draws do not depend on which other variants were asked for.
    alone = build_key_frame_sets(cines, [WIDE[1]], encoder=encoder, seed=11)
    np.testing.assert_array_equal(alone["cnn_any"].frames, sets["cnn_any"].frames)


def test_cnn_variants_need_the_encoder(cines: list[SimulatedCine]) -> None:
    with pytest.raises(ValueError, match="need the encoder"):
        build_key_frame_sets(cines[:1], ["cnn_0.75-0.85"])
    with pytest.raises(ValueError, match="once"):
        build_key_frame_sets(cines[:1], [BRIGHTNESS, BRIGHTNESS])
