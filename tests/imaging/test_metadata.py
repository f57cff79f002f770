"""Frame timing, tissue region and zone from the header."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from lus_pacs.domain import RegionSource
from lus_pacs.imaging.metadata import frame_timing, lung_zone, ultrasound_region
from lus_pacs.settings import ZoneRule


def _ds(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("attributes", "fps", "source"),
    [
        (
            {"FrameIncrementPointer": 0x00181065, "FrameTimeVector": [0, 40, 40, 40]},
            25.0,
            "FrameTimeVector",
        ),
        (
            {"FrameIncrementPointer": 0x00181063, "FrameTime": "33.3333", "CineRate": 10},
            30.0,
            "FrameTime",
        ),
        ({"FrameTime": "0", "CineRate": 24}, 24.0, "CineRate"),
        ({"RecommendedDisplayFrameRate": 15}, 15.0, "RecommendedDisplayFrameRate"),
        ({"ActualFrameDuration": 40}, 25.0, "ActualFrameDuration"),  # the last resort
        ({"FrameTime": "", "CineRate": 0}, None, "none"),
        ({}, None, "none"),
        # Times since the first frame (some scanners), not since the frame before.
        ({"FrameTimeVector": [0, 33.3, 66.7, 100, 133.3]}, 4000 / 133.3, "FrameTimeVector"),
        ({"FrameTimeVector": [0, 33, 34, 35]}, 1000 / 34, "FrameTimeVector"),  # jitter
        # Rising after a first entry as large as the last: no span to divide by (it raised
        # ZeroDivisionError and failed the cine); read as times since the frame before.
        ({"FrameTimeVector": [40, 0, 20, 40], "CineRate": 25}, 1000 / 30, "FrameTimeVector"),
        # Rates no scanner records: the next attribute, or none.
        ({"FrameTime": "0.0333", "CineRate": 30}, 30.0, "CineRate"),  # seconds, not ms
        ({"FrameTime": "0.001"}, None, "none"),  # a million frames a second
        ({"RecommendedDisplayFrameRate": 1e6}, None, "none"),
    ],
)
def test_frame_timing(attributes: dict, fps: float | None, source: str) -> None:
    timing = frame_timing(_ds(**attributes))
    assert timing.source == source
    if fps is None:
        assert timing.fps is None
    else:
        assert timing.fps == pytest.approx(fps, rel=1e-4)


def _region(x0: int, y0: int, x1: int, y1: int, data_type: int = 1) -> Dataset:
    return _ds(
        RegionSpatialFormat=1,
        RegionDataType=data_type,
        RegionLocationMinX0=x0,
        RegionLocationMinY0=y0,
        RegionLocationMaxX1=x1,
        RegionLocationMaxY1=y1,
        PhysicalUnitsXDirection=3,
        PhysicalUnitsYDirection=3,
        PhysicalDeltaX=0.05,
        PhysicalDeltaY=0.04,
    )


def test_the_largest_tissue_region_clipped_to_the_image() -> None:
    doppler = _region(0, 0, 639, 479, data_type=2)  # a colour-flow region is not tissue
    # Coordinates of a larger image (one scaled down after its regions were written) are not
    # taken: clipped, they cut the sector (pydicom's 320 x 240 echocardiogram declares regions
    # of 640 x 480, and was read as lung). A pixel over is a writer's off-by-one, clipped.
    other_image = _region(0, 0, 900, 700)
    ds = _ds(
        SequenceOfUltrasoundRegions=[
            _region(10, 20, 99, 99),
            _region(100, 30, 640, 400),
            other_image,
            doppler,
        ]
    )
    region = ultrasound_region(ds, rows=480, cols=640)
    assert region is not None
    assert (region.x0, region.y0, region.x1, region.y1) == (100, 30, 640, 401)
    assert region.source is RegionSource.DICOM
    assert (region.cm_per_pixel_x, region.cm_per_pixel_y) == (0.05, 0.04)
    assert ultrasound_region(_ds(SequenceOfUltrasoundRegions=[doppler]), 480, 640) is None
    assert ultrasound_region(_ds(), 480, 640) is None


def test_zone_from_the_first_matching_rule() -> None:
    assert lung_zone(_ds(SeriesDescription="Lung r2", ImageComments="Zone L1")) == "R2"
    assert lung_zone(_ds(SeriesDescription="Lung", ImageComments="zone L1")) == "L1"
    assert lung_zone(_ds(SeriesDescription="Abdomen")) is None
    site = [ZoneRule(attribute="StationName", pattern=r"bay-(?P<zone>[rl]\d)")]
    assert lung_zone(_ds(StationName="bay-l4"), site) == "L4"
    # One label per zone: "R01" and "R1" were two zones, both in the LUS total.
    assert lung_zone(_ds(SeriesDescription="Lung R01")) == "R1"
    assert lung_zone(_ds(SeriesDescription="Lung r10")) == "R10"
    # A probe's name beside the zone is not a zone: "L12-4" was zone L12, a zone of its own
    # in the LUS total; "L38" (a linear probe) likewise.
    assert lung_zone(_ds(SeriesDescription="L12-4 Lung R3")) == "R3"
    assert lung_zone(_ds(SeriesDescription="Lung L38 L2")) == "L2"
    assert lung_zone(_ds(SeriesDescription="Lung L12-4")) is None
    assert lung_zone(_ds(SeriesDescription="Lung R14")) == "R14"
    # A vendor's private element, by its tag (bytes when read as VR UN).
    private = _ds()
    private.add_new(0x00191010, "UN", b"zone L4 ")
    for written in ("(0019,1010)", "0019,1010", "00191010"):
        rule = ZoneRule(attribute=written, pattern=r"(?P<zone>[RL]\d)")
        assert lung_zone(private, [rule]) == "L4"
    # ... while a zone's clip number after it is still its zone.
    for text, zone in (("R2.1", "R2"), ("Lung R1-2", "R1"), ("L2.1", "L2"), ("L1-L2", "L1")):
        assert lung_zone(_ds(SeriesDescription=text)) == zone, text
    # An underscore or another separator joins words of a description, not letters of one.
    for text, zone in (
        ("Lung_L2", "L2"),
        ("LUNG_R3_CLIP1", "R3"),
        ("zone_R4", "R4"),
    ):
        assert lung_zone(_ds(SeriesDescription=text)) == zone, text
    assert lung_zone(_ds(SeriesDescription="xR3")) is None


@pytest.mark.parametrize("attribute", ["SeriesDescripton", "(0019,101)", "series description"])
def test_a_zone_rule_of_no_attribute_is_refused(attribute: str) -> None:
    """A misspelt keyword matched nothing, without a word: every cine lost its zone and left
    the LUS score."""
    with pytest.raises(ValueError, match="neither a DICOM keyword"):
        ZoneRule(attribute=attribute, pattern=r"(?P<zone>[RL]\d)")
