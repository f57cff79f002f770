"""``lus-pacs evaluate simulator``: how far the simulator's cines sit from real clips, measurement
by measurement.

The real-data models read the lung measurements of :mod:`lus_pacs.inference.lung_features`. A
simulator meant to teach networks what real devices show must put its cines where real clips sit
on each of them; the shipped simulator does not (its B-line streaks are 4-5 real standard
deviations brighter than real ones, see the B-line model card). For every clip measurement this
reports:

* **shift**: the simulated cines' mean less the real clips' mean, in real standard deviations;
* **inside**: the share of simulated cines inside the real clips' 5-95 % range;
* **spread**: the simulated cines' standard deviation over the real clips'.

Only the trainable real clips (``pocus/``) are compared: the evaluation-only clips measure
generalisation and must not tune the simulator either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lus_pacs.imaging.decode import read_cine
from lus_pacs.inference.lung_features import CLIP_FEATURES, cine_features
from lus_pacs.training.real import TRAINABLE, measure, real_clips
from lus_pacs.training.simulated import find_simulated


@dataclass(frozen=True)
class MeasurementGap:
    """Where the simulated cines sit among the real clips on one measurement."""

    name: str
    shift: float
    """(simulated mean - real mean) / real standard deviation."""
    inside: float
    """Share of simulated cines within the real clips' 5th to 95th percentile."""
    spread: float
    """Simulated standard deviation / real standard deviation."""


def measurement_gaps(
    simulated: npt.ArrayLike, real: npt.ArrayLike, names: Sequence[str]
) -> list[MeasurementGap]:
    """One :class:`MeasurementGap` per column of ``simulated`` (cines, n) against ``real``
    (clips, n), the largest shift first.

    Raises
    ------
    ValueError
        Either set is empty, or the columns do not match ``names``.
    """
    sim = np.asarray(simulated, np.float64)
    ref = np.asarray(real, np.float64)
    if sim.ndim != 2 or ref.ndim != 2 or not len(sim) or not len(ref):
        raise ValueError("measurement_gaps needs simulated and real measurements (rows, n).")
    if sim.shape[1] != len(names) or ref.shape[1] != len(names):
        raise ValueError(
            f"measurement_gaps: {sim.shape[1]} simulated and {ref.shape[1]} real columns "
            f"for {len(names)} names."
        )
    scale = ref.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    low, high = np.percentile(ref, [5, 95], axis=0)
    gaps = [
        MeasurementGap(
            name=name,
            shift=float((sim[:, j].mean() - ref[:, j].mean()) / scale[j]),
            inside=float(((sim[:, j] >= low[j]) & (sim[:, j] <= high[j])).mean()),
            spread=float(sim[:, j].std() / scale[j]),
        )
        for j, name in enumerate(names)
    ]
    return sorted(gaps, key=lambda gap: -abs(gap.shift))


def simulated_measurements(root: Path) -> npt.NDArray[np.float32]:
    """The clip measurements (cines, len(CLIP_FEATURES)) of every cine ``lus-pacs synth`` wrote
    under ``root``, decoded as the node decodes them.

    Raises
    ------
    ValueError
        No simulated cine under ``root``.
    """
    cines = find_simulated(root)
    if not cines:
        raise ValueError(f"no simulated cine (*/*.truth.json) under {root}")
    return np.stack([cine_features(read_cine(c.dicom))[1] for c in cines])


def gap_table(gaps: Sequence[MeasurementGap]) -> str:
    """The gaps as a markdown table, one line per measurement."""
    lines = [
        "| measurement | shift (real SDs) | simulated inside real 5-95 % | spread / real |",
        "|---|---|---|---|",
    ]
    lines.extend(f"| {g.name} | {g.shift:+.2f} | {g.inside:.0%} | {g.spread:.2f} |" for g in gaps)
    return "\n".join(lines) + "\n"


def evaluate_simulator(
    simulated_root: Path, data_root: Path, cache_dir: Path, out_dir: Path
) -> tuple[list[MeasurementGap], str]:
    """Compare the simulated cines under ``simulated_root`` with the trainable real clips under
    ``data_root`` (measured once into ``cache_dir``); write ``realism.md`` into ``out_dir``.

    Returns
    -------
    The gaps, largest shift first, and the table.
    """
    trainable = [c for c in real_clips(data_root) if c.dataset == TRAINABLE]
    real = measure(trainable, data_root, cache_dir).features
    gaps = measurement_gaps(simulated_measurements(simulated_root), real, CLIP_FEATURES)
    table = gap_table(gaps)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "realism.md").write_text(
        "# Simulated cines against the trainable real clips (lus-pacs evaluate simulator)\n\n"
        f"Simulated: `{simulated_root}`; real: {len(real)} trainable clips. Shift is in real "
        "standard deviations.\n\n" + table
    )
    return gaps, table
