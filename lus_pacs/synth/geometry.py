"""Probe geometry: where each beam sample lies in the body and in the image.

The simulator renders in beam space (depth along the beam x beam index), where shadows, A-lines
and B-lines follow the beams as they do in a real scanner, then scan-converts to the image.
Physical coordinates are in cm: x lateral from the probe centre, y depth below the skin at the
probe centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

import numpy as np
import numpy.typing as npt

from lus_pacs.imaging.writer import UltrasoundRegion

FloatArray = npt.NDArray[np.float32]


class Probe(StrEnum):
    CONVEX = "convex"
    LINEAR = "linear"


@dataclass(frozen=True)
class ProbeGeometry:
    """A probe's field of view placed in an image of ``rows`` x ``cols`` pixels."""

    probe: Probe
    rows: int
    cols: int
    depth_cm: float
    cm_per_px: float
    n_depth: int
    n_beams: int
    centre_x_px: float
    top_px: float
    """Image row of the skin at the probe centre."""
    radius_cm: float = 0.0
    """Convex only: radius of the transducer face."""
    half_angle: float = 0.0
    """Convex only: half the sector angle, radians."""
    width_cm: float = 0.0
    """Linear only: width of the transducer face."""

    @classmethod
    def make(cls, probe: Probe, rows: int, cols: int, depth_cm: float) -> ProbeGeometry:
        """Fit the field of view into the image, leaving margins for burned-in text."""
        top_margin, bottom_margin, side_margin = 0.08 * rows, 0.04 * rows, 0.12 * cols
        if probe is Probe.CONVEX:
            radius, half_angle = 4.0, np.deg2rad(30.0)
            height_cm = radius + depth_cm - radius * np.cos(half_angle)
            width_cm = 2 * (radius + depth_cm) * np.sin(half_angle)
            cm_per_px = max(
                height_cm / (rows - top_margin - bottom_margin), width_cm / (cols - 2 * side_margin)
            )
            # The skin at the probe centre lies below the sector's top corners.
            top_px = top_margin + radius * (1 - np.cos(half_angle)) / cm_per_px
            n_beams = 192
            extra = {"radius_cm": radius, "half_angle": float(half_angle)}
        else:
            width_cm = 4.0
            cm_per_px = max(
                depth_cm / (rows - top_margin - bottom_margin), width_cm / (cols - 2 * side_margin)
            )
            top_px = top_margin
            n_beams = round(width_cm / cm_per_px)
            extra = {"width_cm": width_cm}
        return cls(
            probe=probe,
            rows=rows,
            cols=cols,
            depth_cm=depth_cm,
            cm_per_px=float(cm_per_px),
            n_depth=round(depth_cm / cm_per_px),
            n_beams=n_beams,
            centre_x_px=cols / 2,
            top_px=float(top_px),
            **extra,
        )

    @cached_property
    def depth_axis(self) -> FloatArray:
        """Range along the beam of each depth sample, cm from the skin."""
        return np.linspace(0, self.depth_cm, self.n_depth, dtype=np.float32)

    @cached_property
    def beam_angles(self) -> FloatArray:
        """Convex: steering angle of each beam; linear: zeros."""
        if self.probe is Probe.LINEAR:
            return np.zeros(self.n_beams, np.float32)
        return np.linspace(-self.half_angle, self.half_angle, self.n_beams, dtype=np.float32)

    @cached_property
    def beam_origins(self) -> FloatArray:
        """Linear: lateral position of each beam, cm; convex: zeros (beams share the apex)."""
        if self.probe is Probe.CONVEX:
            return np.zeros(self.n_beams, np.float32)
        half = self.width_cm / 2
        return np.linspace(-half, half, self.n_beams, dtype=np.float32)

    @cached_property
    def physical(self) -> tuple[FloatArray, FloatArray]:
        """(x, y) in cm of every beam sample, each (n_depth, n_beams)."""
        s = self.depth_axis[:, None]
        if self.probe is Probe.CONVEX:
            r = self.radius_cm + s
            theta = self.beam_angles[None, :]
            return (r * np.sin(theta)).astype(np.float32), (
                r * np.cos(theta) - self.radius_cm
            ).astype(np.float32)
        x = np.broadcast_to(self.beam_origins[None, :], (self.n_depth, self.n_beams))
        y = np.broadcast_to(s, (self.n_depth, self.n_beams))
        return x.astype(np.float32), y.astype(np.float32)

    def range_to_depth(self, y_cm: FloatArray | float) -> FloatArray:
        """Range along each beam at which it reaches depth ``y_cm`` (per beam or one value)."""
        y = np.broadcast_to(np.asarray(y_cm, np.float32), (self.n_beams,))
        if self.probe is Probe.CONVEX:
            cos = np.cos(self.beam_angles)
            return ((y + self.radius_cm) / cos - self.radius_cm).astype(np.float32)
        return y.astype(np.float32)

    def lateral_at_depth(self, y_cm: FloatArray | float) -> FloatArray:
        """Lateral position where each beam reaches depth ``y_cm``."""
        if self.probe is Probe.CONVEX:
            y = np.broadcast_to(np.asarray(y_cm, np.float32), (self.n_beams,))
            return ((y + self.radius_cm) * np.tan(self.beam_angles)).astype(np.float32)
        return self.beam_origins.copy()

    @cached_property
    def scan_maps(self) -> tuple[FloatArray, FloatArray]:
        """For cv2.remap: beam-grid coordinates (beam, depth sample) of every image pixel;
        -1 outside the field of view."""
        py, px = np.mgrid[0 : self.rows, 0 : self.cols].astype(np.float32)
        dx = (px - self.centre_x_px) * self.cm_per_px
        dy = (py - self.top_px) * self.cm_per_px
        if self.probe is Probe.CONVEX:
            dy = dy + self.radius_cm
            r = np.hypot(dx, dy)
            theta = np.arctan2(dx, dy)
            s = r - self.radius_cm
            beam = (theta + self.half_angle) / (2 * self.half_angle) * (self.n_beams - 1)
            inside = (np.abs(theta) <= self.half_angle) & (s >= 0) & (s <= self.depth_cm)
        else:
            s = dy
            half = self.width_cm / 2
            beam = (dx + half) / self.width_cm * (self.n_beams - 1)
            inside = (np.abs(dx) <= half) & (s >= 0) & (s <= self.depth_cm)
        depth = s / self.depth_cm * (self.n_depth - 1)
        map_x = np.where(inside, beam, -1).astype(np.float32)
        map_y = np.where(inside, depth, -1).astype(np.float32)
        return map_x, map_y

    @cached_property
    def fov_mask(self) -> npt.NDArray[np.bool_]:
        """Image pixels inside the field of view."""
        return self.scan_maps[0] >= 0

    def to_image(self, x_cm: float, y_cm: float) -> tuple[float, float]:
        """Image pixel (column, row) of a physical point."""
        return (
            self.centre_x_px + x_cm / self.cm_per_px,
            self.top_px + y_cm / self.cm_per_px,
        )

    def region(self, transducer_frequency_khz: int) -> UltrasoundRegion:
        """The calibrated tissue region, as SequenceOfUltrasoundRegions describes it."""
        ys, xs = np.nonzero(self.fov_mask)
        x0, y0 = int(xs.min()), int(ys.min())
        ref_x = round(self.centre_x_px) - x0
        ref_y = round(self.top_px) - y0
        return UltrasoundRegion(
            x0=x0,
            y0=y0,
            x1=int(xs.max()),
            y1=int(ys.max()),
            cm_per_pixel_x=self.cm_per_px,
            cm_per_pixel_y=self.cm_per_px,
            reference_pixel_x=ref_x,
            reference_pixel_y=ref_y,
            transducer_frequency_khz=transducer_frequency_khz,
        )
