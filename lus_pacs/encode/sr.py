"""The per-cine Comprehensive SR (TID 1500 Measurement Report) of what the models found.

Content tree (TID 1500 > TID 1501, one measurement group for the cine)::

    Imaging Measurement Report
      Observer: device lus-pacs; Procedure reported: diagnostic ultrasonography
      Image Library: the source cine
      Imaging Measurements
        Measurement Group
          Tracking Identifier "B-lines, zone R2" + Tracking UID
          Finding = B-lines                                  (only with B-line findings)
          Finding Site = Lung, Laterality = Right, Lung ultrasound zone = "R2"
          Algorithm Name / Version / Manufacturer (TID 4019)  (one per model that ran)
          Probability = 0.87 {1}
          B-line frames = 5 {frames}  <- Source of Measurement: cine, frames 3..7
          B-lines = Present | Absent
          Source of Measurement: the cine
          Best illustration of finding: cine, the key frames
          Key frame = Representative B-line frame | ...      (one per key frame the B-line
            <- Source of Measurement: cine, the frame         model chose; each other reason
                                                              sits in its model's group)
        Measurement Group                                    (only with the key-frame model)
          Tracking Identifier "Image quality, zone R2"; Finding = Image Quality
          Finding Site; Algorithm (TID 4019)
          Probability a clinician would keep the frame = 0.93 {1}  <- cine, the best frame
          Quality Assessment = Usable | Poor-quality lung ultrasound cine
          Quality Finding = Rib shadow over the pleura | ... (a poor cine's reasons, strongest
                                                              first)
          Source of Measurement: the cine
          Key frame = Frame with the highest keep probability <- cine, the best frame
        Measurement Group                                    (only with consolidation findings)
          Tracking Identifier "Lung consolidation, zone R2"; Finding = Lung consolidation
          Finding Site; Algorithm (TID 4019); Probability {1}; Lung consolidation = Present|Absent
        Measurement Group (TID 1410), one per saliency box
          Image Region = closed POLYLINE around the box   <- cine, the box's frame
          Finding = Lung consolidation; Algorithm (TID 4019)
        Measurement Group                                    (only with severity findings)
          Tracking Identifier "Lung ultrasound score, zone R2" + Tracking UID
          Finding = Lung ultrasound score; Finding Site as above; Algorithm (TID 4019)
          Lung ultrasound score = 2 {1}
          Probability = 0.81 {1}                             (of that score, from the aggregator)
          Frames with lung ultrasound score k = n {frames}   <- the frames, k = 0..3 when n > 0
          Key frame = Highest-severity frame                 <- cine, the top frame
        Measurement Group (TID 1410)                         (networks with a spatial transformer)
          Tracking Identifier "Lung ultrasound score region, zone R2"
          Image Region = closed POLYLINE around the box   <- cine, the top-scoring frame
          Finding = Region of the lung ultrasound score
          Lung ultrasound score = 3 {1}                      (of that frame)
        Measurement Group                                    (only with segmentation findings)
          Tracking Identifier "Lung ultrasound score masks, zone R2"
          Finding = Lung ultrasound score masks; Finding Site; Algorithm (TID 4019)
          Pixels with lung ultrasound score k = n {pixels}   <- the frames where it appears
          Uncertainty of score k mask = u {1}, Derivation Mean     (with Monte-Carlo dropout)
          Uncertainty of score k mask = u {1}, Derivation Maximum
          Source of Measurement: the segmented frames
      Comment: research-software notice

A model that did not run leaves nothing in the tree: no B-line item is ever made up.
"""

from __future__ import annotations

from collections.abc import Set

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from lus_pacs import __version__
from lus_pacs.domain import (
    BLineFindings,
    Findings,
    KeyFrame,
    KeyFrameReason,
    SegmentationFindings,
    SeverityFindings,
)
from lus_pacs.encode import codes
from lus_pacs.encode.assessment import assessment_groups, finding_site
from lus_pacs.encode.common import (
    MANUFACTURER,
    RESEARCH_NOTICE,
    algorithm_identification,
    check_frames,
    copy_retired_patient_attributes,
    device_observer,
    frame_references,
    source_header,
)

SERIES_DESCRIPTION = "lus-pacs AI findings (research use, not a medical device)"

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_HAS_CONCEPT_MOD = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD


def encode_sr(
    findings: Findings,
    source: Dataset,
    *,
    series_number: int = 900,
    instance_uid: str | None = None,
    series_uid: str | None = None,
    segmentation: Dataset | None = None,
) -> Dataset:
    """Encode the findings on one cine as a Comprehensive SR in a new series of its study.

    Parameters
    ----------
    findings:
        What the models found in the cine.
    source:
        The cine's header (pixel data is neither needed nor copied). Patient and study
        attributes are copied from it; its SOP Instance UID must be ``findings.source``'s.
    series_number:
        Series Number of the new SR series.
    instance_uid, series_uid:
        SOP Instance UID and Series Instance UID of the SR; new UIDs when None.
    segmentation:
        The SEG of the same findings' masks (segment ``k + 1`` is score ``k``), when one is
        sent: each score's region then references its segment (TID 1411, as IHE AI Results
        has an SR point at its SEG) and the SEG is listed in the SR's evidence.

    Returns
    -------
    pydicom.Dataset
        The SR document (a :class:`highdicom.sr.ComprehensiveSR`), ready for ``save_as``.

    Raises
    ------
    lus_pacs.errors.UnreadableImageError
        When the source header lacks the UIDs needed to reference it.
    ValueError
        When the findings belong to another instance or name frames the source lacks.
    """
    header = source_header(source, findings)
    sop_instance_uid = instance_uid or generate_uid()
    # Derived, so that encoding the same findings with the same UIDs gives the same tree.
    tracking_uid = generate_uid(entropy_srcs=[sop_instance_uid, "tracking"])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer()),
        procedure_reported=codes.PROCEDURE,
        imaging_measurements=[
            _cine_group(findings, header, tracking_uid),
            *assessment_groups(findings, header, sop_instance_uid),
            *_quality_groups(findings, header, sop_instance_uid),
            *_consolidation_groups(findings, header, sop_instance_uid),
            *_severity_groups(findings, header, sop_instance_uid),
            *_segmentation_groups(findings, header, sop_instance_uid),
            *_segment_regions(findings, header, segmentation, sop_instance_uid),
        ],
        referenced_images=[header],
    )
    return report_document(
        report,
        [header] if segmentation is None else [header, segmentation],
        series_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        series_description=SERIES_DESCRIPTION,
    )


def report_document(
    report: hd.sr.MeasurementReport,
    evidence: list[Dataset],
    *,
    series_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    series_description: str,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR holding ``report``, with the research notice as its last item,
    the private coding scheme declared, and patient and study from the first evidence."""
    report[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT, value=RESEARCH_NOTICE, relationship_type=_CONTAINS
        )
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description,
        manufacturer_model_name=MANUFACTURER,
        software_versions=__version__,
        coding_schemes=[codes.coding_scheme_identification()],
    )
    copy_retired_patient_attributes(evidence[0], sr)
    return sr


def _cine_group(
    findings: Findings, header: Dataset, tracking_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for the cine: where it was scanned, and what each model that ran found."""
    zone = findings.source.zone
    b = findings.b_lines
    subject = "B-lines" if b is not None else "Lung ultrasound cine"
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid, identifier=f"{subject}, zone {zone}" if zone else subject
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=codes.B_LINES if b is not None else None,
        algorithm_id=algorithm_identification(b.model) if b is not None else None,
        finding_sites=[finding_site(zone)],
        measurements=_b_line_measurements(b, header) if b is not None else None,
        qualitative_evaluations=(
            [
                hd.sr.QualitativeEvaluation(
                    name=codes.B_LINES, value=codes.PRESENT if b.present else codes.ABSENT
                )
            ]
            if b is not None
            else None
        ),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )
    # The key frames, all in one standard item for any reader. Each reason goes in the group
    # of the model that chose the frame, so it is credited to that model's algorithm.
    key_frames = sorted({k.frame for k in findings.key_frames})
    if key_frames:
        group[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=codes.BEST_ILLUSTRATION,
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=header.SOPInstanceUID,
                referenced_frame_numbers=frame_references(
                    header, check_frames(key_frames, header, "Key frames")
                ),
                relationship_type=_CONTAINS,
            )
        )
    # A reason whose model has no group of its own (its findings absent) stays here.
    here = [KeyFrameReason.B_LINES, KeyFrameReason.ATTENTION]
    if findings.severity is None:
        here.append(KeyFrameReason.SEVERITY)
    if findings.key_frame_model is None:
        here.append(KeyFrameReason.BEST)
    _add_key_frame_items(group, findings, header, tuple(here))
    return group


def _add_key_frame_items(
    group: hd.sr.MeasurementsAndQualitativeEvaluations,
    findings: Findings,
    header: Dataset,
    reasons: tuple[KeyFrameReason, ...],
) -> None:
    """The key frames chosen for ``reasons``, each with its reason, into ``group``."""
    group[0].ContentSequence.extend(
        _key_frame_item(key, header) for key in findings.key_frames if key.reason in reasons
    )


def _key_frame_item(key: KeyFrame, header: Dataset) -> hd.sr.CodeContentItem:
    """Key frame = why it was chosen, inferred from the frame (Source of Measurement)."""
    item = hd.sr.CodeContentItem(
        name=codes.KEY_FRAME,
        value=codes.KEY_FRAME_REASONS[key.reason],
        relationship_type=_CONTAINS,
    )
    item.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.SourceImageForMeasurement.from_source_image(
                header, frame_references(header, [key.frame])
            )
        ]
    )
    return item


def _quality_groups(
    findings: Findings, header: Dataset, sop_instance_uid: str
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The key-frame model's group: whether the cine is usable, why not, and how likely a
    clinician would keep its best frame. A group of its own, as every model has: TID 1501 names
    one algorithm per group, and its Probability would be mistaken for the B-line one."""
    kf = findings.key_frame_model
    if kf is None:
        return []
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    (best,) = check_frames([kf.best_frame], header, "Best frame")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "quality"]),
            identifier=f"Image quality{where}",
        ),
        finding_type=codes.IMAGE_QUALITY,
        algorithm_id=algorithm_identification(kf.model),
        finding_sites=[finding_site(zone)],
        measurements=[
            hd.sr.Measurement(
                name=codes.KEEP_PROBABILITY,
                value=float(kf.frame_scores[best - 1]),
                unit=codes.UNITLESS,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement.from_source_image(
                        header, frame_references(header, [best])
                    )
                ],
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.QUALITY_ASSESSMENT, value=codes.QUALITY_VALUES[kf.quality]
            ),
            *(
                hd.sr.QualitativeEvaluation(
                    name=codes.QUALITY_FINDING, value=codes.POOR_REASONS[reason]
                )
                for reason in kf.reasons
            ),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )
    _add_key_frame_items(group, findings, header, (KeyFrameReason.BEST,))
    return [group]


def _b_line_measurements(b: BLineFindings, header: Dataset) -> list[hd.sr.Measurement]:
    frames = check_frames(b.frames, header, "B-line frames")
    return [
        # float(): highdicom refuses numpy scalars such as np.float32.
        hd.sr.Measurement(name=codes.PROBABILITY, value=float(b.probability), unit=codes.UNITLESS),
        hd.sr.Measurement(
            name=codes.B_LINE_FRAMES,
            value=len(frames),
            unit=codes.FRAMES,
            referenced_images=(
                [
                    hd.sr.SourceImageForMeasurement.from_source_image(
                        header, frame_references(header, frames)
                    )
                ]
                if frames
                else None
            ),
        ),
    ]


def _consolidation_groups(
    findings: Findings, header: Dataset, sop_instance_uid: str
) -> list[
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
]:
    """The consolidation model's finding and one region group (SCOORD box) per saliency box."""
    con = findings.consolidation
    if con is None:
        return []
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    algorithm = algorithm_identification(con.model)
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[sop_instance_uid, "consolidation"]),
                identifier=f"Lung consolidation{where}",
            ),
            finding_type=codes.CONSOLIDATION,
            algorithm_id=algorithm,
            finding_sites=[finding_site(zone)],
            measurements=[
                hd.sr.Measurement(
                    name=codes.PROBABILITY, value=float(con.probability), unit=codes.UNITLESS
                )
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.CONSOLIDATION,
                    value=codes.PRESENT if con.present else codes.ABSENT,
                )
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
        )
    ]
    for i, found in enumerate(con.boxes, start=1):
        (frame,) = check_frames([found.frame], header, "Consolidation box frame")
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[sop_instance_uid, "consolidation", str(i)]),
                    identifier=f"Lung consolidation region {i}{where}",
                ),
                referenced_region=_box_region(found.box, frame, header),
                finding_type=codes.CONSOLIDATION,
                algorithm_id=algorithm,
                finding_sites=[finding_site(zone)],
            )
        )
    return groups


def _box_region(box: tuple[int, int, int, int], frame: int, header: Dataset) -> hd.sr.ImageRegion:
    """A box as a closed POLYLINE (column, row pixel corners) on one frame of the source."""
    x0, y0, x1, y1 = box
    corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(corners, dtype=np.float32),
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            header, frame_references(header, [frame])
        ),
    )


def _severity_groups(
    findings: Findings, header: Dataset, sop_instance_uid: str
) -> list[
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
]:
    """The severity model's clip score group and, when it has one, the box of its top frame."""
    sev = findings.severity
    if sev is None:
        return []
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    algorithm = algorithm_identification(sev.model)
    clip = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "severity"]),
            identifier=f"Lung ultrasound score{where}",
        ),
        finding_type=codes.LUS_SCORE,
        algorithm_id=algorithm,
        finding_sites=[finding_site(zone)],
        measurements=_severity_measurements(sev, header, {*findings.damaged, *findings.blank}),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(header)],
    )
    _add_key_frame_items(clip, findings, header, (KeyFrameReason.SEVERITY,))
    if sev.box is None:
        return [clip]
    (frame,) = check_frames([sev.top_frame], header, "Top-scoring frame")
    region = _box_region(sev.box, frame, header)
    box = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "severity-region"]),
            identifier=f"Lung ultrasound score region{where}",
        ),
        referenced_region=region,
        finding_type=codes.SCORE_REGION,
        algorithm_id=algorithm,
        finding_sites=[finding_site(zone)],
        # The frame's own score, unless the clip score does not follow the frame scores.
        measurements=[]
        if sev.clip_from_measurements
        else [
            hd.sr.Measurement(
                name=codes.LUS_SCORE,
                value=sev.frame_scores[sev.top_frame - 1],
                unit=codes.UNITLESS,
            )
        ],
    )
    return [clip, box]


def _severity_measurements(
    sev: SeverityFindings, header: Dataset, left_out: Set[int]
) -> list[hd.sr.Measurement]:
    """The clip score, its probability, and the frames of each score: a frame ``left_out`` of
    every reading (damaged: read only in part, grey where its data ended; blank: no echo) is
    in none, whatever score it was given. A clip score from the real-data recipe comes
    without frames of each score (:class:`~lus_pacs.domain.SeverityFindings`)."""
    items = [
        hd.sr.Measurement(name=codes.LUS_SCORE, value=sev.score, unit=codes.UNITLESS),
        hd.sr.Measurement(
            name=codes.PROBABILITY, value=float(sev.probabilities[sev.score]), unit=codes.UNITLESS
        ),
    ]
    if sev.clip_from_measurements:  # frame scores the clip score does not follow: not shown
        return items
    for score, name in enumerate(codes.FRAMES_WITH_SCORE):
        frames = [
            i + 1 for i, s in enumerate(sev.frame_scores) if s == score and i + 1 not in left_out
        ]
        if not frames:
            continue
        frames = check_frames(frames, header, f"Frames with score {score}")
        items.append(
            hd.sr.Measurement(
                name=name,
                value=len(frames),
                unit=codes.FRAMES,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement.from_source_image(
                        header, frame_references(header, frames)
                    )
                ],
            )
        )
    return items


def _segmentation_groups(
    findings: Findings, header: Dataset, sop_instance_uid: str
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """The segmentation model's group: pixels and uncertainty of each score it labelled."""
    seg = findings.segmentation
    if seg is None:
        return []
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    frames = check_frames(list(seg.frames), header, "Segmented frames")
    return [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[sop_instance_uid, "segmentation"]),
                identifier=f"Lung ultrasound score masks{where}",
            ),
            finding_type=codes.SCORE_MASKS,
            algorithm_id=algorithm_identification(seg.model),
            finding_sites=[finding_site(zone)],
            measurements=_segmentation_measurements(seg, header),
            source_images=[
                hd.sr.SourceImageForMeasurementGroup.from_source_image(
                    header, frame_references(header, frames)
                )
            ],
        )
    ]


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""The SEG class whose segments an SR references (the BINARY SEG the node sends)."""


def _segment_regions(
    findings: Findings, header: Dataset, segmentation: Dataset | None, sop_instance_uid: str
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """Per score segmented, a group (TID 1411) referencing its segment in the SEG: where the
    masks are, for a viewer that follows SR references, and its pixels."""
    seg = findings.segmentation
    if seg is None or segmentation is None or segmentation.SOPClassUID != SEGMENTATION_STORAGE:
        # A LABELMAP SEG is not referenced by segment: dciodvfy (dicom3tools 2025) allows a
        # Referenced Segment Number only for the Segmentation Storage class.
        return []
    zone = findings.source.zone
    where = f", zone {zone}" if zone else ""
    present = {
        int(s.SegmentNumber)
        for s in segmentation.get("SegmentSequence", [])
        if "SegmentNumber" in s
    }
    groups = []
    for c in seg.classes:
        if c.score + 1 not in present:
            continue
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[sop_instance_uid, "segment", str(c.score)]),
                    identifier=f"Lung ultrasound score {c.score} mask{where}",
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=c.score + 1,
                    # the cine frames the segment lies on (a LABELMAP SEG's frames hold
                    # every segment, so its own frames would not say which)
                    source_images=[
                        hd.sr.SourceImageForSegmentation(
                            header.SOPClassUID,
                            header.SOPInstanceUID,
                            frame_references(header, [seg.frames[i] for i in c.frames]),
                        )
                    ],
                ),
                finding_type=codes.SCORE_MASKS,
                algorithm_id=algorithm_identification(seg.model),
                finding_sites=[finding_site(zone)],
                measurements=[
                    hd.sr.Measurement(
                        name=codes.PIXELS_WITH_SCORE[c.score], value=c.pixels, unit=codes.PIXELS
                    )
                ],
            )
        )
    return groups


def _segmentation_measurements(
    seg: SegmentationFindings, header: Dataset
) -> list[hd.sr.Measurement]:
    items = []
    for c in seg.classes:
        frames = check_frames([seg.frames[i] for i in c.frames], header, f"Score {c.score} mask")
        items.append(
            hd.sr.Measurement(
                name=codes.PIXELS_WITH_SCORE[c.score],
                value=c.pixels,
                unit=codes.PIXELS,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement.from_source_image(
                        header, frame_references(header, frames)
                    )
                ],
            )
        )
        for derivation, value in (
            (codes.MEAN, c.uncertainty_mean),
            (codes.MAXIMUM, c.uncertainty_max),
        ):
            if value is None:
                continue
            items.append(
                hd.sr.Measurement(
                    name=codes.MASK_UNCERTAINTY[c.score],
                    value=value,
                    unit=codes.UNITLESS,
                    derivation=derivation,
                )
            )
    return items
