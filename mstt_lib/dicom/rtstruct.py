"""The RTSTRUCT: its ROI polygons, matched to the series' slices and rasterised to a mask.

Contours are rasterised per slice with the even-odd rule on pixel centres: a voxel is in the
mask when its centre lies inside an odd number of the slice's polygons, so a contour inside
another is a hole. On the boundary the rule is half-open (centres on a left/lower edge are
inside, on a right/upper edge outside), so two polygons sharing an edge tile the plane without
gap or overlap. It reproduces the IBSI masks of STS_001, STS_002 and STS_004 voxel for voxel
(as do ``skimage.draw.polygon`` and ``matplotlib.path`` on those data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from mstt_lib.dicom.series import DicomError, Series, _dcmread, _files_below, _scan

__all__ = ["rasterise"]

logger = logging.getLogger(__name__)

SLICE_TOLERANCE = 0.25  # a contour's distance from a slice, in slices, still matched to it


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
        # pydicom converts an element when it is first read: read them all here, so that a
        # damaged one (a bit flip in a VR deep in ROIContourSequence) is this named error.
        ds.walk(lambda dataset, element: None)
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
        raise DicomError(case_id, path, f"malformed RTSTRUCT ({type(exc).__name__})") from None
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
