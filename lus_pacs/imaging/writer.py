"""Writing cine loops as US Multi-frame instances, the way a scanner sends them.

Used by the simulator and by the import of exported videos, so both enter the pipeline exactly
as scanner data does.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)

from lus_pacs import __version__
from lus_pacs.durable import durable_file

US_MULTIFRAME = UltrasoundMultiFrameImageStorage


class CineSyntax(StrEnum):
    """How the pixel data is encoded."""

    JPEG = "jpeg"
    """JPEG Baseline, YBR_FULL_422: what most scanners send."""
    RLE = "rle"
    """RLE Lossless."""
    EXPLICIT = "explicit"
    """Uncompressed, Explicit VR Little Endian."""


_SYNTAX_UID = {
    CineSyntax.JPEG: JPEGBaseline8Bit,
    CineSyntax.RLE: RLELossless,
    CineSyntax.EXPLICIT: ExplicitVRLittleEndian,
}


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes copied into every instance of one exam."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    study_date: dt.date
    study_time: dt.time
    study_id: str
    accession_number: str
    study_description: str = "Lung ultrasound"
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    referring_physician_name: str = ""
    timezone_offset: str = ""
    """TimezoneOffsetFromUTC of its dates and times ("+0000": UTC), when known."""


@dataclass(frozen=True)
class Equipment:
    manufacturer: str
    model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str = ""
    station_name: str = ""


@dataclass(frozen=True)
class UltrasoundRegion:
    """A 2D tissue region of the image: pixels x0..x1, y0..y1 inclusive, as DICOM counts them."""

    x0: int
    y0: int
    x1: int
    y1: int
    cm_per_pixel_x: float
    cm_per_pixel_y: float
    reference_pixel_x: int | None = None
    """Column of the transducer centre relative to x0 (the apex of a convex sector)."""
    reference_pixel_y: int | None = None
    transducer_frequency_khz: int | None = None


@dataclass(frozen=True)
class CineInstance:
    """What identifies one cine loop inside its study."""

    series_instance_uid: str
    series_number: int
    series_description: str
    sop_instance_uid: str
    instance_number: int
    fps: float
    acquisition_datetime: dt.datetime
    image_comments: str = ""
    transducer: str = ""
    derived: bool = False
    """True when the loop was converted from another format (an exported video)."""


def write_us_cine(
    path: Path,
    frames: npt.NDArray[np.uint8],
    *,
    study: StudyIdentity,
    instance: CineInstance,
    equipment: Equipment,
    regions: Sequence[UltrasoundRegion] = (),
    syntax: CineSyntax = CineSyntax.JPEG,
    jpeg_quality: int = 90,
) -> None:
    """Write ``frames`` as a US Multi-frame Image instance.

    Parameters
    ----------
    path:
        The file to write; written to a temporary name, flushed and renamed, so a reader never
        sees half a file.
    frames:
        uint8 pixels, (frames, rows, columns) for grey or (frames, rows, columns, 3) for RGB.
    syntax:
        The transfer syntax. JPEG Baseline is always YBR_FULL_422 (chroma halved horizontally);
        RLE and explicit keep RGB or MONOCHROME2 as given.
    """
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(
            f"frames must be uint8 (frames, rows, cols[, 3]); got {frames.dtype} {frames.shape}"
        )
    if frames.ndim == 4 and frames.shape[3] != 3:
        raise ValueError(f"colour frames need 3 samples per pixel; got {frames.shape[3]}")
    if instance.fps <= 0:
        raise ValueError(f"fps must be positive; got {instance.fps}")
    syntax = CineSyntax(syntax)
    ds = _dataset(frames, study, instance, equipment, regions, syntax)
    _set_pixels(ds, frames, syntax, jpeg_quality)
    ds.file_meta = _file_meta(ds, syntax)
    with durable_file(path) as f:
        ds.save_as(f, enforce_file_format=True)


def _dataset(
    frames: npt.NDArray[np.uint8],
    study: StudyIdentity,
    instance: CineInstance,
    equipment: Equipment,
    regions: Sequence[UltrasoundRegion],
    syntax: CineSyntax,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = instance.sop_instance_uid
    acquired = instance.acquisition_datetime
    ds.InstanceCreationDate = acquired.strftime("%Y%m%d")
    ds.InstanceCreationTime = acquired.strftime("%H%M%S")
    if study.timezone_offset:
        ds.TimezoneOffsetFromUTC = study.timezone_offset

    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = (
        study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else ""
    )
    ds.PatientSex = study.patient_sex

    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.StudyTime = study.study_time.strftime("%H%M%S")
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyDescription = study.study_description

    ds.Modality = "US"
    ds.SeriesInstanceUID = instance.series_instance_uid
    ds.SeriesNumber = instance.series_number
    ds.SeriesDescription = instance.series_description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = acquired.strftime("%H%M%S")
    ds.BodyPartExamined = "CHEST"

    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.SoftwareVersions = equipment.software_versions
    ds.DeviceSerialNumber = equipment.device_serial_number
    if equipment.institution_name:
        ds.InstitutionName = equipment.institution_name
    if equipment.station_name:
        ds.StationName = equipment.station_name

    ds.InstanceNumber = instance.instance_number
    ds.PatientOrientation = ""
    ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.ContentTime = acquired.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S.%f")
    ds.ImageType = ["DERIVED" if instance.derived else "ORIGINAL", "PRIMARY", "CHEST", "0001"]
    if instance.image_comments:
        ds.ImageComments = instance.image_comments
    ds.BurnedInAnnotation = "YES"
    if instance.transducer:
        ds.TransducerData = [instance.transducer]
    if instance.derived:
        ds.DerivationDescription = f"Converted from an exported video by lus-pacs {__version__}"

    n_frames, rows, cols = frames.shape[:3]
    colour = frames.ndim == 4 or syntax is CineSyntax.JPEG
    ds.SamplesPerPixel = 3 if colour else 1
    if syntax is CineSyntax.JPEG:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    else:
        ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    frame_time_ms = 1000.0 / instance.fps
    ds.FrameTime = f"{frame_time_ms:.6g}"
    ds.CineRate = round(instance.fps)
    ds.RecommendedDisplayFrameRate = round(instance.fps)
    ds.ActualFrameDuration = max(1, round(frame_time_ms))
    ds.PreferredPlaybackSequencing = 0  # looping
    ds.StartTrim = 1
    ds.StopTrim = n_frames

    if syntax is CineSyntax.JPEG or instance.derived:
        ds.LossyImageCompression = "01"
        if syntax is CineSyntax.JPEG:
            ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"

    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([_region_item(r) for r in regions])
    return ds


def _region_item(region: UltrasoundRegion) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0 = region.x0
    item.RegionLocationMinY0 = region.y0
    item.RegionLocationMaxX1 = region.x1
    item.RegionLocationMaxY1 = region.y1
    item.PhysicalUnitsXDirection = 3  # cm
    item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = float(region.cm_per_pixel_x)
    item.PhysicalDeltaY = float(region.cm_per_pixel_y)
    if region.reference_pixel_x is not None and region.reference_pixel_y is not None:
        item.ReferencePixelX0 = region.reference_pixel_x
        item.ReferencePixelY0 = region.reference_pixel_y
        item.ReferencePixelPhysicalValueX = 0.0
        item.ReferencePixelPhysicalValueY = 0.0
    if region.transducer_frequency_khz is not None:
        item.TransducerFrequency = region.transducer_frequency_khz
    return item


def _set_pixels(
    ds: Dataset, frames: npt.NDArray[np.uint8], syntax: CineSyntax, jpeg_quality: int
) -> None:
    if syntax is CineSyntax.JPEG:
        ds.PixelData = encapsulate([_jpeg_frame(f, jpeg_quality) for f in frames], has_bot=True)
        ds["PixelData"].VR = "OB"
        return
    data = np.ascontiguousarray(frames)
    if syntax is CineSyntax.EXPLICIT:
        ds.PixelData = data.tobytes()
        ds["PixelData"].VR = "OB"
        return
    from pydicom.pixels import get_encoder

    encoder = get_encoder(RLELossless)
    encoded = [
        encoder.encode(
            np.ascontiguousarray(f),
            rows=ds.Rows,
            columns=ds.Columns,
            samples_per_pixel=ds.SamplesPerPixel,
            bits_allocated=8,
            bits_stored=8,
            pixel_representation=0,
            photometric_interpretation=ds.PhotometricInterpretation,
            number_of_frames=1,
            planar_configuration=0,
        )
        for f in data
    ]
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"


def _jpeg_frame(frame: npt.NDArray[np.uint8], quality: int) -> bytes:
    """One frame as JPEG Baseline with 4:2:2 chroma (YBR_FULL_422)."""
    rgb = frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=1)
    return buf.getvalue()


def _file_meta(ds: Dataset, syntax: CineSyntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(_SYNTAX_UID[syntax])
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"LUSPACS_{__version__}"[:16]
    return meta
