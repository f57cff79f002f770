"""One table from output kind to encoder: every per-cine result object made the same way.

Each encoder takes the cine's findings, its source header and the object's identity (UIDs and
series number, built once by the caller) and returns the dataset, or None when the findings
give it nothing to show (no key frame, no segmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
from pydicom.dataset import Dataset

from lus_pacs.domain import Findings, OutputKind, ResultIdentity
from lus_pacs.encode.kos import encode_kos
from lus_pacs.encode.pstate import encode_presentation_state
from lus_pacs.encode.seg import encode_seg, encode_uncertainty_seg
from lus_pacs.encode.sr import encode_sr
from lus_pacs.errors import EncodeError

Encoder = Callable[[Findings, Dataset, ResultIdentity], Dataset | None]

SERIES_NUMBERS: Mapping[OutputKind, int] = {
    OutputKind.SR: 900,
    OutputKind.KOS: 901,
    OutputKind.SEG: 902,
    OutputKind.SEG_BINARY: 903,
    OutputKind.SEG_UNCERTAINTY: 904,
    OutputKind.PR: 905,
    OutputKind.STUDY_SR: 906,
}
"""Series number of each kind of result object in the source's study."""


def _of_findings(encode: Callable[..., Dataset | None]) -> Encoder:
    """An encoder of the whole findings (SR, KOS, presentation state): they share one
    signature."""

    def run(findings: Findings, header: Dataset, identity: ResultIdentity) -> Dataset | None:
        return encode(
            findings,
            header,
            series_number=identity.series_number,
            instance_uid=identity.instance_uid,
            series_uid=identity.series_uid,
        )

    return run


def _seg(binary: bool) -> Encoder:
    def encode(findings: Findings, header: Dataset, identity: ResultIdentity) -> Dataset | None:
        seg = findings.segmentation
        if seg is None:
            return None
        return encode_seg(
            dict(zip(seg.frames, seg.masks, strict=True)),
            header,
            model=seg.model,
            series_number=identity.series_number,
            instance_uid=identity.instance_uid,
            series_uid=identity.series_uid,
            binary=binary,
        )

    return encode


def _uncertainty(findings: Findings, header: Dataset, identity: ResultIdentity) -> Dataset | None:
    seg = findings.segmentation
    if seg is None or seg.uncertainty is None:
        return None  # no segmentation, or run without Monte-Carlo dropout: nothing to send
    maps = {f: np.clip(u, 0.0, 0.5) for f, u in zip(seg.frames, seg.uncertainty, strict=True)}
    return encode_uncertainty_seg(
        maps,
        header,
        model=seg.model,
        series_number=identity.series_number,
        instance_uid=identity.instance_uid,
        series_uid=identity.series_uid,
    )


ENCODERS: Mapping[OutputKind, Encoder] = {
    OutputKind.SR: _of_findings(encode_sr),
    OutputKind.KOS: _of_findings(encode_kos),
    OutputKind.SEG: _seg(binary=False),
    OutputKind.SEG_BINARY: _seg(binary=True),
    OutputKind.SEG_UNCERTAINTY: _uncertainty,
    OutputKind.PR: _of_findings(encode_presentation_state),
}
"""The per-cine kinds; the study summary SR is made per study (:mod:`lus_pacs.encode.summary`)."""


def encode_objects(
    findings: Findings,
    header: Dataset,
    kinds: Sequence[OutputKind],
    identity: Callable[[OutputKind], ResultIdentity],
    on_failure: Callable[[OutputKind, str], None] | None = None,
) -> list[tuple[OutputKind, Dataset]]:
    """The result objects of one cine, in the order of ``kinds``; ``identity`` gives each
    kind's UIDs and series number.

    With ``on_failure``, a kind whose encoder fails on this source is reported to it (kind,
    reason) and left out, and the other kinds are still made.

    Raises
    ------
    EncodeError
        Without ``on_failure``: an encoder failed; the message names the kind and the source
        instance.
    """
    made: dict[OutputKind, Dataset] = {}
    # The SR comes last: it references the BINARY SEG made before it (segments, evidence).
    for kind in sorted(kinds, key=lambda k: k is OutputKind.SR):
        encoder = ENCODERS.get(kind)
        if encoder is None:
            continue
        dataset: Dataset | None
        try:
            if kind is OutputKind.SR:
                seg = made.get(OutputKind.SEG_BINARY)
                with_seg = _of_findings(partial(encode_sr, segmentation=seg))
                dataset = with_seg(findings, header, identity(kind))
            else:
                dataset = encoder(findings, header, identity(kind))
        # highdicom and pydicom raise many kinds of error on a source they cannot follow: each
        # is this object's failure, not the cine's.
        except Exception as exc:
            reason = str(exc).strip() or type(exc).__name__
            if on_failure is None:
                raise EncodeError(
                    f"{kind.value} of {findings.source.sop_instance_uid} could not be made: "
                    f"{reason}"
                ) from exc
            on_failure(kind, reason)
            continue
        if dataset is not None:
            dataset.SeriesDescription = zoned(str(dataset.SeriesDescription), findings.source.zone)
            made[kind] = dataset
    return [(kind, made[kind]) for kind in kinds if kind in made]


def zoned(description: str, zone: str | None) -> str:
    """A per-cine result series' description with its cine's lung zone after the kind
    (``lus-pacs AI findings R3 (research use, not a medical device)``): the series of a six-zone
    exam read alike in a viewer's study panel. Unchanged without a zone, or where it would not
    fit a LO (64 characters)."""
    label = (zone or "").strip()
    head, bracket, tail = description.partition(" (")
    if not label or "\\" in label:
        return description
    named = f"{head} {label}{bracket}{tail}"
    return named if len(named) <= 64 else description
