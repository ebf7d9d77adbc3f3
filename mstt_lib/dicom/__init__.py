"""DICOM MR series + RTSTRUCT -> NIfTI image and mask, as the IBSI/STS layout the case table reads.

The TCIA Soft-tissue-Sarcoma collection comes as DICOM: one MR series per sequence and an
RTSTRUCT whose ROIs are polygons in patient (world) coordinates. ``convert_patient`` turns
one series and its RTSTRUCT into ``<out>/<case>/MR_<modality>_image.nii.gz`` and
``MR_<modality>_mask.nii.gz``; ``convert_collection`` does it for every case folder of a
collection, resumably, and writes a table of what it did.

The package has one module per job: ``series`` (reading an MR series onto its grid),
``rtstruct`` (the ROI polygons and their rasterisation), ``write`` (NIfTI output, one case or a
collection) and ``seg`` (a prediction as a DICOM SEG that references its source series). The
names below are re-exported, so ``from mstt_lib.dicom import convert_patient`` keeps working.

Choices, and why:

* Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, with
  slices sorted by their position along the slice normal (InstanceNumber says nothing about
  space). Voxel axes are (column, row, slice), as dcm2niix and the IBSI export write them;
  the affine maps them to NIfTI's RAS world (DICOM's LPS with x and y negated).
* A series with a missing slice, uneven steps or slices that disagree on spacing,
  orientation or matrix is refused rather than silently resampled: the voxel grid would be
  wrong and every downstream measurement with it.
* Contours are rasterised per slice with the even-odd rule on pixel centres: a voxel is in
  the mask when its centre lies inside an odd number of the slice's polygons, so a contour
  inside another is a hole. On the boundary the rule is half-open (centres on a left/lower
  edge are inside, on a right/upper edge outside), so two polygons sharing an edge tile the
  plane without gap or overlap. It reproduces the IBSI masks of STS_001, STS_002 and STS_004
  voxel for voxel (as do ``skimage.draw.polygon`` and ``matplotlib.path`` on those data).
* Privacy: nothing read from a DICOM header except geometry, pixel values and ROI names
  reaches an output file, a log record or an error message. Patient and study identifiers are
  only compared (mixed-patient check), never shown; the NIfTI header text fields are empty.
  pydicom's own warnings (which can quote header values) are silenced while reading.
"""

from mstt_lib.dicom.rtstruct import rasterise
from mstt_lib.dicom.series import LPS_TO_RAS, DicomError, Series, read_series
from mstt_lib.dicom.write import (
    TABLE_FILE,
    convert_collection,
    convert_patient,
    find_case_inputs,
    output_paths,
)

__all__ = [
    "DicomError",
    "LPS_TO_RAS",
    "Series",
    "TABLE_FILE",
    "convert_collection",
    "convert_patient",
    "find_case_inputs",
    "output_paths",
    "rasterise",
    "read_series",
]
