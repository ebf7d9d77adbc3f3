"""DICOM MR series + RTSTRUCT -> NIfTI image and mask, as the IBSI/STS layout the case table reads.

The TCIA Soft-tissue-Sarcoma collection comes as DICOM: one MR series per sequence and an
RTSTRUCT whose ROIs are polygons in patient (world) coordinates. ``convert_patient`` turns
one series and its RTSTRUCT into ``<out>/<case>/MR_<modality>_image.nii.gz`` and
``MR_<modality>_mask.nii.gz``; ``convert_collection`` does it for every case folder of a
collection, resumably, and writes a table of what it did.

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

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from mstt_lib.geometry import LPS_TO_RAS
from mstt_lib.io import CaseFileError, atomic_path

__all__ = [
    "DicomError",
    "Series",
    "TABLE_FILE",
    "convert_collection",
    "convert_patient",
    "find_case_inputs",
    "output_paths",
    "rasterise",
    "read_series",
]

logger = logging.getLogger(__name__)

TABLE_FILE = "dicom_conversion.csv"  # not cohort.csv: the IBSI reader must see the case folders
GAP_FACTOR = 1.5  # a step this many times the median step means a missing slice
STEP_TOLERANCE = 0.01  # relative difference allowed between slice steps
GRID_TOLERANCE = 0.05  # slice origins off the regular grid by this fraction of a voxel: refused
SLICE_TOLERANCE = 0.25  # a contour's distance from a slice, in slices, still matched to it
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


class DicomError(CaseFileError):
    """A DICOM series or RTSTRUCT that cannot be converted; names the case and the file or folder."""


# --------------------------------------------------------------------------- reading DICOM


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's value validation, warnings and log while reading.

    Its messages can quote header values (names, dates), which must not reach a log. The
    settings are process-wide while this runs (the pipeline uses processes, not threads).
    """
    settings = pydicom_config.settings
    mode = settings.reading_validation_mode
    pydicom_logger = logging.getLogger("pydicom")
    disabled = pydicom_logger.disabled
    settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = mode
        pydicom_logger.disabled = disabled


def _dcmread(path: Path, case_id: str, stop_before_pixels: bool = True) -> pydicom.Dataset:
    """Read one file, turning every pydicom failure into a DicomError without header values."""
    try:
        if path.stat().st_size == 0:
            raise DicomError(case_id, path, "not a DICOM file (empty file)")
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except DicomError:
        raise
    except InvalidDicomError:
        raise DicomError(case_id, path, "not a DICOM file (no DICOM preamble and file meta header)") from None
    except OSError as exc:
        raise DicomError(case_id, path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # truncated or damaged files raise many types
        raise DicomError(case_id, path, f"damaged DICOM file ({type(exc).__name__})") from None


def _files_below(folder: Path, case_id: str) -> list[Path]:
    """Every non-hidden regular file under ``folder``, sorted; an error when there is none."""
    if not folder.is_dir():
        raise DicomError(case_id, folder, "folder not found")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DicomError(case_id, folder, "no DICOM files (the folder is empty)")
    return files


@dataclass
class _Header:
    """What the converter needs from one file; identifiers are kept only to be compared."""

    path: Path
    modality: str
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    frame_uid: str
    is_image: bool


def _header(ds: pydicom.Dataset, path: Path, case_id: str) -> _Header:
    try:
        is_image = all(tag in ds for tag in _GEOMETRY_TAGS)
        return _Header(
            path=path,
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            patient_id=str(ds.get("PatientID", "") or ""),
            frame_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
            is_image=is_image,
        )
    except Exception as exc:
        raise DicomError(case_id, path, f"malformed DICOM header ({type(exc).__name__})") from None


def _scan(files: list[Path], case_id: str) -> list[_Header]:
    return [_header(_dcmread(p, case_id), p, case_id) for p in files]


def _check_same(headers: list[_Header], attribute: str, what: str, case_id: str, folder: Path) -> None:
    """Refuse files that disagree on ``attribute``, naming the odd file but never the values.

    The values are patient and study identifiers: they are compared, never shown.
    """
    values = [getattr(h, attribute) for h in headers]
    if len(set(values)) <= 1:
        return
    majority = Counter(values).most_common(1)[0][0]
    odd = [h.path for h in headers if getattr(h, attribute) != majority]
    more = f" and {len(odd) - 1} other file(s)" if len(odd) > 1 else ""
    raise DicomError(
        case_id,
        odd[0],
        f"mixed patients or studies in {folder}: this file{more} has a different {what} from the other files",
    )


# --------------------------------------------------------------------------- the image series


@dataclass
class Series:
    """An MR series stacked on its voxel grid: ``data`` (column, row, slice) float32, RAS ``affine``."""

    data: np.ndarray
    affine: np.ndarray
    series_uid: str
    frame_uid: str
    patient_id: str
    sop_uids: list[str]
    files: list[Path]

    @property
    def lps_affine(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine


def _floats(ds: pydicom.Dataset, keyword: str, count: int, path: Path, case_id: str) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in ds[keyword].value], dtype=float)
    except Exception:
        raise DicomError(case_id, path, f"{keyword} is missing or not numeric") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise DicomError(case_id, path, f"{keyword} should hold {count} finite numbers")
    return values


def _geometry(ds: pydicom.Dataset, path: Path, case_id: str) -> dict:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:
        raise DicomError(case_id, path, "Rows/Columns are missing or not numbers") from None
    if frames != 1:
        raise DicomError(case_id, path, f"multi-frame image ({frames} frames) is not supported")
    if samples != 1:
        raise DicomError(case_id, path, "colour image (SamplesPerPixel != 1) is not an MR series")
    return {
        "position": _floats(ds, "ImagePositionPatient", 3, path, case_id),
        "orientation": _floats(ds, "ImageOrientationPatient", 6, path, case_id),
        "spacing": _floats(ds, "PixelSpacing", 2, path, case_id),
        "shape": (rows, columns),
    }


def _slice_grid(geometry: list[dict], files: list[Path], case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort slices along the normal and check they form a regular grid; (order, LPS affine)."""
    first = geometry[0]
    for g, path in zip(geometry, files, strict=True):
        if g["shape"] != first["shape"]:
            raise DicomError(
                case_id, path, f"matrix {g['shape']} differs from {first['shape']} of {files[0]}"
            )
        if not np.allclose(g["spacing"], first["spacing"], rtol=1e-4, atol=1e-6):
            raise DicomError(case_id, path, f"PixelSpacing differs from that of {files[0]}")
        if not np.allclose(g["orientation"], first["orientation"], atol=1e-4):
            raise DicomError(case_id, path, f"ImageOrientationPatient differs from that of {files[0]}")
    row_dir, col_dir = first["orientation"][:3], first["orientation"][3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-6 or abs(row_dir @ col_dir) > 1e-3 * norms[0] * norms[1]:
        raise DicomError(case_id, files[0], "ImageOrientationPatient is not two orthogonal directions")
    row_dir, col_dir = row_dir / norms[0], col_dir / norms[1]
    normal = np.cross(row_dir, col_dir)
    if np.any(first["spacing"] <= 0):
        raise DicomError(case_id, files[0], "PixelSpacing is not positive")
    positions = np.stack([g["position"] for g in geometry])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    sorted_files = [files[i] for i in order]
    n = len(order)
    if n > 1:
        steps = np.diff(along)
        median = float(np.median(steps))
        smallest = int(np.argmin(steps))
        if median <= 1e-6 or steps[smallest] < 0.5 * median:
            raise DicomError(
                case_id,
                sorted_files[smallest + 1],
                f"two slices at (nearly) the same position {along[smallest]:.2f} mm along the slice normal"
                f" (as {sorted_files[smallest].name}): repeated slices or several acquisitions in one series",
            )
        largest = int(np.argmax(steps))
        if steps[largest] > GAP_FACTOR * median:
            missing = round(steps[largest] / median) - 1
            raise DicomError(
                case_id,
                sorted_files[largest].parent,
                f"missing slice: a gap of {steps[largest]:.2f} mm between positions {along[largest]:.2f}"
                f" and {along[largest + 1]:.2f} mm along the slice normal (median step {median:.2f} mm;"
                f" about {missing} slice(s) missing after {sorted_files[largest].name})",
            )
        worst = int(np.argmax(np.abs(steps - median)))
        if abs(steps[worst] - median) > STEP_TOLERANCE * median + 1e-3:
            raise DicomError(
                case_id,
                sorted_files[worst + 1],
                f"inconsistent slice spacing: step {steps[worst]:.3f} mm at position {along[worst]:.2f} mm"
                f" along the slice normal, median step {median:.3f} mm",
            )
        slice_vector = (positions[-1] - positions[0]) / (n - 1)
    else:
        slice_vector = normal * 1.0
    affine = np.eye(4)
    affine[:3, 0] = row_dir * first["spacing"][1]  # along a row: the column index i
    affine[:3, 1] = col_dir * first["spacing"][0]  # down a column: the row index j
    affine[:3, 2] = slice_vector
    affine[:3, 3] = positions[0]
    expected = positions[0] + np.arange(n)[:, None] * slice_vector
    off = np.linalg.norm(positions - expected, axis=1)
    scale = min(float(first["spacing"].min()), float(np.linalg.norm(slice_vector)))
    if off.max() > GRID_TOLERANCE * scale:
        bad = int(np.argmax(off))
        raise DicomError(
            case_id,
            sorted_files[bad],
            f"slice origin {off[bad]:.3f} mm off the regular grid of the series (uneven shift or spacing)",
        )
    return order, affine


def _select_series(headers: list[_Header], wanted: set[str], case_id: str, folder: Path) -> list[_Header]:
    images = [h for h in headers if h.is_image and h.modality != "RTSTRUCT"]
    if not images:
        raise DicomError(case_id, folder, "no DICOM image files (no file with an image position and matrix)")
    by_series: dict[str, list[_Header]] = {}
    for h in images:
        by_series.setdefault(h.series_uid, []).append(h)
    if len(by_series) == 1:
        return images
    chosen = [uid for uid in by_series if uid in wanted]
    if len(chosen) != 1:
        raise DicomError(
            case_id,
            folder,
            f"{len(by_series)} image series in the folder and the RTSTRUCT does not single one out",
        )
    return by_series[chosen[0]]


def read_series(folder: str | os.PathLike, case_id: str = "?", wanted: set[str] | None = None) -> Series:
    """Read and stack one MR series from ``folder`` (searched recursively).

    ``wanted`` (SeriesInstanceUIDs) picks the series when the folder holds several. The
    checks of the module docstring apply; any failure is a ``DicomError``.
    """
    folder = Path(folder)
    with _quiet_pydicom():
        headers = _scan(_files_below(folder, case_id), case_id)
        _check_same(headers, "patient_id", "PatientID", case_id, folder)
        headers = _select_series(headers, wanted or set(), case_id, folder)
        _check_same(headers, "study_uid", "StudyInstanceUID", case_id, folder)
        _check_same(headers, "frame_uid", "FrameOfReferenceUID", case_id, folder)
        datasets = [_dcmread(h.path, case_id, stop_before_pixels=False) for h in headers]
        files = [h.path for h in headers]
        geometry = [_geometry(ds, p, case_id) for ds, p in zip(datasets, files, strict=True)]
        order, lps_affine = _slice_grid(geometry, files, case_id)
        slices = [_pixels(datasets[i], files[i], case_id) for i in order]
    data = np.stack(slices, axis=-1)
    return Series(
        data=data,
        affine=LPS_TO_RAS @ lps_affine,
        series_uid=headers[0].series_uid,
        frame_uid=headers[0].frame_uid,
        patient_id=headers[0].patient_id,
        sop_uids=[headers[i].sop_uid for i in order],
        files=[files[i] for i in order],
    )


def _pixels(ds: pydicom.Dataset, path: Path, case_id: str) -> np.ndarray:
    """One slice as float32 (column, row), scaled by RescaleSlope/Intercept."""
    if "PixelData" not in ds:
        raise DicomError(case_id, path, "no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        name = getattr(ds.file_meta, "TransferSyntaxUID", None)
        syntax = f" (transfer syntax {name.name})" if name is not None else ""
        raise DicomError(
            case_id, path, f"pixel data cannot be decoded{syntax}: {type(exc).__name__}"
        ) from None
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise DicomError(case_id, path, f"pixel data of shape {pixels.shape} does not match Rows/Columns")
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except Exception:
        raise DicomError(case_id, path, "RescaleSlope/RescaleIntercept are not numbers") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise DicomError(
            case_id, path, f"RescaleSlope/RescaleIntercept are not finite ({slope}, {intercept})"
        )
    values = pixels.astype(np.float64) * slope + intercept
    return values.T.astype(np.float32)


# --------------------------------------------------------------------------- the RTSTRUCT


def _norm(name: str) -> str:
    return str(name).strip().casefold()


def _choose_roi(names: dict[int, str], roi: str, case_id: str, path: Path) -> int:
    """ROI number by name: exact (case-insensitive, stripped), else a unique ``<roi>_...`` name.

    The IBSI export names the tumour ``GTV_Mass_MR_T1``; ``GTV_Mass`` finds it.
    """
    wanted = _norm(roi)
    exact = [n for n, name in names.items() if _norm(name) == wanted]
    if len(exact) == 1:
        return exact[0]
    found = ", ".join(repr(str(name).strip()) for name in names.values()) or "none"
    if len(exact) > 1:
        raise DicomError(case_id, path, f"ROI {roi!r} is defined {len(exact)} times; ROIs found: {found}")
    prefixed = [
        n
        for n, name in names.items()
        if len(_norm(name)) > len(wanted)
        and _norm(name).startswith(wanted)
        and _norm(name)[len(wanted)] in "_ -."
    ]
    if len(prefixed) == 1:
        logger.info("case %s: ROI %r taken for %r", case_id, str(names[prefixed[0]]).strip(), roi)
        return prefixed[0]
    if len(prefixed) > 1:
        raise DicomError(case_id, path, f"ROI {roi!r} is ambiguous; ROIs found: {found}")
    raise DicomError(case_id, path, f"no ROI named {roi!r}; ROIs found: {found}")


@dataclass
class _Structure:
    patient_id: str
    series_uids: set[str]
    frame_uids: set[str]
    roi_names: dict[int, str]
    dataset: pydicom.Dataset
    path: Path


def _read_structure(path: Path, case_id: str) -> _Structure:
    ds = _dcmread(path, case_id)
    if str(ds.get("Modality", "")).strip().upper() != "RTSTRUCT":
        raise DicomError(case_id, path, "not an RTSTRUCT (Modality is not RTSTRUCT)")
    try:
        series_uids, frame_uids = set(), set()
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            if frame.get("FrameOfReferenceUID"):
                frame_uids.add(str(frame.FrameOfReferenceUID))
            for study in frame.get("RTReferencedStudySequence", []):
                for series in study.get("RTReferencedSeriesSequence", []):
                    if series.get("SeriesInstanceUID"):
                        series_uids.add(str(series.SeriesInstanceUID))
        names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
    except Exception as exc:
        raise DicomError(case_id, path, f"malformed RTSTRUCT header ({type(exc).__name__})") from None
    return _Structure(str(ds.get("PatientID", "") or ""), series_uids, frame_uids, names, ds, path)


def _find_structure(rtstruct: Path, case_id: str) -> _Structure:
    """``rtstruct`` is the file, or a folder holding exactly one RTSTRUCT."""
    if rtstruct.is_file():
        return _read_structure(rtstruct, case_id)
    headers = _scan(_files_below(rtstruct, case_id), case_id)
    found = [h.path for h in headers if h.modality == "RTSTRUCT"]
    if len(found) != 1:
        what = "no RTSTRUCT" if not found else f"{len(found)} RTSTRUCT files"
        raise DicomError(case_id, rtstruct, f"{what} in the folder (one is needed)")
    return _read_structure(found[0], case_id)


def _check_reference(structure: _Structure, series: Series, case_id: str) -> None:
    """The RTSTRUCT must be drawn on this series: same patient, series and frame of reference."""
    path = structure.path
    if structure.patient_id != series.patient_id:
        raise DicomError(
            case_id, path, "mixed patients: the RTSTRUCT has a different PatientID from the series"
        )
    if structure.series_uids and series.series_uid not in structure.series_uids:
        raise DicomError(
            case_id,
            path,
            "the RTSTRUCT references another series (RTReferencedSeriesSequence), not this MR series",
        )
    if structure.frame_uids and series.frame_uid not in structure.frame_uids:
        raise DicomError(
            case_id, path, "the RTSTRUCT references another frame of reference than the MR series"
        )


def _roi_polygons(structure: _Structure, number: int, series: Series, case_id: str) -> dict[int, list]:
    """The ROI's closed contours in voxel coordinates (i, j), grouped by slice index."""
    ds, path = structure.dataset, structure.path
    frame = next(
        (
            r.get("ReferencedFrameOfReferenceUID")
            for r in ds.StructureSetROISequence
            if int(r.ROINumber) == number
        ),
        None,
    )
    if frame and str(frame) != series.frame_uid:
        raise DicomError(case_id, path, "the ROI is drawn in another frame of reference than the MR series")
    items = [c for c in ds.get("ROIContourSequence", []) if int(c.get("ReferencedROINumber", -1)) == number]
    to_voxel = np.linalg.inv(series.lps_affine)
    slice_of_uid = {uid: k for k, uid in enumerate(series.sop_uids)}
    n_slices = series.data.shape[2]
    by_slice: dict[int, list] = {}
    skipped = 0
    for item in items:
        for contour in item.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).strip().upper()
            try:
                points = np.asarray([float(v) for v in contour.ContourData], dtype=float)
            except Exception:
                raise DicomError(case_id, path, "ContourData is missing or not numeric") from None
            if not np.isfinite(points).all():
                raise DicomError(case_id, path, "ContourData holds NaN or infinite coordinates")
            if kind != "CLOSED_PLANAR" or points.size < 9 or points.size % 3:
                skipped += 1
                continue
            points = points.reshape(-1, 3)
            voxel = (to_voxel[:3, :3] @ points.T).T + to_voxel[:3, 3]
            k_float = float(voxel[:, 2].mean())
            k = int(round(k_float))
            if np.ptp(voxel[:, 2]) > 2 * SLICE_TOLERANCE or abs(k_float - k) > SLICE_TOLERANCE:
                k = _referenced_slice(contour, slice_of_uid)
                if k is None:
                    position = float(
                        points.mean(axis=0)
                        @ series.lps_affine[:3, 2]
                        / np.linalg.norm(series.lps_affine[:3, 2])
                    )
                    raise DicomError(
                        case_id,
                        path,
                        f"a contour at {position:.2f} mm along the slice normal lies between slices"
                        " or is not planar with them",
                    )
            if not 0 <= k < n_slices:
                raise DicomError(
                    case_id, path, f"a contour lies outside the MR series (slice {k_float:.1f} of {n_slices})"
                )
            by_slice.setdefault(k, []).append(voxel[:, :2])
    if skipped:
        logger.warning("case %s: %d contour(s) that are not closed planar polygons skipped", case_id, skipped)
    return by_slice


def _referenced_slice(contour: pydicom.Dataset, slice_of_uid: dict[str, int]) -> int | None:
    for image in contour.get("ContourImageSequence", []):
        k = slice_of_uid.get(str(image.get("ReferencedSOPInstanceUID", "")))
        if k is not None:
            return k
    return None


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of polygons (vertices as (i, j) voxel coordinates) on pixel centres.

    A pixel (i, j) is inside when a ray from its centre crosses the polygons' edges an odd
    number of times; edges are half-open in j and crossings in i, so a centre on a left or
    lower edge is inside and on a right or upper edge outside. All polygons' edges are
    counted together, which is the XOR of the polygons: a contour inside another is a hole.
    Our own because ``skimage.draw.polygon`` fills one polygon at a time and counts centres
    on an edge as inside both neighbours, so XOR-ing its masks would erase the shared edge
    of two contours that touch; on the shared patients both give the same masks.
    """
    nx, ny = shape
    parity = np.zeros((nx + 1, ny), dtype=np.int32)
    rows = np.arange(ny, dtype=float)
    for polygon in polygons:
        p = np.round(np.asarray(polygon, dtype=float), 9)  # coordinates on a pixel centre stay exact
        x0, y0 = p[:, 0], p[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        crosses = (low[:, None] <= rows[None, :]) & (rows[None, :] < high[:, None])
        edge, row = np.nonzero(crosses)
        if edge.size == 0:
            continue
        x = x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        column = np.clip(np.ceil(np.round(x, 9)), 0, nx).astype(np.intp)
        np.add.at(parity, (column, row), 1)
    return (np.cumsum(parity, axis=0)[:nx] % 2).astype(bool)


def _read_mask(structure: _Structure, roi: str, series: Series, case_id: str) -> tuple[np.ndarray, str]:
    """The ROI as a uint8 0/1 mask on the series grid, and the ROI name used."""
    number = _choose_roi(structure.roi_names, roi, case_id, structure.path)
    polygons = _roi_polygons(structure, number, series, case_id)
    nx, ny, nz = series.data.shape
    mask = np.zeros((nx, ny, nz), dtype=np.uint8)
    for k, slice_polygons in polygons.items():
        mask[:, :, k] = rasterise(slice_polygons, (nx, ny))
    if not mask.any():
        logger.warning("case %s: ROI %r gives an empty mask", case_id, roi)
    return mask, str(structure.roi_names[number]).strip()


# --------------------------------------------------------------------------- writing


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image with scanner-space qform/sform and every free-text field empty."""
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        header[field] = b""
    header.extensions.clear()
    if np.issubdtype(data.dtype, np.integer):
        header.set_slope_inter(1.0, 0.0)
    return image


def output_paths(out_dir: str | os.PathLike, case_id: str, modality: str = "T1") -> tuple[Path, Path]:
    """``<out_dir>/<case_id>/MR_<modality>_{image,mask}.nii.gz``: the IBSI layout of ``cohort.read_ibsi``."""
    folder = Path(out_dir) / case_id
    return folder / f"MR_{modality}_image.nii.gz", folder / f"MR_{modality}_mask.nii.gz"


def _case_from_series_dir(series_dir: Path) -> str:
    """``<case>/MR_T1/image`` -> ``<case>``; otherwise the series folder's own name."""
    parts = series_dir.resolve().parts
    if len(parts) >= 3 and parts[-1].lower() == "image" and parts[-2].upper().startswith("MR_"):
        return parts[-3]
    return parts[-1]


def convert_patient(
    series_dir: str | os.PathLike,
    rtstruct: str | os.PathLike,
    out_dir: str | os.PathLike,
    case_id: str | None = None,
    roi: str = "GTV_Mass",
    modality: str = "T1",
) -> tuple[Path, Path]:
    """Convert one MR series and its RTSTRUCT to ``<out_dir>/<case_id>/MR_<modality>_{image,mask}.nii.gz``.

    ``rtstruct`` is the RTSTRUCT file or a folder holding one. ``case_id`` defaults to the
    case folder's name (``<case>/MR_T1/image`` -> ``<case>``), never to a header value.
    Everything is read and checked before anything is written, and both files are written
    to temporary names and renamed, so a failure leaves no partial output.
    """
    series_dir, rtstruct = Path(series_dir), Path(rtstruct)
    case_id = case_id or _case_from_series_dir(series_dir)
    image, mask, _ = _convert(series_dir, rtstruct, case_id, roi)
    return _write_pair(image, mask, out_dir, case_id, modality)


def _convert(series_dir: Path, rtstruct: Path, case_id: str, roi: str) -> tuple[Series, np.ndarray, str]:
    with _quiet_pydicom():
        structure = _find_structure(rtstruct, case_id)
        series = read_series(series_dir, case_id, wanted=structure.series_uids)
        _check_reference(structure, series, case_id)
        mask, roi_name = _read_mask(structure, roi, series, case_id)
    return series, mask, roi_name


def _write_pair(series: Series, mask: np.ndarray, out_dir, case_id: str, modality: str) -> tuple[Path, Path]:
    image_path, mask_path = output_paths(out_dir, case_id, modality)
    with ExitStack() as stack:
        image_tmp = stack.enter_context(atomic_path(image_path))
        mask_tmp = stack.enter_context(atomic_path(mask_path))  # renamed first: the image marks "done"
        nib.save(_nifti(series.data.astype(np.float32), series.affine), image_tmp)
        nib.save(_nifti(mask.astype(np.uint8), series.affine), mask_tmp)
    return image_path, mask_path


# --------------------------------------------------------------------------- a collection


def find_case_inputs(case_dir: str | os.PathLike, modality: str = "T1") -> tuple[Path, Path, list[Path]]:
    """(series folder, RTSTRUCT file, every input file) of one case folder.

    Either the shared layout ``<case>/MR_<modality>/image/`` + ``mask/*.dcm``, or any tree
    below ``<case>/``: the RTSTRUCT is found by Modality, the series by the
    SeriesInstanceUID it references (``read_series`` searches its folder for it).
    """
    case_dir = Path(case_dir)
    case_id = case_dir.name
    with _quiet_pydicom():
        image_dir = case_dir / f"MR_{modality}" / "image"
        if image_dir.is_dir():
            mask_dir = case_dir / f"MR_{modality}" / "mask"
            structure = _find_structure(mask_dir, case_id)
            inputs = _files_below(image_dir, case_id) + _files_below(mask_dir, case_id)
            return image_dir, structure.path, inputs
        files = _files_below(case_dir, case_id)
        headers = _scan(files, case_id)
        _check_same(headers, "patient_id", "PatientID", case_id, case_dir)
        found = [h for h in headers if h.modality == "RTSTRUCT"]
        if len(found) != 1:
            what = "no RTSTRUCT" if not found else f"{len(found)} RTSTRUCT files"
            raise DicomError(case_id, case_dir, f"{what} below the case folder (one is needed)")
        return case_dir, found[0].path, files


def _up_to_date(outputs: tuple[Path, Path], inputs: list[Path]) -> bool:
    if not all(p.is_file() for p in outputs):
        return False
    newest_input = max(p.stat().st_mtime_ns for p in inputs)
    return min(p.stat().st_mtime_ns for p in outputs) >= newest_input


def convert_collection(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    roi: str = "GTV_Mass",
    modality: str = "T1",
    progress: bool = True,
    skip_bad_cases: bool = False,
) -> pd.DataFrame:
    """Convert every case folder of a DICOM collection; resumable.

    A case whose two outputs exist and are newer than all its input files is skipped. The
    table (case_id, image, mask, roi, seconds, status) is returned with absolute paths and
    written to ``<out_dir>/dicom_conversion.csv`` with paths relative to ``out_dir``. A bad
    case stops the run with its ``DicomError``, or with ``skip_bad_cases`` is logged and
    listed with status ``error: ...`` (the message names only the case id and the file).
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise DicomError("?", root, "collection folder not found")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise DicomError("?", root, "no case folders in the collection")
    previous = _previous_rois(out_dir / TABLE_FILE)
    records = []
    for case_dir in tqdm(cases, desc="DICOM to NIfTI", unit="case", disable=not progress):
        case_id = case_dir.name
        started = time.perf_counter()
        image_path, mask_path = output_paths(out_dir, case_id, modality)
        record = {"case_id": case_id, "image": str(image_path), "mask": str(mask_path), "roi": roi}
        try:
            series_dir, rtstruct, inputs = find_case_inputs(case_dir, modality)
            if _up_to_date((image_path, mask_path), inputs):
                record.update(roi=previous.get(case_id, roi), status="up to date")
            else:
                series, mask, roi_name = _convert(series_dir, rtstruct, case_id, roi)
                _write_pair(series, mask, out_dir, case_id, modality)
                record.update(roi=roi_name, status="converted")
        except DicomError as exc:
            if not skip_bad_cases:
                raise
            logger.warning("%s", exc)
            record.update(image="", mask="", status=f"error: {exc.problem}")
        record["seconds"] = round(time.perf_counter() - started, 3)
        records.append(record)
    table = pd.DataFrame.from_records(
        records, columns=["case_id", "image", "mask", "roi", "seconds", "status"]
    )
    written = table.copy()
    for column in ("image", "mask"):
        written[column] = [os.path.relpath(p, out_dir) if p else "" for p in written[column]]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / TABLE_FILE) as tmp:
        written.to_csv(tmp, index=False)
    return table


def _previous_rois(table_file: Path) -> dict[str, str]:
    """The ROI names a previous run used, so resumed rows still say which ROI was taken."""
    if not table_file.is_file():
        return {}
    try:
        previous = pd.read_csv(table_file, dtype=str, keep_default_na=False)
        return dict(zip(previous["case_id"], previous["roi"], strict=True))
    except Exception:
        return {}
