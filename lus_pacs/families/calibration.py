"""A site's calibration of the clip decisions: offsets fitted on cines the site labelled.

A new device moves where the shipped heads' scores sit more than how they order clips. On the
20 evaluation-only clips of a handheld convex probe (Butterfly iQ) the B-line head (0.3.0)
orders the clips at AUC 0.80 yet calls 2 of the 13 B-line clips present, and the severity
recipe (0.2.0) scored its score-2 and -3 clips mostly 1 (``lus-pacs evaluate real``: the ``shipped,
external, Butterfly iQ`` rows). No threshold fitted on other devices knows how far a new one
moves; the site's own labelled cines do. ``lus-pacs calibrate`` fits, with the bundles'
weights unchanged:

* ``b_lines``: an offset added to the B-line head's logit, the intercept of a logistic
  regression with the head's logit as a fixed offset, classes weighted equally (as the head was
  fitted), so that the offset does not follow the share of B-line cines the site happened to
  label. It replaces the bundle's operating point (B-lines 0.4.0 lean to sensitivity because
  a new device's level is unknown) by the site's balanced one. Measured on the Butterfly clips
  (scratch, 2026-12-05: the offset fitted on half of them, scored on the other half, 20 random
  halvings each way) from 0.3.0: sensitivity 0.15 -> 0.65, specificity 1.00 -> 0.69, F1 0.25
  -> 0.70 (means over the scored halves); 0.4.0 uncalibrated sits near there on that scanner.
* ``consolidation``: the same for the consolidation network's logit. On the Butterfly clips
  (four with a consolidation; same halvings): sensitivity 0.00 -> 0.50, specificity 0.88 ->
  0.68, F1 0.00 -> 0.35.
* ``severity``: a shift added to the severity recipe's ordinal score ``eta`` (the cuts stay),
  fitted by maximum likelihood of the site's scores against the shipped cuts, so that it
  replaces their operating point (severity 0.3.0 moved them to score severe lungs severe on
  an unseen device), unweighted: the recipe's ordinal head
  weighed every score equally because no training source's mix of scores is any site's, but
  the site's own cines have the mix it will see. Measured the same way on the 15 scored
  Butterfly clips from 0.2.0: accuracy 0.20 -> 0.31, quadratic kappa 0.05 -> 0.04 (0.3.0
  uncalibrated: 0.27, 0.13): it moves the level, not the order, which on that device is the
  recipe's failure too.

The node applies them when ``calibration`` names the file in its settings; each calibrated
family's version becomes ``<bundle version>+site.<site>.<digest of the offset>`` in every record,
SR and result UID, and a calibration fitted on another bundle version is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from scipy.special import expit

from lus_pacs.domain import Cine
from lus_pacs.errors import ConfigError, ModelError, describe
from lus_pacs.families.measurements import fit_intercept

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,31}")
"""What a site may be called: it ends up in a DICOM Algorithm Version (LO, 64 characters)."""
FAMILIES = ("b_lines", "consolidation", "severity")
"""The families a calibration can hold (and the labels file's columns for them)."""
T = TypeVar("T")


@dataclass(frozen=True)
class FamilyOffset:
    """One family's offset and what it was fitted on."""

    bundle_version: str
    """The bundle version the offset belongs to; another version refuses it."""
    offset: float
    clips: int
    """The site's labelled cines it was fitted on."""
    counts: tuple[int, ...]
    """Cines per class: (absent, present) for B-lines, (score 0, 1, 2, 3) for severity."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.offset):
            raise ConfigError(f"offset {self.offset!r} is not a finite number")
        # As `lus-pacs calibrate` writes it: an edited file's -40 called every cine negative.
        if not abs(self.offset) < _BOUND:
            raise ConfigError(f"offset {self.offset!r} is beyond any device's move (+-{_BOUND:g})")
        if self.clips < 1 or any(c < 0 for c in self.counts) or sum(self.counts) != self.clips:
            raise ConfigError(
                f"clips {self.clips} and counts {list(self.counts)} do not agree: not as "
                "lus-pacs calibrate writes them"
            )


@dataclass(frozen=True)
class SiteCalibration:
    """A site's offsets (see the module); a family without one runs as shipped."""

    site: str
    offsets: dict[str, FamilyOffset]

    def __post_init__(self) -> None:
        if not SITE_NAME.fullmatch(self.site):
            raise ConfigError(
                f"site name {self.site!r}: 1-32 letters, digits, '.' or '-', starting with a "
                "letter or digit (it becomes part of the algorithm version)."
            )
        unknown = sorted(set(self.offsets) - set(FAMILIES))
        if unknown:
            raise ConfigError(
                f"calibration of {', '.join(unknown)}: only {', '.join(FAMILIES)} can be "
                "calibrated."
            )

    def version(self, family: str, bundle_version: str) -> str:
        """The version a calibrated family reports, ``0.3.0+site.<site>.<digest>``: the digest
        (6 hex digits of the offset) gives a refit under the same site name results of its own
        (result UIDs derive from the versions)."""
        offset = self.offsets[family].offset
        digest = hashlib.sha256(f"{family}:{offset!r}".encode()).hexdigest()[:6]
        return f"{bundle_version}+site.{self.site}.{digest}"

    def offset(self, family: str, bundle_version: str) -> float | None:
        """The family's offset, None when it has none.

        Raises
        ------
        ModelError
            The offset was fitted on another version of the family's bundle.
        """
        found = self.offsets.get(family)
        if found is None:
            return None
        if found.bundle_version != bundle_version:
            raise ModelError(
                f"the site calibration of {family} ({self.site}) was fitted on bundle version "
                f"{found.bundle_version}, the loaded bundle is {bundle_version}: run "
                "`lus-pacs calibrate` again with this bundle."
            )
        return found.offset

    def save(self, path: Path) -> None:
        document = {"site": self.site, **{f: asdict(o) for f, o in self.offsets.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SiteCalibration:
        """The calibration written by :meth:`save`.

        Raises
        ------
        ConfigError
            The file cannot be read or is not a calibration.
        """
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: the site calibration cannot be read ({exc})") from exc
        try:
            document = json.loads(text)
            offsets = {
                family: FamilyOffset(
                    _typed(entry["bundle_version"], str),
                    float(_typed(entry["offset"], float)),
                    _typed(entry["clips"], int),
                    tuple(_typed(c, int) for c in entry["counts"]),
                )
                for family, entry in document.items()
                if family != "site"
            }
            return cls(str(document["site"]), offsets)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a site calibration ({exc!r})") from exc


def _typed(value: object, kind: type[T]) -> T:
    """``value`` as the JSON of a calibration holds it: a number where a number is (not a
    string, not true, which read as 1), text where text is."""
    numbers = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, numbers):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value  # type: ignore[return-value]


def site_offset(family: str, bundle_version: str, path: Path | None) -> tuple[float, str] | None:
    """The offset of ``family`` in the settings' ``calibration`` file and the version the
    family then reports, or None when there is no file or it holds no offset for the family:
    what each calibrated family's ``load`` applies.

    Raises
    ------
    ConfigError
        The file cannot be read or is not a calibration.
    ModelError
        Its offset was fitted on another version of the family's bundle.
    """
    calibration = None if path is None else SiteCalibration.load(path)
    offset = None if calibration is None else calibration.offset(family, bundle_version)
    if calibration is None or offset is None:
        return None
    return offset, calibration.version(family, bundle_version)


def fit_ordinal_shift(
    etas: npt.ArrayLike, cuts: npt.ArrayLike, scores: Sequence[int], n_scores: int = 4
) -> float:
    """The shift ``d`` maximising the likelihood of ``scores`` under ``P(score <= k) =
    sigmoid(cut_k - eta - d)``: the site's own mix of scores is the one to match.

    Raises
    ------
    ValueError
        Fewer than two different scores, a score outside 0 .. n_scores - 1, or an ``eta``
        that is not a number (the bounded search then returned its first probe, -4.72, as if
        fitted).
    """
    eta = np.asarray(etas, np.float64)
    c = np.asarray(cuts, np.float64)
    s = np.asarray(scores, np.intp)
    if len(eta) != len(s) or len(set(s.tolist())) < 2:
        raise ValueError("A severity calibration needs scored cines of two scores or more.")
    if not np.isfinite(eta).all():
        raise ValueError("A severity calibration needs a finite clip score of every cine.")
    if s.min() < 0 or s.max() >= n_scores or len(c) != n_scores - 1:
        raise ValueError(f"Scores must be 0 .. {n_scores - 1} with {n_scores - 1} cuts.")
    bounds = np.r_[-np.inf, c, np.inf]

    def loss(d: float) -> float:
        upper = expit(bounds[s + 1] - eta - d)
        lower = expit(bounds[s] - eta - d)
        return -float(np.sum(np.log(np.clip(upper - lower, 1e-12, 1.0))))

    return _minimise(loss)


def _minimise(loss: Callable[[float], float]) -> float:
    # The loss is convex in its one parameter; 20 either way is far beyond any device's move
    # (a fit at the bound is refused: _within_reach).
    found = minimize_scalar(
        loss, bounds=(-_BOUND, _BOUND), method="bounded", options={"xatol": 1e-6}
    )
    return float(found.x)


def _within_reach(offset: float, labels: Path) -> float:
    """``offset``, unless it is at (or past) the bound of any device's move.

    Raises
    ------
    ConfigError
        It is: the labels disagree with the model.
    """
    if not abs(offset) < _BOUND - 0.1:
        raise ConfigError(
            f"{labels}: the labelled cines put the offset at {offset:+.1f}, at or past the bound "
            f"of {_BOUND:.0f}: they disagree with the model beyond any device's move (check the "
            "labels and that the cines are lung ultrasound of one scanner)"
        )
    return offset


_BOUND = 20.0
"""Largest offset searched (logits)."""
_FEW = 20
"""Fewer labelled cines than this give an offset the command warns about."""
_FEW_OF_A_CLASS = 10
"""Labelled cines of the smaller class below which the offset is flagged as resting on them."""


@dataclass(frozen=True)
class LabelledCine:
    """One row of a site's labels file: a cine and what the site's reader said of it."""

    path: Path
    b_lines: bool | None
    consolidation: bool | None
    severity: int | None


def read_site_labels(path: Path) -> list[LabelledCine]:
    """The rows of a labels file (CSV: ``file`` relative to the file's folder, ``b_lines`` 0, 1
    or empty, ``severity`` 0-3 or empty, and optionally ``consolidation`` 0, 1 or empty).

    Raises
    ------
    ConfigError
        The file cannot be read, a column is missing, or a value is not one of those.
    """
    import csv

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    if not rows or not {"file", "b_lines", "severity"} <= set(rows[0]):
        raise ConfigError(f"{path}: needs the columns file, b_lines and severity")
    cines = []
    for line, row in enumerate(rows, start=2):
        file = (row["file"] or "").strip()
        values = {k: (row.get(k) or "").strip() for k in FAMILIES}
        if not file:
            raise ConfigError(f"{path}: line {line}: no file")
        binary = all(values[k] in ("", "0", "1") for k in ("b_lines", "consolidation"))
        if not binary or values["severity"] not in ("", "0", "1", "2", "3"):
            raise ConfigError(
                f"{path}: line {line}: b_lines and consolidation must be 0, 1 or empty and "
                f"severity 0-3 or empty; got {values['b_lines']!r}, "
                f"{values['consolidation']!r} and {values['severity']!r}"
            )
        cines.append(
            LabelledCine(
                Path(path).parent / file,
                None if values["b_lines"] == "" else values["b_lines"] == "1",
                None if values["consolidation"] == "" else values["consolidation"] == "1",
                None if values["severity"] == "" else int(values["severity"]),
            )
        )
    return cines


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate_site` fitted and how the site's own cines fare before and after
    (in-sample: the offsets were fitted on them)."""

    calibration: SiteCalibration
    refused: tuple[tuple[Path, str], ...]
    lines: tuple[str, ...]


def offset_lines(
    family: str,
    z: npt.NDArray[np.float64],
    y: npt.NDArray[np.bool_],
    offset: float,
    threshold: float,
) -> list[str]:
    """What a fitted offset does on the site's labelled cines (logits ``z``, labels ``y``), as
    shipped and calibrated, with a warning where it rests on few cines: few in all, few of the
    smaller class (the classes weigh alike, so one positive among a hundred sets the offset on
    its own), or worse on both sensitivity and specificity than as shipped."""
    lines = []
    smaller = int(min(y.sum(), (~y).sum()))
    if len(y) < _FEW:
        lines.append(
            f"{family}: only {len(y)} cines: the offset is uncertain; label {_FEW} or more"
        )
    if smaller < _FEW_OF_A_CLASS:
        which = "with" if y.sum() <= (~y).sum() else "without"
        lines.append(
            f"{family}: WARNING only {smaller} labelled cine(s) {which} the finding: the offset "
            f"rests on them; label {_FEW_OF_A_CLASS} or more of each class"
        )
    figures = []
    for name, o in (("as shipped", 0.0), ("calibrated", offset)):
        called = expit(z + o) >= threshold
        sensitivity, specificity = float(called[y].mean()), float((~called[~y]).mean())
        figures.append((sensitivity, specificity))
        lines.append(
            f"{family} {name}: sensitivity {sensitivity:.2f}, specificity "
            f"{specificity:.2f} on the site's {len(y)} cines"
        )
    (shipped_se, shipped_sp), (se, sp) = figures
    if se <= shipped_se and sp <= shipped_sp and (se, sp) != (shipped_se, shipped_sp):
        lines.append(
            f"{family}: WARNING the calibration does worse than the bundle as shipped on both "
            "measures on the site's own cines: do not install it; label more cines"
        )
    return lines


def calibrate_site(labels: Path, site: str, models_dir: Path) -> CalibrationReport:
    """Fit a site's offsets (see the module) on the cines of a labels file
    (:func:`read_site_labels`) with the bundles under ``models_dir``.

    A cine that cannot be read is reported in :attr:`CalibrationReport.refused` and left out;
    a family whose labelled cines do not hold two classes (scores) gets no offset.

    Raises
    ------
    ConfigError
        The labels file is invalid, or no family could be calibrated.
    ModelError
        A bundle cannot be loaded or has no real-data head to calibrate.
    """
    from lus_pacs.errors import UnreadableImageError
    from lus_pacs.families.b_lines.inference import BLineModel
    from lus_pacs.families.consolidation.inference import ConsolidationModel
    from lus_pacs.families.severity.inference import SeverityModel
    from lus_pacs.imaging.decode import read_cine

    rows = read_site_labels(labels)
    labelled = {f for f in FAMILIES if any(getattr(r, f) is not None for r in rows)}
    # Per family: the cine's score before any calibration, the bundle version, and for the
    # two presence families their threshold.
    scorers: dict[str, Callable[[Cine], float]] = {}
    versions: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    if "b_lines" in labelled:
        b_model = BLineModel.load(models_dir / "b_lines")
        scorers["b_lines"], versions["b_lines"] = b_model.clip_logit, b_model.model.version
        thresholds["b_lines"] = b_model.threshold
    if "consolidation" in labelled:
        c_model = ConsolidationModel.load(models_dir / "consolidation", saliency_frames=0)
        scorers["consolidation"], versions["consolidation"] = (
            c_model.clip_logit,
            c_model.model.version,
        )
        thresholds["consolidation"] = c_model.threshold
    s_model = None
    if "severity" in labelled:
        s_model = SeverityModel.load(models_dir / "severity", "torch")
        scorers["severity"], versions["severity"] = s_model.clip_eta, s_model.model.version
    found: dict[str, list[tuple[float, int]]] = {f: [] for f in FAMILIES}
    refused: list[tuple[Path, str]] = []
    for row in rows:
        wanted = [f for f in FAMILIES if getattr(row, f) is not None]
        if not wanted:
            continue
        try:
            cine = read_cine(row.path)
            scores = {f: scorers[f](cine) for f in wanted}
        except UnreadableImageError as exc:
            refused.append((row.path, exc.reason))
            continue
        except ModelError:
            raise
        # A cine that breaks a model is that cine's failure only, as in the node.
        except Exception as exc:
            refused.append((row.path, describe(exc)))
            continue
        if not all(np.isfinite(value) for value in scores.values()):
            refused.append((row.path, "a model gave no score (not a number)"))
            continue
        for f, value in scores.items():
            found[f].append((value, int(getattr(row, f))))
    offsets: dict[str, FamilyOffset] = {}
    lines: list[str] = []
    for family, threshold in thresholds.items():
        if len({label for _, label in found[family]}) < 2:
            lines.append(f"{family}: not calibrated (the labelled cines do not hold both classes)")
            continue
        z = np.array([v for v, _ in found[family]])
        y = np.array([bool(t) for _, t in found[family]])
        offset = _within_reach(fit_intercept(z, y), labels)
        offsets[family] = FamilyOffset(
            versions[family], offset, len(y), (int((~y).sum()), int(y.sum()))
        )
        lines += offset_lines(family, z, y, offset, threshold)
    if s_model is not None:
        if len({label for _, label in found["severity"]}) >= 2:
            eta = np.array([v for v, _ in found["severity"]])
            s = np.array([t for _, t in found["severity"]])
            cuts = s_model.cuts
            shift = _within_reach(fit_ordinal_shift(eta, cuts, s.tolist()), labels)
            offsets["severity"] = FamilyOffset(
                versions["severity"], shift, len(s), tuple(np.bincount(s, minlength=4).tolist())
            )
            if len(s) < _FEW:
                lines.append(
                    f"severity: only {len(s)} cines: the shift is uncertain; score {_FEW} or more"
                )
            for name, d in (("as shipped", 0.0), ("calibrated", shift)):
                predicted = ((eta + d)[:, None] > cuts[None, :]).sum(axis=1)
                lines.append(
                    f"severity {name}: accuracy {(predicted == s).mean():.2f} on the site's "
                    f"{len(s)} scored cines"
                )
        else:
            lines.append("severity: not calibrated (the scored cines do not hold two scores)")
    if not offsets:
        not_read = (
            f" ({len(refused)} of its cines not read: "
            + "; ".join(f"{path}: {why}" for path, why in refused[:5])
            + (" ..." if len(refused) > 5 else "")
            + ")"
            if refused
            else ""
        )
        raise ConfigError(
            f"{labels}: nothing to calibrate: label B-lines or consolidation on cines of both "
            f"classes, or severity on cines of two scores or more{not_read}."
        )
    return CalibrationReport(SiteCalibration(site, offsets), tuple(refused), tuple(lines))
