"""Every coded concept the result objects use, standard where one exists, private otherwise.

No standard codes exist for B-lines, A-lines or the LUS score, so they live in the private
coding scheme ``99LUSPACS``; every object that uses one declares the scheme in its
``CodingSchemeIdentificationSequence`` (:func:`coding_scheme_identification`).
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lus_pacs import __version__
from lus_pacs.domain import KeyFrameReason, NotAssessableReason, PoorReason, Quality

SCHEME_DESIGNATOR = "99LUSPACS"
"""Private coding scheme designators start with "99" (PS3.16 section 8.1)."""
SCHEME_NAME = "lus-pacs lung ultrasound concepts"
SCHEME_ORGANIZATION = "lus-pacs project (research software)"


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The ``CodingSchemeIdentificationSequence`` item declaring the private scheme."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME_DESIGNATOR,
        name=SCHEME_NAME,
        version=__version__,
        responsible_organization=SCHEME_ORGANIZATION,
    )


def _private(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=SCHEME_DESIGNATOR, meaning=meaning)


# Private concepts: nothing standard says these.
B_LINES = _private("LUS001", "B-lines")
A_LINES = _private("LUS002", "A-lines")
LUS_SCORE = _private("LUS003", "Lung ultrasound score")
B_LINE_FRAMES = _private("LUS004", "B-line frames")
"""Concept name of the count of frames the B-line model attends to."""
LUNG_ZONE = _private("LUS005", "Lung ultrasound zone")
"""Concept name of the zone label (R1..R7, L1..L7) as scanned; zone schemes differ between
protocols, so the label is kept as text rather than mapped onto CID 6171."""
FRAMES_WITH_SCORE = tuple(
    _private(f"LUS01{k}", f"Frames with lung ultrasound score {k}") for k in range(4)
)
"""Concept names of the count of frames the severity model scored 0, 1, 2 and 3 (with the
frames referenced)."""
SCORE_REGION = _private("LUS006", "Region of the lung ultrasound score")
"""Finding type of the box where the severity model looked in its top-scoring frame."""
SCORE_MASKS = _private("LUS007", "Lung ultrasound score masks")
"""Finding type of the segmentation model's group (the masks themselves are in the SEG)."""
PIXELS_WITH_SCORE = tuple(
    _private(f"LUS02{k}", f"Pixels with lung ultrasound score {k}") for k in range(4)
)
"""Concept names of the count of pixels the segmentation labelled with score 0..3, over the
segmented frames (referenced)."""
MASK_UNCERTAINTY = tuple(
    _private(f"LUS03{k}", f"Uncertainty of lung ultrasound score {k} mask") for k in range(4)
)
"""Concept names of the Monte-Carlo dropout standard deviation over the pixels labelled with
score 0..3; the derivation (mean or maximum) says which summary it is."""
MASK_UNCERTAINTY_MAP = _private("LUS040", "Lung ultrasound score mask uncertainty")
"""Segmented property type of the FRACTIONAL SEG of Monte-Carlo dropout uncertainty."""

TOTAL_LUS_SCORE = _private("LUS050", "Total lung ultrasound score")
"""The study's score: the sum of the per-zone scores over the zones scored."""
ZONES_SCANNED = _private("LUS051", "Lung ultrasound zones scanned")
ZONES_SCORED = _private("LUS052", "Lung ultrasound zones scored")
ZONES_WITH_B_LINES = _private("LUS053", "Lung ultrasound zones with B-lines")
ZONES_WITH_CONSOLIDATION = _private("LUS054", "Lung ultrasound zones with consolidation")
MAXIMUM_LUS_SCORE = _private("LUS055", "Maximum possible lung ultrasound score")
"""3 x the zones scored: the scale the total is on."""
LUS_EXAM = _private("LUS056", "Lung ultrasound examination summary")
"""Finding type of the study summary's own group."""
CONSOLIDATION = _private("LUS057", "Lung consolidation")
"""Consolidation as an ultrasound finding (the lung tissue-like pattern of paper 002)."""
KEY_FRAME = _private("LUS060", "Key frame")
"""Concept name of the reason a frame was chosen as a key frame (its value, from
:data:`KEY_FRAME_REASONS`), with the frame as its Source of Measurement."""
KEY_FRAME_REASONS = {
    KeyFrameReason.B_LINES: _private("LUS061", "Representative B-line frame"),
    KeyFrameReason.ATTENTION: _private("LUS062", "Frame the B-line model attended to most"),
    KeyFrameReason.SEVERITY: _private("LUS063", "Highest-severity frame"),
    KeyFrameReason.BEST: _private("LUS064", "Frame with the highest keep probability"),
}
QUALITY_VALUES = {
    Quality.USABLE: _private("LUS070", "Usable lung ultrasound cine"),
    Quality.POOR: _private("LUS071", "Poor-quality lung ultrasound cine"),
}
"""Values of the Quality Assessment of a cine (key-frame model, paper 004): usable when some
frame is worth keeping. CID 6044's values judge against a quality control standard, which a
model's threshold is not."""
POOR_REASONS = {
    PoorReason.NO_CONTACT: _private("LUS072", "Probe not in contact"),
    PoorReason.RIB_SHADOW: _private("LUS073", "Rib shadow over the pleura"),
    PoorReason.NO_PLEURA: _private("LUS074", "Pleura not in view"),
}
"""Values of the Quality Findings of a poor cine."""
KEEP_PROBABILITY = _private("LUS075", "Probability a clinician would keep the frame")
"""The key-frame model's score of the best frame (referenced)."""
ZONES_WITHOUT_USABLE_CINE = _private("LUS076", "Lung ultrasound zones without a usable cine")
"""Study summary: zones to scan again (none of their cines holds a frame worth keeping)."""
ASSESSABILITY = _private("LUS080", "Lung ultrasound assessability")
"""Finding type and concept name of the assessment: did the lung models read the cine."""
ASSESSABLE = _private("LUS081", "Assessable for lung findings")
NOT_ASSESSABLE = _private("LUS082", "Not assessable for lung findings")
NOT_ASSESSABLE_REASON = _private("LUS083", "Reason not assessable")
NOT_ASSESSABLE_REASONS = {
    NotAssessableReason.STILL_IMAGE: _private("LUS084", "Still image: the loop models not run"),
    NotAssessableReason.NOT_LUNG: _private("LUS085", "Not a lung ultrasound view"),
    NotAssessableReason.POOR_QUALITY: _private("LUS086", "No readable frame"),
    NotAssessableReason.DAMAGED_FRAMES: _private("LUS088", "Too many damaged frames"),
    NotAssessableReason.BLANK: _private("LUS090", "No echo texture in the scan area"),
    NotAssessableReason.TOO_SMALL: _private("LUS092", "Scan area too small to read"),
    NotAssessableReason.OUT_OF_RANGE: _private("LUS093", "Measurements unlike any lung clip"),
    NotAssessableReason.COLOUR_FLOW: _private("LUS094", "Colour flow over the scan area"),
}
"""Values of the Reason not assessable of a cine the lung models did not read."""
ZONES_NOT_ASSESSABLE = _private("LUS087", "Lung ultrasound zones not assessable")
CINES_NOT_PROCESSED = _private("LUS091", "Lung ultrasound cines not processed")
"""Study summary: cines of the study that could not be processed (in no zone and no score)."""
DAMAGED_FRAMES = _private("LUS089", "Frames damaged in the source")
"""Study summary: zones none of whose cines the lung models could read (out of the score)."""

# Standard concepts.
LUNG = codes.SCT.Lung  # 39607008
PLEURA = codes.SCT.Pleura  # 3120008
PRESENT = codes.SCT.Present  # 52101004
ABSENT = Code(value="2667000", scheme_designator="SCT", meaning="Absent")
"""pydicom 3.0's ``codes.SCT.Absent`` is 272519000 "Absence findings", the parent concept;
CID 240/241 list 2667000 "Absent" beside 52101004 "Present"."""
RIGHT = codes.SCT.Right  # CID 244
LEFT = codes.SCT.Left  # CID 244
FINDING_SITE = codes.SCT.FindingSite
LATERALITY = codes.SCT.Laterality
FINDING = codes.DCM.Finding  # 121071, TID 1501 finding type
PROBABILITY = codes.DCM.Probability  # 122157
BEST_ILLUSTRATION = codes.DCM.BestIllustrationOfFinding  # 121080: the representative frame
SOURCE_OF_MEASUREMENT = codes.DCM.SourceOfMeasurement  # 121112
COMMENT = codes.DCM.Comment  # 121106: carries the research-software notice
PROCEDURE = codes.SCT.DiagnosticUltrasonography  # 16310003
OF_INTEREST = codes.DCM.OfInterest  # 113000, KOS document title (CID 7010)
BEST_IN_SET = codes.DCM.BestInSet  # 113013, KOS document title (CID 7010)
IMAGE_QUALITY = codes.DCM.ImageQuality  # 111101: finding type of the quality group
QUALITY_ASSESSMENT = codes.DCM.QualityAssessment  # 111050: usable or poor
QUALITY_FINDING = codes.DCM.QualityFinding  # 111052: why a cine is poor

# Algorithm identification (TID 4019): highdicom writes these names; readers look them up here.
ALGORITHM_NAME = codes.DCM.AlgorithmName  # 111001
ALGORITHM_VERSION = codes.DCM.AlgorithmVersion  # 111003
ALGORITHM_MANUFACTURER = codes.DCM.AlgorithmManufacturer  # 122405

# Units (UCUM).
UNITLESS = codes.UCUM.NoUnits  # "1": a probability in [0, 1]
PIXELS = Code(value="{pixels}", scheme_designator="UCUM", meaning="pixels")
MEAN = codes.SCT.Mean  # 373098007, CID 3488 derivation
MAXIMUM = codes.SCT.Maximum  # 56851009, CID 3488 derivation
FRAMES = Code(value="{frames}", scheme_designator="UCUM", meaning="frames")
ZONES = Code(value="{zones}", scheme_designator="UCUM", meaning="zones")
CINES = Code(value="{cines}", scheme_designator="UCUM", meaning="cines")


def laterality_for_zone(zone: str | None) -> Code | None:
    """Right or left (CID 244) from a zone label such as ``R2`` or ``L1``; None when unknown."""
    if not zone:
        return None
    side = zone.strip().upper()[:1]
    return {"R": RIGHT, "L": LEFT}.get(side)
