"""A predicted mask as a DICOM SEG (highdicom) that references its source MR series.

The SEG opens over its series in 3D Slicer, OHIF or a PACS. As the standard requires, it
copies the Patient, General Study and Patient Study modules from the source images, so it
holds patient identifiers: it is written only into the user's output folder and is never
published by the book. One binary segment ("tumour", SNOMED CT morphologically abnormal
structure / neoplasm), one frame per source slice that holds tumour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mstt_lib.dicom.series import _quiet_pydicom
from mstt_lib.io import atomic_path

__all__ = ["write_seg", "SEGMENT_LABEL"]

SEGMENT_LABEL = "tumour"
_TYPE_2 = (  # Patient and General Study attributes that must be present (they may be empty)
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mstt_lib")
    except metadata.PackageNotFoundError:
        return "unknown"


def _slice_step(sources) -> str:
    """The distance between the first two slices' positions (1 mm for a single slice)."""
    if len(sources) < 2:
        return "1"
    first, second = (np.asarray([float(v) for v in s.ImagePositionPatient]) for s in sources[:2])
    return f"{float(np.linalg.norm(second - first)):.6g}"


def write_seg(
    mask: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    runs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write ``mask`` (column, row, slice) on the source series' grid (``read_series``'s voxel
    order: ``source_files`` in slice order) as a DICOM SEG at ``path``, atomically."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask) > 0
    if mask.ndim != 3 or mask.shape[2] != len(source_files):
        raise ValueError(f"mask of shape {mask.shape} does not match a series of {len(source_files)} slices")
    with _quiet_pydicom():
        sources = [pydicom.dcmread(f) for f in source_files]
    for source in sources:  # in memory only: a source without them still gets a valid SEG
        for keyword in _TYPE_2:
            if keyword not in source:
                setattr(source, keyword, "")
        if "SliceThickness" not in source:  # Type 2, but the SEG's pixel measures need a number
            source.SliceThickness = _slice_step(sources)
    if mask.shape[:2] != (int(sources[0].Columns), int(sources[0].Rows)):
        raise ValueError(
            f"mask of shape {mask.shape} does not match the series' {sources[0].Columns} columns "
            f"x {sources[0].Rows} rows"
        )
    frames = np.ascontiguousarray(np.moveaxis(mask, 2, 0).transpose(0, 2, 1)).astype(
        np.uint8
    )  # (slice, row, col)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mstt-predict",
        version=_version(),
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"runs": ";".join(Path(r).name for r in runs)[:64]} if runs else None,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="mstt-book",
        manufacturer_model_name="mstt_lib",
        software_versions=_version(),
        device_serial_number="none",
        series_description="MSTT tumour segmentation (automatic; not for diagnosis)",
        omit_empty_frames=bool(mask.any()),  # an empty prediction is still a valid (empty) SEG
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
