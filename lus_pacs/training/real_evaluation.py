"""``lus-pacs evaluate real``: every family's clip-level findings measured on real clips.

Two protocols, never mixed (see :mod:`lus_pacs.training.real`):

* **leave-source-out** on the trainable clips: the real-data recipe (lung image measurements
  and a class-balanced logistic head, :mod:`lus_pacs.families.measurements`) is fitted on every
  source but one and scores the clips of the source left out; the scores of all sources are
  pooled. Tasks: B-lines, consolidation, effusion.
  Severity: the recipe of :mod:`lus_pacs.families.severity.measured` (B-line and
  consolidation heads, an ordinal head on their logits), refitted whole without the source.
* **shipped bundles**: the node's own families, loaded from ``models_dir`` and run through
  :func:`lus_pacs.pipeline.analyse` on each clip's DICOM import exactly as on a pushed cine,
  on the trainable clips (**in-sample**: the B-line head, the severity recipe, the
  consolidation and key-frame bundles and the assessment's reference were fitted on them, so
  these rows do not measure generalisation) and on the evaluation-only clips (another device
  and other sites).

Each interval is given twice: resampling clips (``[low, high]``) and resampling whole sources
(``by source``): clips of one source are alike, so the first understates how a figure would
move on another device or site.

The shipped bundles' external rows come again for each part of the evaluation-only clips that
differs in what a new site would differ in (:func:`external_subsets`): each probe (convex,
linear) and each scanner the labels name (Butterfly iQ), so a site with a handheld convex probe
reads the rows nearest its own.

Every AUC row (B-lines, consolidation, effusion; both protocols) gives the AUC twice: pooled
over the sources, and within them (``auc_within_source``: only pairs of clips from one source
count). A site running the node on one device sees the second; the first also asks where each
source's scores sit as a whole, which is what a threshold shared by all devices needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from lus_pacs.domain import Findings
from lus_pacs.families.b_lines.real_head import OPERATING_SENSITIVITY
from lus_pacs.families.measurements import HEAD_L2, held_out_logits
from lus_pacs.families.severity.measured import OPERATING_SHARE
from lus_pacs.inference.bundle import INFERENCE, read_json
from lus_pacs.settings import SegmentationSettings, Settings
from lus_pacs.training.pocus import import_clip
from lus_pacs.training.real import EXTERNAL, TRAINABLE, Measured, RealClip, measure, real_clips
from lus_pacs.training.real_report import (
    Row,
    binary_row,
    markdown,
    plot_calibration,
    plot_confusions,
    plot_rocs,
    severity_row,
    share_row,
)

log = logging.getLogger(__name__)

RECIPE_TASKS = (
    ("b_lines", "b_lines"),
    ("consolidation", "consolidations"),
    ("effusion", "effusion"),
)
"""(row name, label column) of the leave-source-out rows."""
_GATE_FAMILIES = ("key_frames", "assessment")
"""What decides whether a clip is assessable: they run whatever ``families`` says."""
MIN_SUBSET = 10
"""Fewest clips of a part of the external set that gets rows of its own
(:func:`external_subsets`)."""
EVALUATED_FAMILIES = (
    "key_frames",
    "assessment",
    "b_lines",
    "consolidation",
    "severity",
    "segmentation",
)


@dataclass(frozen=True)
class RealEvaluation:
    rows: tuple[Row, ...]
    refused: tuple[tuple[str, str], ...]
    table: str


def leave_source_out(
    measured: Measured,
    label: Callable[[RealClip], bool | None],
    l2: float = HEAD_L2,
    *,
    sensitivity: float | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], list[str]]:
    """Pooled held-out scores of the trainable clips that have a label, their labels and
    sources, by the head fitted stratified by source on the other sources
    (:func:`~lus_pacs.families.measurements.held_out_logits`; with ``sensitivity``, shifted to
    that operating point as the shipped head is, the shift fitted without the source too). A
    source whose training side holds one class only (or, with ``sensitivity``, its positives
    all in one source) scores its clips NaN: they are left out of the row and counted (a score
    of 0.5 was a positive call at the 0.5 threshold, flattering sensitivity)."""
    chosen = [
        i for i, c in enumerate(measured.clips) if c.dataset == TRAINABLE and label(c) is not None
    ]
    y = np.array([bool(label(measured.clips[i])) for i in chosen])
    groups = [measured.clips[i].group for i in chosen]
    logits = held_out_logits(measured.features[chosen], y, groups, l2, sensitivity=sensitivity)
    scores = np.where(np.isnan(logits), np.nan, 1.0 / (1.0 + np.exp(-np.nan_to_num(logits))))
    return scores, y, groups


def severity_leave_source_out(
    measured: Measured, share: float | None = None
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[str]]:
    """Pooled held-out scores of the scored trainable clips, their true scores and sources:
    for each source, the severity recipe fitted on the trainable clips of all other sources.

    With ``share``, each source's scores are given at the operating point
    (:func:`~lus_pacs.families.severity.measured.operating_shift`) fitted on the other
    sources alone, as the shipped recipe's is on all of them: the shift never sees the source
    it scores. Where the other sources cannot give one, the recipe scores without it
    (:func:`~lus_pacs.families.severity.measured.held_out_scores`)."""
    from lus_pacs.families.severity.measured import held_out_scores

    trainable = [i for i, c in enumerate(measured.clips) if c.dataset == TRAINABLE]
    clips = [measured.clips[i] for i in trainable]
    groups = [c.group for c in clips]
    predicted = held_out_scores(
        measured.features[trainable],
        groups,
        [c.clip.b_lines for c in clips],
        [c.clip.consolidations for c in clips],
        [c.severity for c in clips],
        share,
    )
    scored = [i for i, c in enumerate(clips) if c.severity is not None]
    truth = np.array([clips[i].severity for i in scored], np.intp)
    return predicted[scored].astype(np.intp), truth, [groups[i] for i in scored]


def shipped_findings(
    clips: Sequence[RealClip],
    data_root: Path,
    cache_dir: Path,
    settings: Settings,
) -> dict[str, Findings]:
    """The node's findings on every clip (by clip name), from its DICOM import."""
    from lus_pacs.pipeline import Models, analyse

    models = Models.load(settings)
    found: dict[str, Findings] = {}
    for number, clip in enumerate(clips, 1):
        path = import_clip(clip.clip, data_root / clip.dataset, cache_dir / clip.dataset)
        header = pydicom.dcmread(path)
        found[clip.name] = analyse(header, clip.name, models, settings)
        if number % 25 == 0:
            log.info("shipped bundles: %d of %d clips", number, len(clips))
    return found


def evaluate_real(
    data_root: Path,
    cache_dir: Path,
    out_dir: Path,
    *,
    settings: Settings | None = None,
    rounds: int = 1000,
    shipped: bool = True,
    families: Sequence[str] | None = None,
) -> RealEvaluation:
    """Measure the recipe leave-source-out and the shipped bundles on real clips; write
    ``real.md``, ``roc.png``, ``calibration.png`` and ``confusion.png`` into ``out_dir``.

    ``families`` limits the shipped run to those of :data:`EVALUATED_FAMILIES` (the key-frame
    and assessment families always run: the assessment gate needs them); all when None.

    Raises
    ------
    ValueError
        A name in ``families`` is not one of :data:`EVALUATED_FAMILIES`.
    """
    unknown = sorted(set(families or ()) - set(EVALUATED_FAMILIES))
    if unknown:
        raise ValueError(
            f"evaluate real: no family {', '.join(unknown)}; choose from "
            f"{', '.join(EVALUATED_FAMILIES)}."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = real_clips(data_root)
    measured = measure(clips, data_root, cache_dir)
    rows: list[Row] = []
    for name, column in RECIPE_TASKS:

        def label(clip: RealClip, column: str = column) -> bool | None:
            value = getattr(clip.clip, column)
            return None if value is None else bool(value)

        # The B-line recipe, as shipped, decides at its operating point (see the model card).
        sensitivity = OPERATING_SENSITIVITY if name == "b_lines" else None
        scores, labels, groups = leave_source_out(measured, label, sensitivity=sensitivity)
        scored = np.isfinite(scores)
        unscored = int((~scored).sum())
        rows.append(
            binary_row(
                f"{name} (measurement recipe)",
                name if not unscored else f"{name} ({unscored} clips not scorable, left out)",
                "leave-source-out",
                scores[scored],
                labels[scored],
                0.5,
                groups=[g for g, k in zip(groups, scored, strict=True) if k],
                rounds=rounds,
            )
        )
    predicted, truth, sources = severity_leave_source_out(measured, OPERATING_SHARE)
    rows.append(
        severity_row(
            "severity (measurement recipe)",
            "leave-source-out",
            predicted,
            truth,
            rounds=rounds,
            groups=sources,
        )
    )
    if shipped:
        base = settings or Settings()
        run = base.model_copy(
            update={
                "models": [
                    f
                    for f in EVALUATED_FAMILIES
                    if families is None or f in families or f in _GATE_FAMILIES
                ],
                "segmentation": SegmentationSettings(frames="key", mc_samples=0),
            }
        )
        findings = shipped_findings(measured.clips, data_root, cache_dir, run)
        for dataset, protocol in (
            (TRAINABLE, "shipped, trainable clips (in-sample)"),
            (EXTERNAL, "shipped, external"),
        ):
            chosen = [c for c in measured.clips if c.dataset == dataset]
            rows.extend(_shipped_rows(chosen, findings, protocol, rounds, run.models_dir))
        for protocol, chosen in external_subsets(measured.clips):
            rows.extend(_shipped_rows(chosen, findings, protocol, rounds, run.models_dir))
    table = markdown(rows)
    (out_dir / "real.md").write_text(
        "# Real-data evaluation (lus-pacs evaluate real)\n\n"
        "Metrics as value [95 % bootstrap interval]; clips of both classes counted as in "
        "`clips` and `positives`. The B-line and severity leave-source-out rows score the "
        "recipes at their shipped operating points, each point fitted without the source it "
        "scores.\n\n" + table
    )
    plot_rocs(rows, out_dir / "roc.png")
    plot_calibration(rows, out_dir / "calibration.png")
    plot_confusions(rows, out_dir / "confusion.png")
    return RealEvaluation(tuple(rows), measured.refused, table)


def external_subsets(clips: Sequence[RealClip]) -> list[tuple[str, list[RealClip]]]:
    """The evaluation-only clips of each probe and of each scanner named in their labels, as
    (protocol, clips): ``shipped, external, convex probe``, ``shipped, external, Butterfly iQ``.

    A part is left out when it holds fewer than :data:`MIN_SUBSET` clips or every external
    clip (it would repeat the ``shipped, external`` rows).
    """
    external = [c for c in clips if c.dataset == EXTERNAL]
    parts = [
        (f"{probe.value} probe", [c for c in external if c.clip.probe is probe])
        for probe in sorted({c.clip.probe for c in external})
    ]
    parts += [
        (device, [c for c in external if c.clip.device == device])
        for device in sorted({c.clip.device for c in external} - {""})
    ]
    return [
        (f"shipped, external, {name}", chosen)
        for name, chosen in parts
        if MIN_SUBSET <= len(chosen) < len(external)
    ]


def _shipped_rows(
    clips: Sequence[RealClip],
    findings: dict[str, Findings],
    protocol: str,
    rounds: int,
    models_dir: Path,
) -> list[Row]:
    rows: list[Row] = []
    assessed = [c for c in clips if _assessable(findings[c.name])]
    if any(findings[c.name].assessment is not None for c in clips):
        rows.append(
            share_row(
                "assessment",
                "not assessable",
                protocol,
                [c not in assessed for c in clips],
                rounds=rounds,
            )
        )
    b_lines = [
        (found.probability, bool(c.clip.b_lines), c.group)
        for c in assessed
        if c.clip.b_lines is not None and (found := findings[c.name].b_lines) is not None
    ]
    if b_lines:
        threshold = float(read_json(models_dir / "b_lines" / INFERENCE)["threshold"])
        scores, labels, groups = zip(*b_lines, strict=True)
        rows.append(
            binary_row(
                "b_lines",
                "b_lines",
                protocol,
                scores,
                labels,
                threshold,
                groups=groups,
                rounds=rounds,
            )
        )
    consolidation = [
        (con.probability, bool(c.clip.consolidations), c.group)
        for c in assessed
        if c.clip.consolidations is not None and (con := findings[c.name].consolidation) is not None
    ]
    if consolidation:
        scores, labels, groups = zip(*consolidation, strict=True)
        rows.append(
            binary_row(
                "consolidation",
                "consolidation",
                protocol,
                scores,
                labels,
                0.5,
                groups=groups,
                rounds=rounds,
            )
        )
    severity = [
        (sev.score, score, c.group)
        for c in assessed
        if (score := c.severity) is not None and (sev := findings[c.name].severity) is not None
    ]
    if severity:
        predicted, truth, groups = zip(*severity, strict=True)
        rows.append(
            severity_row("severity", protocol, predicted, truth, rounds=rounds, groups=groups)
        )
    segmented = [
        (max((k.score for k in seg.classes), default=0), score, c.group)
        for c in assessed
        if (score := c.severity) is not None and (seg := findings[c.name].segmentation) is not None
    ]
    if segmented:
        predicted, truth, groups = zip(*segmented, strict=True)
        rows.append(
            severity_row(
                "segmentation",
                protocol,
                predicted,
                truth,
                rounds=rounds,
                task="highest score segmented vs clip severity",
                groups=groups,
            )
        )
    quality = [findings[c.name].key_frame_model for c in clips]
    flags = [q.quality.value == "usable" for q in quality if q is not None]
    if flags:
        rows.append(share_row("key_frames", "flagged usable", protocol, flags, rounds=rounds))
    return rows


def _assessable(found: Findings) -> bool:
    """The lung models read the cine (no assessment ran, or it said so)."""
    return found.assessment is None or found.assessment.assessable
