"""Scene drawing: consolidation drawn independent of the score for the consolidation model's
training data, and left alone otherwise."""

from __future__ import annotations

import numpy as np

from lus_pacs.synth.geometry import Probe
from lus_pacs.synth.scene import ZoneScene, decouple_consolidation, draw_patient, spoil_zone


def _zones(seed: int, patients: int = 40) -> list[ZoneScene]:
    rng = np.random.default_rng(seed)
    return [z for i in range(patients) for z in draw_patient(rng, i, seed, 6, Probe.CONVEX).zones]


def test_scored_scenes_pair_consolidation_with_b_lines() -> None:
    """The reason for the option: in the scored scenes a consolidation never comes alone."""
    zones = _zones(5)
    with_consolidation = [z for z in zones if z.consolidations and z.effusion is None]
    assert with_consolidation
    assert all(len(z.b_lines) >= 2 for z in with_consolidation)


def test_decoupled_consolidation_is_independent_of_b_lines() -> None:
    rng = np.random.default_rng(1)
    zones = [decouple_consolidation(rng, z, 1.0) for z in _zones(5)]
    free = [z for z in zones if z.effusion is None]
    alone = [z for z in free if z.consolidations and not z.b_lines]
    b_lines_only = [z for z in free if len(z.b_lines) >= 2 and not z.consolidations]
    assert len(alone) >= 10, "no consolidation without B-lines"
    assert len(b_lines_only) >= 10, "no B-lines without consolidation"
    share = np.mean([bool(z.consolidations) for z in free])
    assert 0.35 < share < 0.65
    for z in alone:
        (c,) = z.consolidations
        # Within the intercostal space, with the pleura broken over it.
        assert z.rib_xs[0] < c.x_cm < z.rib_xs[1]
        assert (c.x_cm, c.width_cm * 1.1) in z.pleura_gaps
    for z in b_lines_only:
        assert not z.pleura_gaps


def test_decoupling_keeps_effusions_and_share_zero_changes_nothing() -> None:
    zones = _zones(7)
    rng = np.random.default_rng(2)
    assert [decouple_consolidation(rng, z, 0.0) for z in zones] == zones
    effusions = [z for z in zones if z.effusion is not None]
    assert effusions
    assert [decouple_consolidation(rng, z, 1.0) for z in effusions] == effusions


def test_spoiled_zones_are_poor_for_the_whole_loop() -> None:
    rng = np.random.default_rng(3)
    zones = _zones(9, patients=10)
    spoiled = [spoil_zone(rng, z, 1.0) for z in zones]
    lifted = [z for z in spoiled if z.motion.contact_loss_frames > 1]
    under_rib = [z for z in spoiled if z.motion.contact_loss_frames <= 1]
    assert len(lifted) >= 15
    assert len(under_rib) >= 15
    for z in lifted:
        assert z.motion.contact_loss_width >= 0.7
    for z in under_rib:
        # One rib under the probe's centre, held there.
        assert min(abs(r) for r in z.rib_xs) < 0.4
        assert z.motion.slide_cm == 0
        assert z.motion.contact_loss_frames == 0
    assert [spoil_zone(rng, z, 0.0) for z in zones] == zones
