"""Reading one DICOM MR series onto its voxel grid (``read_series``), with the checks the converter relies on.

Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, with slices
sorted by their position along the slice normal (InstanceNumber says nothing about space).
Voxel axes are (column, row, slice), as dcm2niix and the IBSI export write them; the affine maps
them to NIfTI's RAS world (DICOM's LPS with x and y negated). A series with a missing slice,
uneven steps or slices that disagree on spacing, orientation or matrix is refused rather than
silently resampled. Nothing read from a header except geometry, pixel values and UIDs leaves
this module; patient and study identifiers are only compared, never shown.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError

from mstt_lib.geometry import LPS_TO_RAS
from mstt_lib.io import CaseFileError

__all__ = ["DicomError", "Series", "read_series", "LPS_TO_RAS"]

GAP_FACTOR = 1.5  # a step this many times the median step means a missing slice
STEP_TOLERANCE = 0.01  # relative difference allowed between slice steps
GRID_TOLERANCE = 0.05  # slice origins off the regular grid by this fraction of a voxel: refused
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
