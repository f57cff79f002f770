"""The study summary: one Comprehensive SR (TID 1500) per exam, over all its cines.

Content tree::

    Imaging Measurement Report
      Observer: device lus-pacs; Procedure reported: diagnostic ultrasonography
      Image Library: every cine of the study
      Imaging Measurements
        Measurement Group                                   (one per zone scanned)
          Tracking Identifier "Zone R2" + Tracking UID
          Finding = Lung ultrasound score; Finding Site = Lung, Right, zone "R2"
          Lung ultrasound score = 2 {1}                     (the highest of the zone's cines)
          B-lines = Present | Absent                        (when the B-line model ran)
          Lung consolidation = Present | Absent             (when the consolidation model ran)
          Quality Assessment = Usable | Poor                (when the key-frame model ran;
                                                             Poor: no usable cine in the zone)
          Source of Measurement: the zone's cines
        Measurement Group                                   (the exam)
          Tracking Identifier "Lung ultrasound examination"
          Finding = Lung ultrasound examination summary
          Total lung ultrasound score = 7 {1}; Maximum possible = 18 {1}
          Zones scanned = 6 {zones}; Zones scored = 6 {zones}
          Zones with B-lines = 2 {zones}; Zones with consolidation = 1 {zones}
          Zones without a usable cine = 0 {zones}
          Source of Measurement: every cine
      Comment: research-software notice

Which zones had B-lines is in the zone groups; the exam group counts them. A model that did not
run leaves nothing in the tree. Each measurement names the model it comes from (TID 300's own
TID 4019): scores the severity model, B-line counts the B-line model.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lus_pacs.domain import ModelInfo, Quality
from lus_pacs.encode import codes
from lus_pacs.encode.assessment import finding_site
from lus_pacs.encode.common import (
    algorithm_identification,
    device_observer,
    public_header,
)
from lus_pacs.encode.sr import report_document
from lus_pacs.records import UNKNOWN_ZONE, StudySummary

SERIES_DESCRIPTION = "lus-pacs AI exam summary (research use, not a medical device)"

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def encode_study_summary(
    summary: StudySummary,
    sources: Sequence[Dataset],
    *,
    series_number: int = 906,
    instance_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """Encode a study summary (:class:`lus_pacs.records.StudySummary`) as a Comprehensive SR.

    Parameters
    ----------
    summary:
        The study's summary record: zones, each zone's cines and score, B-line zones.
    sources:
        The headers of the study's cines (pixel data neither needed nor copied); patient and
        study attributes are copied from the first.
    series_number, instance_uid, series_uid:
        Series Number, SOP Instance UID and Series Instance UID of the SR; new UIDs when None.
    instance_number:
        Instance Number in its series (later summaries of a growing study count up).

    Raises
    ------
    ValueError
        When a source is of another study than the summary, or a cine the summary names is
        not among the sources.
    lus_pacs.errors.UnreadableImageError
        When a source lacks the UIDs needed to reference it.
    """
    study = summary.study_instance_uid
    headers = {str(h.SOPInstanceUID): public_header(h) for h in sources}
    strangers = [u for u, h in headers.items() if h.StudyInstanceUID != study]
    if strangers:
        raise ValueError(
            f"Sources {strangers} are not of study {study}; a summary covers one study."
        )
    zone_cines = summary.zone_cines
    missing = [u for uids in zone_cines.values() for u in uids if u not in headers]
    if missing:
        raise ValueError(f"The summary names cines {missing} whose headers were not given.")
    sop_instance_uid = instance_uid or generate_uid()
    evidence = [headers[u] for uids in zone_cines.values() for u in uids]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer()),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=[
            *(
                _zone_group(summary, zone, [headers[u] for u in uids], sop_instance_uid)
                for zone, uids in zone_cines.items()
            ),
            _exam_group(summary, evidence, sop_instance_uid),
        ],
        referenced_images=evidence,
    )
    return report_document(
        report,
        evidence,
        series_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        series_description=SERIES_DESCRIPTION,
    )


def _zone_group(
    summary: StudySummary, zone: str, cines: Sequence[Dataset], sop_instance_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    known = zone if zone != UNKNOWN_ZONE else None
    score = summary.lus_score.per_zone.get(zone) if summary.lus_score else None
    evaluations = []
    read = summary.read(zone)  # else the zone was not looked at: no finding, not "absent"
    if summary.b_lines_assessed and read:
        present = zone in summary.b_line_zones
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=codes.B_LINES, value=codes.PRESENT if present else codes.ABSENT
            )
        )
    if summary.consolidation_zones is not None and read:
        present = zone in summary.consolidation_zones
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=codes.CONSOLIDATION, value=codes.PRESENT if present else codes.ABSENT
            )
        )
    if zone in (summary.not_assessable_zones or ()):
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=codes.ASSESSABILITY, value=codes.NOT_ASSESSABLE)
        )
    if zone in (summary.quality_zones or ()):
        poor = zone in (summary.poor_zones or ())
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=codes.QUALITY_ASSESSMENT,
                value=codes.QUALITY_VALUES[Quality.POOR if poor else Quality.USABLE],
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "zone", zone]),
            identifier=f"Zone {zone}" if known else "Zone unknown",
        ),
        finding_type=codes.LUS_SCORE,
        finding_sites=[finding_site(known)],
        measurements=(
            [
                hd.sr.Measurement(
                    name=codes.LUS_SCORE,
                    value=score,
                    unit=codes.UNITLESS,
                    algorithm_id=_algorithm(summary, "severity"),
                )
            ]
            if score is not None
            else None
        ),
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in cines],
    )


def _known(zones: Sequence[str]) -> int:
    return sum(z != UNKNOWN_ZONE for z in zones)


def _algorithm(summary: StudySummary, model: str) -> hd.sr.AlgorithmIdentification | None:
    version = summary.models.get(model)
    if version is None:
        return None
    return algorithm_identification(ModelInfo(name=model, version=version, title=model))


def _exam_group(
    summary: StudySummary, cines: Sequence[Dataset], sop_instance_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    # Zones are counted among the zones the headers name: the cines of no zone ("?") may
    # repeat one (two cines of no zone with B-lines beside R1 read "2 zones with B-lines"
    # of 2 scanned).
    counts: list[tuple[Code, int, Code, str | None]] = [
        (codes.ZONES_SCANNED, _known(summary.zones), codes.ZONES, None)
    ]
    if summary.b_lines_assessed:
        zones = _known(summary.b_line_zones)
        counts.append((codes.ZONES_WITH_B_LINES, zones, codes.ZONES, "b_lines"))
    if summary.consolidation_zones is not None:
        zones = _known(summary.consolidation_zones)
        counts.append((codes.ZONES_WITH_CONSOLIDATION, zones, codes.ZONES, "consolidation"))
    if summary.poor_zones is not None:
        zones = _known(summary.poor_zones)
        counts.append((codes.ZONES_WITHOUT_USABLE_CINE, zones, codes.ZONES, "key_frames"))
    if summary.not_assessable_zones is not None:
        zones = _known(summary.not_assessable_zones)
        counts.append((codes.ZONES_NOT_ASSESSABLE, zones, codes.ZONES, "assessment"))
    if summary.failed_cines:
        counts.append((codes.CINES_NOT_PROCESSED, len(summary.failed_cines), codes.CINES, None))
    score = summary.lus_score
    if score is not None:
        counts = [
            (codes.TOTAL_LUS_SCORE, score.total, codes.UNITLESS, "severity"),
            (codes.MAXIMUM_LUS_SCORE, score.maximum, codes.UNITLESS, "severity"),
            (codes.ZONES_SCORED, score.zones_scored, codes.ZONES, "severity"),
            *counts,
        ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "exam"]),
            identifier="Lung ultrasound examination",
        ),
        finding_type=codes.LUS_EXAM,
        finding_sites=[finding_site(None)],
        measurements=[
            hd.sr.Measurement(
                name=name,
                value=value,
                unit=unit,
                algorithm_id=_algorithm(summary, model) if model else None,
            )
            for name, value, unit, model in counts
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in cines],
    )
