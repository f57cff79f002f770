"""The SR content that says where a cine was scanned and whether the lung models read it:
the finding site of every group, and the assessment's group."""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import generate_uid

from lus_pacs.domain import Findings
from lus_pacs.encode import codes
from lus_pacs.encode.common import algorithm_identification, check_frames, frame_references

_HAS_CONCEPT_MOD = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD


def finding_site(zone: str | None) -> hd.sr.FindingSite:
    """Lung, with the side (CID 244) and the zone label when the zone is known."""
    site = hd.sr.FindingSite(
        anatomic_location=codes.LUNG, laterality=codes.laterality_for_zone(zone)
    )
    if zone:
        zone_item = hd.sr.TextContentItem(
            name=codes.LUNG_ZONE, value=zone, relationship_type=_HAS_CONCEPT_MOD
        )
        if "ContentSequence" in site:
            site.ContentSequence.append(zone_item)
        else:
            site.ContentSequence = hd.sr.ContentSequence([zone_item])
    return site


def assessment_groups(
    findings: Findings, header: Dataset, sop_instance_uid: str
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The assessment's group: whether the lung models read the cine and, when they did not,
    why (they then have no group: no lung finding is reported on this cine); and how many
    frames, which, the decoder read only in part (never key frames)."""
    assessment = findings.assessment
    if assessment is None:
        return []
    damaged = check_frames(findings.damaged, header, "damaged frames")
    measurements = [
        hd.sr.Measurement(
            name=codes.DAMAGED_FRAMES,
            value=len(damaged),
            unit=codes.FRAMES,
            referenced_images=[
                hd.sr.SourceImageForMeasurement.from_source_image(
                    header, frame_references(header, damaged)
                )
            ],
        )
    ]
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[sop_instance_uid, "assessment"]),
                identifier=f"Assessability{where}",
            ),
            finding_type=codes.ASSESSABILITY,
            algorithm_id=algorithm_identification(assessment.model),
            finding_sites=[finding_site(zone)],
            measurements=measurements if damaged else None,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.ASSESSABILITY,
                    value=codes.ASSESSABLE if assessment.assessable else codes.NOT_ASSESSABLE,
                ),
                *(
                    hd.sr.QualitativeEvaluation(
                        name=codes.NOT_ASSESSABLE_REASON,
                        value=codes.NOT_ASSESSABLE_REASONS[reason],
                    )
                    for reason in assessment.reasons
                ),
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
        )
    ]
