"""Rendering a zone scene into B-mode frames, class masks and per-frame truth.

Each frame is built in beam space as echo amplitude (1.0 = the pleura), multiplied by speckle
(the magnitude of blurred complex Gaussian noise, i.e. Rayleigh), attenuated and gained with
depth, log-compressed to 8 bits and scan-converted to the image. Structures that belong to the
beam (rib shadows, A-line reverberations at multiples of the pleural range, B-lines) are drawn
per beam, so they are radial under a convex probe as on a real scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from lus_pacs.synth.geometry import FloatArray, ProbeGeometry
from lus_pacs.synth.scene import Consolidation, ZoneScene

BACKGROUND = 4
"""Mask class of pixels that show no scored finding (classes 0..3 are scores 0..3, paper 003)."""
MASK_CLASSES = ("score0", "score1", "score2", "score3", "background")

_PLEURA_SIGMA_CM = 0.045
_DYNAMIC_RANGE_DB = 55.0
_SPECKLE_PAD = 96
_B_LINE_SEEN = 0.25
"""Visibility above which a fading B-line still counts as present (its echo is > -20 dB)."""


@dataclass(frozen=True)
class FrameTruth:
    frame: int
    """1-based, as in DICOM."""
    b_line_count: int
    confluent_b_lines: bool
    severity: int | None
    """ICLUS score of what is visible; None when the probe is off the skin."""
    contact: bool
    pleura_visible_fraction: float
    rib_shadow_over_pleura: bool
    consolidation_boxes: tuple[tuple[int, int, int, int], ...]
    """(x0, y0, x1, y1) image pixels, ends exclusive."""
    effusion_box: tuple[int, int, int, int] | None
    high_value: bool = False
    """Set once the clip score is known: a frame a clinician would keep."""


@dataclass(frozen=True, eq=False)
class RenderedCine:
    frames: npt.NDArray[np.uint8]
    """(frames, rows, cols) grey B-mode, zero outside the field of view."""
    masks: npt.NDArray[np.uint8]
    """(frames, rows, cols) class per pixel, see MASK_CLASSES."""
    truth: tuple[FrameTruth, ...]


class _Speckle:
    """Tissue-fixed speckle that moves with the tissue, plus a fresh part that decorrelates."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int]) -> None:
        self._rng = rng
        self._shape = shape
        padded = (shape[0], shape[1] + 2 * _SPECKLE_PAD)
        self.wall = self._field(padded)
        self.lung = self._field(padded)

    def _field(self, shape: tuple[int, int]) -> FloatArray:
        z = self._rng.standard_normal((*shape, 2)).astype(np.float32)
        # Speckle grain: longer laterally than axially, as a beam's point-spread function is.
        grain = cv2.GaussianBlur(z, (0, 0), sigmaX=1.3, sigmaY=0.8)
        mag = np.hypot(grain[..., 0], grain[..., 1])
        return (mag / np.sqrt(np.mean(mag**2))).astype(np.float32)

    def window(self, field: FloatArray, shift_beams: float) -> FloatArray:
        start = _SPECKLE_PAD + int(np.clip(round(shift_beams), -_SPECKLE_PAD, _SPECKLE_PAD))
        return field[:, start : start + self._shape[1]]

    def fresh(self) -> FloatArray:
        return self._field(self._shape)


def render_cine(
    scene: ZoneScene,
    geom: ProbeGeometry,
    n_frames: int,
    fps: float,
    rng: np.random.Generator,
) -> RenderedCine:
    """Render ``n_frames`` of ``scene`` at ``fps``; deterministic for a given ``rng`` state."""
    speckle = _Speckle(rng, (geom.n_depth, geom.n_beams))
    jitter = np.cumsum(rng.normal(0, scene.motion.jitter_cm, (n_frames, 2)), axis=0)
    jitter -= jitter.mean(axis=0)
    frames = np.empty((n_frames, geom.rows, geom.cols), np.uint8)
    masks = np.empty((n_frames, geom.rows, geom.cols), np.uint8)
    truths = []
    for k in range(n_frames):
        grey, mask, truth = _render_frame(scene, geom, k, n_frames, fps, jitter[k], speckle)
        frames[k], masks[k] = grey, mask
        truths.append(truth)
    return RenderedCine(frames=frames, masks=masks, truth=tuple(truths))


def _smooth_window(x: npt.NDArray[np.float64], start: float, length: float) -> FloatArray:
    """1 inside [start, start + length] of the loop, 0 outside, with soft edges."""
    edge = 0.06
    up = np.clip((x - start) / edge + 0.5, 0, 1)
    down = np.clip((start + length - x) / edge + 0.5, 0, 1)
    return (up * down).astype(np.float32)


def _render_frame(
    scene: ZoneScene,
    geom: ProbeGeometry,
    k: int,
    n_frames: int,
    fps: float,
    jitter: npt.NDArray[np.float64],
    speckle: _Speckle,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], FrameTruth]:
    t = k / fps
    loop_pos = k / max(1, n_frames - 1)
    phase = (t / scene.breathing_period_s + scene.breathing_phase0) % 1.0
    breath = float(np.sin(2 * np.pi * phase))
    motion = scene.motion
    slide = motion.slide_cm * float(
        _smooth_window(np.array([loop_pos]), motion.slide_start, motion.slide_length)[0]
    )
    # The probe's offset over the patient: anatomy at patient x appears at x - offset.
    off_x = float(jitter[0]) + slide
    off_y = float(jitter[1]) * 0.3
    lung_shift = scene.sliding_cm * breath

    x, y = geom.physical
    s = geom.depth_axis[:, None]
    nb = geom.n_beams

    # Pleura: where each beam meets it (breathing moves it slightly; indented when diseased).
    yp_flat = scene.pleura_depth_cm + 0.03 * breath + off_y
    xp_probe = geom.lateral_at_depth(yp_flat)
    x_lung = xp_probe + off_x - lung_shift
    irregular = scene.pleura_irregularity_cm * (
        np.sin(x_lung * 7.0 + 1.3) + 0.6 * np.sin(x_lung * 17.0) + 0.4 * np.sin(x_lung * 31.0 + 2.1)
    )
    yp = (yp_flat + irregular).astype(np.float32)
    sp = geom.range_to_depth(yp)
    effusion = scene.effusion
    e_thick = effusion.thickness_cm * (1 + effusion.swing * breath) if effusion else 0.0
    yl = yp + e_thick  # the lung surface (below any effusion)
    sl = geom.range_to_depth(yl)
    below_lung = s > sl[None, :]
    wall = s < sp[None, :]

    # Ribs: bright cortex then full acoustic shadow along the beam.
    xw, yw = x + off_x, y - off_y
    in_rib = np.zeros_like(x, dtype=bool)
    for rx in scene.rib_xs:
        ry = scene.pleura_depth_cm - 0.35
        in_rib |= ((xw - rx) / 0.6) ** 2 + ((yw - ry) / 0.3) ** 2 < 1
    has_rib: npt.NDArray[np.bool_] = np.asarray(in_rib.any(axis=0))
    s_rib = np.where(has_rib, geom.depth_axis[np.argmax(in_rib, axis=0)], np.inf).astype(np.float32)
    shadow = s > s_rib[None, :] + 0.06

    # Contact: part of the probe face may lift off the skin at the start or end of the loop.
    contact = np.ones(nb, bool)
    if motion.contact_loss_frames > 0:
        lost_now = (
            loop_pos < motion.contact_loss_frames
            if motion.contact_loss_at_start
            else loop_pos > 1 - motion.contact_loss_frames
        )
        if lost_now:
            n_lost = round(nb * motion.contact_loss_width)
            contact[nb - n_lost :] = False

    # B-lines (lung coordinates, appear and vanish with the breathing phase).
    # b_cov drives the echo; b_vis (independent of echo strength) decides what counts as seen.
    b_cov = np.zeros(nb, np.float32)
    b_vis = np.zeros(nb, np.float32)
    visible_b: list[float] = []
    x_lung_l = geom.lateral_at_depth(yl) + off_x - lung_shift
    for b in scene.b_lines:
        v = float(_smooth_window(np.array([(phase - b.phase_on) % 1.0]), 0.0, b.duty)[0])
        if b.duty >= 0.999:
            v = 1.0
        if v <= _B_LINE_SEEN:
            # A fading B-line is either drawn and counted or gone: a faint line on the screen
            # labelled "no B-line" would teach the models the wrong thing.
            continue
        profile = np.clip(1.0 - np.abs(x_lung_l - b.x_cm) / (b.width_cm / 2), 0, 1) ** 0.5
        b_cov = np.maximum(b_cov, v * b.strength * profile)
        b_vis = np.maximum(b_vis, v * profile)
        visible_b.append(b.x_cm)

    # Consolidations: lung coordinates, from the lung surface down to an irregular border.
    xl_grid = x + off_x - lung_shift
    cons_id = np.zeros(x.shape, np.uint8)
    cons_beam = np.zeros(nb, np.float32)
    for i, c in enumerate(scene.consolidations, start=1):
        u = (xl_grid - c.x_cm) / (c.width_cm / 2)
        border = yl[None, :] + c.depth_cm * np.sqrt(np.clip(1 - u**2, 0, 1)) * (
            1 + _shred(c, xl_grid)
        )
        inside = (y > yl[None, :]) & (y < border) & (np.abs(u) < 1)
        cons_id[inside] = i
        cons_beam = np.maximum(cons_beam, inside.any(axis=0).astype(np.float32))

    # A-lines reverberate between the probe face and the mean pleural plane, so they stay smooth.
    sp_mean = geom.range_to_depth(yp_flat)
    amp = _echo_amplitude(
        scene, geom, s, y, sp, sp_mean, sl, wall, below_lung, b_cov, cons_id, xl_grid, yl, phase
    )
    amp[shadow] *= 0.06
    amp += np.where(has_rib[None, :], 0.7 * np.exp(-(((s - s_rib[None, :]) / 0.04) ** 2)), 0)
    lost = ~contact[None, :] & (s > 0.12)
    amp = np.where(lost, 0.002 + 0.02 * np.exp(-s) * (np.cos(s * 20) > 0.9), amp)
    amp *= (10 ** ((scene.gain_db - 0.3 * s) / 20)).astype(np.float32)

    shift_wall = off_x / _beam_spacing(geom, scene.pleura_depth_cm)
    shift_lung = (off_x - lung_shift) / _beam_spacing(geom, scene.pleura_depth_cm)
    lung_speckle = 0.85 * speckle.window(speckle.lung, shift_lung) + 0.53 * speckle.fresh()
    field = np.where(wall, speckle.window(speckle.wall, shift_wall), lung_speckle)
    echo = amp * field + 10 ** (-58 / 20) * speckle.fresh()
    db = 20 * np.log10(np.maximum(echo, 1e-6))
    grey_beam = np.clip((db + _DYNAMIC_RANGE_DB) / _DYNAMIC_RANGE_DB, 0, 1) ** 1.15 * 255

    map_x, map_y = geom.scan_maps
    grey = cv2.remap(grey_beam.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
    grey = np.where(geom.fov_mask, grey, 0)

    visible = contact & ~has_rib
    severity_inputs = _classify(scene, visible, b_vis, cons_id, contact)
    mask_beam = _mask(
        scene, geom, s, sp, sp_mean, sl, visible, b_vis, cons_id, severity_inputs["confluent"]
    )
    remapped = cv2.remap(mask_beam, map_x, map_y, cv2.INTER_NEAREST, borderValue=BACKGROUND)
    mask = np.asarray(np.where(geom.fov_mask, remapped, BACKGROUND), np.uint8)

    boxes = _boxes(cons_id, visible, geom, len(scene.consolidations))
    effusion_box = None
    if effusion is not None:
        fluid = (~wall) & ~below_lung & visible[None, :]
        fluid_image = cv2.remap(
            fluid.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderValue=0
        )
        effusion_box = _box(np.asarray(fluid_image, np.uint8))
    centre = slice(nb // 4, nb - nb // 4)
    truth = FrameTruth(
        frame=k + 1,
        b_line_count=_count_visible(visible_b, x_lung_l, visible),
        confluent_b_lines=bool(severity_inputs["confluent"]),
        severity=severity_inputs["severity"],
        contact=bool(contact.mean() >= 0.9),
        pleura_visible_fraction=float(visible.mean()),
        rib_shadow_over_pleura=bool(has_rib[centre].mean() > 0.3),
        consolidation_boxes=boxes,
        effusion_box=effusion_box,
    )
    return grey.astype(np.uint8), mask, truth


def _shred(c: Consolidation, xl: FloatArray) -> FloatArray:
    a, b, d = c.shred
    u = (xl - c.x_cm) / c.width_cm
    return (a * np.sin(u * 19 + 0.7) + b * np.sin(u * 41 + 2.0) + d * np.sin(u * 83)).astype(
        np.float32
    )


def _beam_spacing(geom: ProbeGeometry, depth_cm: float) -> float:
    """Lateral distance between neighbouring beams at ``depth_cm``."""
    if geom.probe.value == "convex":
        return (geom.radius_cm + depth_cm) * 2 * geom.half_angle / (geom.n_beams - 1)
    return geom.width_cm / (geom.n_beams - 1)


def _echo_amplitude(
    scene: ZoneScene,
    geom: ProbeGeometry,
    s: FloatArray,
    y: FloatArray,
    sp: FloatArray,
    sp_mean: FloatArray,
    sl: FloatArray,
    wall: npt.NDArray[np.bool_],
    below_lung: npt.NDArray[np.bool_],
    b_cov: FloatArray,
    cons_id: npt.NDArray[np.uint8],
    xl_grid: FloatArray,
    yl: FloatArray,
    phase: float,
) -> FloatArray:
    """Echo amplitude of every beam sample, before speckle and gain."""
    d = scene.pleura_depth_cm
    # Chest wall: skin, subcutaneous fat, muscle with bright fascia.
    shape = (geom.n_depth, geom.n_beams)
    amp = np.full(shape, 10 ** (-44 / 20), np.float32)  # air: a faint haze of artefact
    tissue = np.full(shape, 10 ** (-27 / 20), np.float32)
    tissue = np.where((y > 0.15 * d) & (y < 0.35 * d), 10 ** (-33 / 20), tissue)
    for frac, level in ((0.0, 0.3), (0.38, 0.22), (0.7, 0.16)):
        tissue += level * np.exp(-(((y - frac * d) / 0.03) ** 2))
    amp = np.where(wall, tissue, amp)

    # Pleura, weaker where broken.
    strength = np.ones(geom.n_beams, np.float32)
    cons_beams = (cons_id > 0).any(axis=0)
    strength[cons_beams] = 0.35
    amp += strength[None, :] * np.exp(-(((s - sp[None, :]) / _PLEURA_SIGMA_CM) ** 2))
    if scene.effusion is not None:
        fluid = ~wall & ~below_lung
        amp = np.where(fluid, 10 ** (-60 / 20), amp)
        amp += 0.8 * np.exp(-(((s - sl[None, :]) / _PLEURA_SIGMA_CM) ** 2))

    # A-lines: reverberations of the pleura at whole multiples of its range, erased by B-lines.
    keep = (1 - b_cov) * (1 - cons_beams.astype(np.float32))
    for k, level in ((2, 0.45), (3, 0.22), (4, 0.11)):
        sigma = _PLEURA_SIGMA_CM * (1 + 0.3 * k)
        amp += (
            scene.a_line_gain
            * level
            * keep[None, :]
            * np.exp(-(((s - k * sp_mean[None, :]) / sigma) ** 2))
        )

    # B-lines: from the lung surface to the bottom of the image without fading.
    below = np.clip((s - sl[None, :]) / 0.05, 0, 1)
    b_amp = 0.42 * b_cov[None, :] * below * np.exp(-0.02 * np.clip(s - sl[None, :], 0, None))
    amp = np.maximum(amp, b_amp.astype(np.float32))

    # Consolidations: tissue-like, with air bronchograms and a bright shredded deep border.
    inside = cons_id > 0
    amp = np.where(inside, 10 ** (-32 / 20), amp)  # hypoechoic tissue, like hepatised lung
    for i, c in enumerate(scene.consolidations, start=1):
        region = cons_id == i
        if not region.any():
            continue
        for fx, fz, size in c.bronchograms:
            bx = c.x_cm + fx * c.width_cm / 2
            by = yl.mean() + fz * c.depth_cm
            pulse = 0.6 + 0.4 * np.sin(2 * np.pi * phase + fx * 5)
            blob = np.exp(-(((xl_grid - bx) / (2 * size)) ** 2 + ((y - by) / size) ** 2))
            amp = np.where(region, np.maximum(amp, pulse * 0.8 * blob), amp)
        edge = region & ~np.roll(region, -2, axis=0)
        amp = np.where(edge, 0.25, amp)
        # Comet tails from the deep border.
        beams = region.any(axis=0)
        deepest = np.where(beams, (region * s).max(axis=0), np.inf)
        tail = beams[None, :] & (s > deepest[None, :])
        amp = np.where(tail, np.maximum(amp, 0.18), amp)
    return amp.astype(np.float32)


def _classify(
    scene: ZoneScene,
    visible: npt.NDArray[np.bool_],
    b_vis: FloatArray,
    cons_id: npt.NDArray[np.uint8],
    contact: npt.NDArray[np.bool_],
) -> dict[str, int | bool | None]:
    """The ICLUS score of what this frame shows."""
    b_beams = (b_vis > _B_LINE_SEEN) & visible
    confluent = bool(visible.any() and b_beams.sum() >= 0.5 * visible.sum())
    large = small = False
    for i, c in enumerate(scene.consolidations, start=1):
        seen = ((cons_id == i).any(axis=0) & visible).sum()
        if seen >= 3:
            large |= c.large
            small |= not c.large
    if contact.mean() < 0.5 or not visible.any():
        severity: int | None = None
    elif confluent or large:
        severity = 3
    elif small:
        severity = 2
    elif b_beams.any():
        severity = 1
    else:
        severity = 0
    return {"severity": severity, "confluent": confluent}


def _mask(
    scene: ZoneScene,
    geom: ProbeGeometry,
    s: FloatArray,
    sp: FloatArray,
    sp_mean: FloatArray,
    sl: FloatArray,
    visible: npt.NDArray[np.bool_],
    b_vis: FloatArray,
    cons_id: npt.NDArray[np.uint8],
    confluent: bool | int | None,
) -> npt.NDArray[np.uint8]:
    """Class of every beam sample: the structures drawn, labelled by the score they indicate."""
    mask = np.full((geom.n_depth, geom.n_beams), BACKGROUND, np.uint8)
    b_beams = (b_vis > _B_LINE_SEEN) & visible
    cons_beams = (cons_id > 0).any(axis=0) & visible
    healthy = visible & ~b_beams & ~cons_beams
    near_pleura = np.abs(s - sp[None, :]) < 2.5 * _PLEURA_SIGMA_CM
    mask[near_pleura & healthy[None, :]] = 0
    if scene.a_line_gain > 0:
        for k in (2, 3):
            near = np.abs(s - k * sp_mean[None, :]) < 2.5 * _PLEURA_SIGMA_CM * (1 + 0.3 * k)
            mask[near & healthy[None, :]] = 0
    b_class = 3 if confluent else 1
    b_region = (s > sl[None, :] - 2 * _PLEURA_SIGMA_CM) & b_beams[None, :]
    mask[b_region] = b_class
    for i, c in enumerate(scene.consolidations, start=1):
        region = (cons_id == i) & visible[None, :]
        mask[region] = 3 if c.large else 2
    return mask


def _boxes(
    cons_id: npt.NDArray[np.uint8], visible: npt.NDArray[np.bool_], geom: ProbeGeometry, n: int
) -> tuple[tuple[int, int, int, int], ...]:
    map_x, map_y = geom.scan_maps
    seen = np.where(visible[None, :], cons_id, 0).astype(np.uint8)
    image = cv2.remap(seen, map_x, map_y, cv2.INTER_NEAREST, borderValue=0)
    boxes = []
    for i in range(1, n + 1):
        box = _box(np.asarray(image == i))
        if box is not None:
            boxes.append(box)
    return tuple(boxes)


def _box(mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8]) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) < 9:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _count_visible(
    xs: list[float], x_lung_at_pleura: FloatArray, visible: npt.NDArray[np.bool_]
) -> int:
    """B-lines whose root on the pleura is in view and not under a rib shadow."""
    count = 0
    for bx in xs:
        j = int(np.argmin(np.abs(x_lung_at_pleura - bx)))
        in_view = x_lung_at_pleura.min() <= bx <= x_lung_at_pleura.max()
        if in_view and visible[j]:
            count += 1
    return count
