"""Writing: a converted series and its mask as NIfTI (the IBSI/STS layout), for one case or a collection.

Everything is read and checked before anything is written, and files are written to temporary
names and renamed, so a failure leaves no partial output. The NIfTI header text fields are
empty: nothing from a DICOM header but geometry and pixel values reaches an output file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.dicom.rtstruct import _check_reference, _find_structure, _read_mask
from mstt_lib.dicom.series import (
    DicomError,
    Series,
    _check_same,
    _files_below,
    _quiet_pydicom,
    _scan,
    read_series,
)
from mstt_lib.io import atomic_path, file_stamp, short_digest

__all__ = [
    "TABLE_FILE",
    "convert_collection",
    "convert_patient",
    "find_case_inputs",
    "output_paths",
]

logger = logging.getLogger(__name__)

TABLE_FILE = "dicom_conversion.csv"  # not cohort.csv: the IBSI reader must see the case folders


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


def _conversion_record(out_dir: Path, case_id: str, modality: str) -> Path:
    """What a case's NIfTI pair was converted from: the ROI asked and every input file."""
    return Path(out_dir) / case_id / f"MR_{modality}_conversion.json"


def _sources(roi: str, inputs: list[Path]) -> dict:
    # a digest, not the paths: collection folders can carry dates and names
    files = sorted((str(p.resolve()), file_stamp(p)) for p in inputs)
    return {"roi_asked": roi, "inputs": short_digest(files)}


def _up_to_date(outputs: tuple[Path, Path], record: Path, sources: dict) -> str | None:
    """The ROI taken, if the pair was converted from exactly these files for this ROI (by path,
    size and time: a copy that keeps older times, another collection's case of the same name
    or another ROI converts again); else None."""
    if not (record.is_file() and all(p.is_file() for p in outputs)):
        return None
    try:
        earlier = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    same = all(earlier.get(key) == value for key, value in sources.items())
    return earlier.get("roi") if same else None


def convert_collection(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    roi: str = "GTV_Mass",
    modality: str = "T1",
    progress: bool = True,
    skip_bad_cases: bool = False,
) -> pd.DataFrame:
    """Convert every case folder of a DICOM collection; resumable.

    A case whose two outputs were converted from the same input files for the same ROI is
    skipped (``MR_<modality>_conversion.json``), and the output folder of a case that is no
    longer in the collection is removed (only folders this function wrote). The
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
    records = []
    for case_dir in tqdm(cases, desc="DICOM to NIfTI", unit="case", disable=not progress):
        case_id = case_dir.name
        started = time.perf_counter()
        image_path, mask_path = output_paths(out_dir, case_id, modality)
        record = {"case_id": case_id, "image": str(image_path), "mask": str(mask_path), "roi": roi}
        try:
            series_dir, rtstruct, inputs = find_case_inputs(case_dir, modality)
            sources = _sources(roi, inputs)
            conversion = _conversion_record(out_dir, case_id, modality)
            taken = _up_to_date((image_path, mask_path), conversion, sources)
            if taken is not None:
                record.update(roi=taken, status="up to date")
            else:
                series, mask, roi_name = _convert(series_dir, rtstruct, case_id, roi)
                _write_pair(series, mask, out_dir, case_id, modality)
                with atomic_path(conversion) as tmp:
                    tmp.write_text(json.dumps({**sources, "roi": roi_name}, indent=1))
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
    names = {c.name for c in cases}
    for gone in out_dir.glob(f"*/MR_{modality}_conversion.json"):  # cases since removed from the collection
        if gone.parent.name not in names:
            shutil.rmtree(gone.parent)
    written = table.copy()
    for column in ("image", "mask"):
        written[column] = [os.path.relpath(p, out_dir) if p else "" for p in written[column]]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / TABLE_FILE) as tmp:
        written.to_csv(tmp, index=False)
    return table
