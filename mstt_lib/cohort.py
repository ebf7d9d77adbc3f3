"""The case table: one row per case, read from disk and checked at the boundary.

Columns (``CASE_COLUMNS``): ``case_id``, ``tissue`` (one of ``TISSUES``, or
empty when not recorded), ``site``, ``diagnosis``, ``annotation_modality``
(T1 or T2), and the absolute paths ``t1``, ``t2`` and ``mask`` (empty for a
modality the cohort does not have).

Three on-disk layouts are read (and, for new cases to segment, a fourth):

* the project's own: ``<root>/cohort.csv`` with those columns (paths relative
  to ``<root>`` or absolute), usually a folder per case holding
  ``t1.nii.gz``, ``t2.nii.gz`` and ``mask.nii.gz``;
* nnU-Net's raw dataset: ``dataset.json``, ``imagesTr/<case>_0000.nii.gz`` (T1),
  ``imagesTr/<case>_0001.nii.gz`` (T2), ``labelsTr/<case>.nii.gz``, plus our
  optional ``mstt_cases.csv`` with the clinical columns;
* the IBSI export of the TCIA Soft-tissue-Sarcoma collection (and what
  ``mstt_lib.dicom`` writes): ``<case>/MR_T1_image.nii.gz``,
  ``<case>/MR_T1_mask.nii.gz`` (and ``MR_T2_*`` where a T2 exists); no clinical
  columns, so tissue and site stay empty;
* for images without masks only (``read_cases(..., masks=False)``, what ``mstt-predict``
  reads): a plain folder of ``<case>_0000.nii.gz`` (T1) and ``<case>_0001.nii.gz`` (T2),
  and an nnU-Net dataset's ``imagesTs/`` (else ``imagesTr/``).

Every layout goes through the same checks: case ids must be plain names (``SAFE_CASE_ID``:
they name output files), unique and non-empty; every volume is read through
``mstt_lib.io``, which refuses NaN and +-Inf voxels.

The mask lies on the grid of the reference image: T2 when the cohort has T2
(T1 is registered onto it later), else T1.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.geometry import AFFINE_TOLERANCE_MM, on_grid
from mstt_lib.io import (
    CaseFileError,
    atomic_path,
    case_id_problem,
    load_nifti,
    nonfinite_voxels,
    read_volume,
    save_nifti,
)

__all__ = [
    "TISSUES",
    "MODALITIES",
    "CASE_COLUMNS",
    "COHORT_FILE",
    "CaseProblem",
    "CohortError",
    "EmptyMaskWarning",
    "read_cases",
    "read_cohort",
    "read_nnunet",
    "read_ibsi",
    "is_ibsi_layout",
    "load_cohort",
    "validate_cases",
    "write_cohort_table",
    "write_nnunet",
]

TISSUES = ("Fibrous", "Fat", "Myxoid", "Nerve", "Vascular")
MODALITIES = ("T1", "T2")
CASE_COLUMNS = ["case_id", "tissue", "site", "diagnosis", "annotation_modality", "t1", "t2", "mask"]
COHORT_FILE = "cohort.csv"
NNUNET_METADATA = "mstt_cases.csv"


@dataclass(frozen=True)
class CaseProblem:
    """Why one case cannot be used; ``path`` is the file at fault, if one is."""

    case_id: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        who = f"case {self.case_id}" if self.case_id else "a row with no case id"
        return f"{who}: {self.message}{where}"


class CohortError(ValueError):
    """One or more bad cases; the message lists each with its file."""

    def __init__(self, problems: list[CaseProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} bad case(s):\n{lines}\n"
            "Fix them, or pass skip_bad=True to leave them out (they are then listed)."
        )


class EmptyMaskWarning(UserWarning):
    """A case whose tumour mask is empty: kept, but Dice is undefined for it."""


# ---------------------------------------------------------------------------
# Reading tables.


def _text(value) -> str | None:
    """A cell's text, or None for a blank cell (None, NaN, pandas NA or whitespace)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    value = str(value).strip()
    return value or None


def _normalise_tissue(value) -> str | None:
    value = _text(value)
    if value is None:
        return None
    return {t.lower(): t for t in TISSUES}.get(value.lower(), value)


def _object_column(values, index) -> pd.Series:
    # object dtype keeps None as None (pandas 3's string dtype would turn it into NaN)
    return pd.Series(list(values), index=index, dtype=object)


def _finish_table(table: pd.DataFrame, root: Path, source: Path) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Resolve paths, canonicalise tissue names, and find table-level problems.

    ``source`` is the file the table came from, named in the problems it has.
    """
    if "case_id" not in table.columns:
        raise ValueError(f"{source}: no case_id column (columns: {list(table.columns)})")
    table = table.copy()
    for column in CASE_COLUMNS:
        if column not in table.columns:
            table[column] = None
    table["case_id"] = [_text(c) or "" for c in table["case_id"]]
    table["tissue"] = _object_column(map(_normalise_tissue, table["tissue"]), table.index)
    problems = []
    for column in ("t1", "t2", "mask"):
        resolved = []
        for case_id, path in zip(table["case_id"], map(_text, table[column]), strict=True):
            try:
                resolved.append(None if path is None else str((root / path).resolve()))
            except (ValueError, OSError, RuntimeError) as error:  # NUL bytes, loops, too long
                problems.append(
                    CaseProblem(case_id, f"{column} path {path!r} is not usable: {error}", str(source))
                )
                resolved.append(None)
        table[column] = _object_column(resolved, table.index)
    for number, case_id in enumerate(table["case_id"], start=1):
        problem = case_id_problem(case_id)
        if problem:
            problems.append(CaseProblem(case_id, f"{problem} (row {number})", str(source)))
    named = table["case_id"][table["case_id"] != ""]
    duplicated = named[named.duplicated(keep=False)]
    for case_id in sorted(set(duplicated)):
        count = int((table["case_id"] == case_id).sum())
        problems.append(CaseProblem(case_id, f"duplicate case id ({count} rows)", str(source)))
    for case_id, tissue in zip(table["case_id"], table["tissue"], strict=True):
        if tissue is not None and tissue not in TISSUES:
            problems.append(
                CaseProblem(
                    case_id,
                    f"unknown tissue type {tissue!r}; expected one of {TISSUES}",
                    str(source),
                )
            )
    return table[CASE_COLUMNS + [c for c in table.columns if c not in CASE_COLUMNS]], problems


def read_cohort(root: str | Path) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Read ``<root>/cohort.csv``; returns the table and its table-level problems."""
    root = Path(root)
    path = root / COHORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no case table: {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file (expected a header line and one row per case)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path}: not a readable CSV table ({reason})") from None
    if table.empty:
        raise ValueError(f"{path}: no cases (a header line but no rows)")
    return _finish_table(table, root, path)


def _read_dataset_json(path: Path) -> tuple[str, dict[str, int]]:
    """nnU-Net's ``dataset.json``: the file ending and the channel index of each modality."""
    try:
        dataset = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{path}: expected a JSON object with channel_names, labels and file_ending")
    ending = dataset.get("file_ending", ".nii.gz")
    names = dataset.get("channel_names", dataset.get("modality", {}))
    if not isinstance(ending, str) or not ending.startswith("."):
        raise ValueError(f"{path}: file_ending should be a text such as '.nii.gz', got {ending!r}")
    try:
        channels = {str(v).upper(): int(k) for k, v in names.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(
            f"{path}: channel_names should map channel numbers to names, got {names!r}"
        ) from None
    return ending, {m: i for m, i in channels.items() if m in MODALITIES and 0 <= i <= 9999}


def read_nnunet(root: str | Path, masks: bool = True) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Read an nnU-Net raw dataset folder (channel 0 = T1, channel 1 = T2).

    With ``masks`` the cases are those of ``labelsTr``; without, those with an image in
    ``imagesTs`` (else ``imagesTr``), as for segmenting new cases.
    """
    root = Path(root)
    dataset_file = root / "dataset.json"
    if not dataset_file.is_file():
        raise FileNotFoundError(f"not an nnU-Net raw dataset: {dataset_file} does not exist")
    ending, channels = _read_dataset_json(dataset_file)
    images = root / "imagesTr"
    if masks:
        labels = sorted((root / "labelsTr").glob(f"*{ending}"))
        case_ids = [label.name[: -len(ending)] for label in labels]
        where = root / "labelsTr"
    else:
        images = root / "imagesTs" if (root / "imagesTs").is_dir() else images
        case_ids = _channel_cases(images, ending, channels.values())
        where = images
    if not case_ids:
        raise ValueError(f"{dataset_file}: no cases (no *{ending} files in {where})")
    records = []
    for case_id in case_ids:
        record = {
            "case_id": case_id,
            "mask": str(root / "labelsTr" / f"{case_id}{ending}") if masks else None,
        }
        for name in MODALITIES:
            index = channels.get(name)
            # a missing file is reported by validation, with its case
            record[name.lower()] = None if index is None else str(images / f"{case_id}_{index:04d}{ending}")
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=["case_id", "t1", "t2", "mask"])
    metadata_file = root / NNUNET_METADATA
    if metadata_file.is_file():
        try:
            metadata = pd.read_csv(metadata_file, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
            reason = " ".join(str(error).split())
            raise ValueError(f"{metadata_file}: not a readable CSV table ({reason})") from None
        if "case_id" in metadata.columns:
            metadata = metadata.drop(columns=[c for c in ("t1", "t2", "mask") if c in metadata.columns])
            table = table.merge(metadata.drop_duplicates("case_id"), on="case_id", how="left")
    return _finish_table(table, root, metadata_file if metadata_file.is_file() else dataset_file)


def _channel_cases(folder: Path, ending: str, channels) -> list[str]:
    """Case ids of ``<case>_<channel:04d><ending>`` files in ``folder`` (any of ``channels``)."""
    found = set()
    for index in channels:
        suffix = f"_{index:04d}{ending}"
        found |= {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")}
    return sorted(found)


IBSI_IMAGE = "MR_{modality}_image.nii.gz"
IBSI_MASK = "MR_{modality}_mask.nii.gz"


def is_ibsi_layout(root: str | Path) -> bool:
    """Whether ``root`` holds case folders with ``MR_T1_image.nii.gz`` or ``MR_T2_image.nii.gz``."""
    root = Path(root)
    return any(any(root.glob(f"*/{IBSI_IMAGE.format(modality=m)}")) for m in MODALITIES)


def read_ibsi(root: str | Path, masks: bool = True) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Read the IBSI/STS layout: one folder per case named by its public id.

    The mask is the reference modality's (T2 when the case has a T2 image, else T1),
    as for the other layouts. A case folder with images but no mask is a problem
    of that case (unless ``masks`` is False: images only, for segmenting new cases).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no cohort folder: {root} does not exist")
    records, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = {m: folder / IBSI_IMAGE.format(modality=m) for m in MODALITIES}
        found = {m: path for m, path in found.items() if path.is_file()}
        if not found:
            continue
        reference = "T2" if "T2" in found else "T1"
        mask = folder / IBSI_MASK.format(modality=reference)
        if not masks:
            mask = None
        elif not mask.is_file():
            problems.append(CaseProblem(folder.name, f"no {reference} mask", str(mask)))
        records.append(
            {
                "case_id": folder.name,
                "t1": str(found["T1"]) if "T1" in found else None,
                "t2": str(found["T2"]) if "T2" in found else None,
                "mask": None if mask is None else str(mask),
                "annotation_modality": reference,
            }
        )
    if not records:
        raise FileNotFoundError(f"no case folder in {root} holds {IBSI_IMAGE.format(modality='T1')}")
    table, table_problems = _finish_table(pd.DataFrame.from_records(records), root, root)
    return table, problems + table_problems


PLAIN_CHANNELS = {"T1": 0, "T2": 1}


def read_plain(root: str | Path) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Images only: ``<case>_0000.nii.gz`` (T1) and ``<case>_0001.nii.gz`` (T2) in one folder."""
    root = Path(root)
    case_ids = _channel_cases(root, ".nii.gz", PLAIN_CHANNELS.values())
    if not case_ids:
        raise FileNotFoundError(f"no cases in {root}: no <case>_0000.nii.gz or <case>_0001.nii.gz files")
    records = [
        {"case_id": c, **{m.lower(): str(root / f"{c}_{i:04d}.nii.gz") for m, i in PLAIN_CHANNELS.items()}}
        for c in case_ids
    ]
    return _finish_table(pd.DataFrame.from_records(records), root, root)


def read_cases(root: str | Path, masks: bool = True) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Read a cohort folder in whichever layout it holds; returns the table and its table-level problems.

    The one reader of the project: ``load_cohort`` (training, evaluation) and
    ``mstt-predict`` (``masks=False``: images only, plain ``<case>_0000.nii.gz`` folders
    allowed) both come through here, so both get the same checks.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no cohort folder: {root} does not exist or is not a folder")
    if (root / COHORT_FILE).is_file():
        table, problems = read_cohort(root)
        if not masks:
            table = table.assign(mask=None)
        return table, problems
    if (root / "dataset.json").is_file():
        return read_nnunet(root, masks)
    if is_ibsi_layout(root):
        return read_ibsi(root, masks)
    if not masks and _channel_cases(root, ".nii.gz", PLAIN_CHANNELS.values()):
        return read_plain(root)
    plain = "" if masks else ", <case>_0000.nii.gz files"
    raise FileNotFoundError(
        f"{root} holds neither {COHORT_FILE} (project layout), dataset.json (nnU-Net) "
        f"nor <case>/{IBSI_IMAGE.format(modality='T1')} folders (IBSI/STS){plain}"
    )


def write_cohort_table(table: pd.DataFrame, root: str | Path) -> Path:
    """Write ``cohort.csv`` atomically, with paths relative to ``root`` where possible."""
    root = Path(root)
    table = table.copy()
    for column in ("t1", "t2", "mask"):
        table[column] = ["" if p is None or pd.isna(p) else _relative(Path(p), root) for p in table[column]]
    with atomic_path(root / COHORT_FILE) as tmp:
        table.to_csv(tmp, index=False)
    return root / COHORT_FILE


def _relative(path: Path, root: Path) -> str:
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------
# Validating cases.


def _check_case(
    row: pd.Series, modalities: tuple[str, ...], check_voxels: bool, masks: bool = True
) -> list[str]:
    """Raise CaseFileError for the first hard problem; return warnings."""
    case_id = row["case_id"]
    images = {}
    for modality in modalities:
        path = _text(row[modality.lower()])
        if path is None:
            raise CaseFileError(case_id, None, f"missing modality {modality}: no path in the table")
        if not Path(path).is_file():
            raise CaseFileError(case_id, path, f"missing modality {modality}: file not found")
        images[modality] = load_nifti(path, case_id)
    if not masks:
        if check_voxels:
            for modality, image in images.items():
                _check_finite(image, modality, case_id)
        return []
    if _text(row["mask"]) is None:
        raise CaseFileError(case_id, None, "no mask path in the table")
    mask_image = load_nifti(row["mask"], case_id)
    reference_name = "T2" if "T2" in images else modalities[0]
    reference = images[reference_name]
    if mask_image.shape != reference.shape:
        raise CaseFileError(
            case_id,
            row["mask"],
            f"mask shape {mask_image.shape} does not match {reference_name} shape {reference.shape}",
        )
    if not np.allclose(mask_image.affine, reference.affine, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.abs(mask_image.affine - reference.affine).max())
        raise CaseFileError(
            case_id,
            row["mask"],
            f"mask affine differs from the {reference_name} affine (by up to {worst:.3g} mm)",
        )
    notes = []
    if not check_voxels:
        return notes
    for modality, image in images.items():
        _check_finite(image, modality, case_id)
    mask = read_volume(mask_image, case_id)
    values = np.unique(mask)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise CaseFileError(case_id, row["mask"], f"mask is not binary: values {shown}")
    if not values.max(initial=0):
        notes.append(f"case {case_id}: empty tumour mask, case kept ({row['mask']})")
    return notes


def _check_finite(image: nib.Nifti1Image, modality: str, case_id: str) -> None:
    bad = nonfinite_voxels(read_volume(image, case_id, finite=False))
    if bad:
        raise CaseFileError(
            case_id, image.get_filename(), f"{modality} has {bad} (NaN and Inf are not allowed)"
        )


def validate_cases(
    table: pd.DataFrame,
    problems: list[CaseProblem] | None = None,
    modalities: tuple[str, ...] = MODALITIES,
    skip_bad: bool = False,
    check_voxels: bool = True,
    progress: bool = True,
    masks: bool = True,
) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Check every case's files; return the good cases and the skipped ones.

    Hard problems (missing modality, unreadable or truncated file, mask/image
    shape or affine mismatch, non-binary mask, NaN or +-Inf voxels, plus the table-level
    ``problems``) stop the run with a ``CohortError`` listing them all, unless
    ``skip_bad`` is set, in which case those cases are dropped and returned as
    the second value. An empty mask only warns (``EmptyMaskWarning``).
    ``check_voxels=False`` checks headers only (fast, but no truncation check).
    ``masks=False`` checks the images only (new cases to segment).
    """
    unknown = set(modalities) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
    problems = list(problems or [])
    bad_ids = {p.case_id for p in problems}
    for _, row in tqdm(table.iterrows(), total=len(table), desc="checking cases", disable=not progress):
        if row["case_id"] in bad_ids:
            continue
        try:
            notes = _check_case(row, tuple(modalities), check_voxels, masks)
        except CaseFileError as error:
            problems.append(CaseProblem(error.case_id, error.problem, error.path))
            continue
        for note in notes:
            warnings.warn(note, EmptyMaskWarning, stacklevel=2)
    if problems and not skip_bad:
        raise CohortError(problems)
    bad_ids = {p.case_id for p in problems}
    good = table[~table["case_id"].isin(bad_ids)].reset_index(drop=True)
    return good, problems


def load_cohort(
    root: str | Path,
    modalities: tuple[str, ...] = MODALITIES,
    skip_bad: bool = False,
    check_voxels: bool = True,
    progress: bool = True,
    record: str | Path | None = None,
) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Read a cohort in any layout (picked from what ``root`` holds) and validate it.

    ``record``: a JSON file of the cohorts that passed every check without a warning, each
    known by its files' paths, sizes and times. A cohort found there unchanged is not read
    again: checking 199 cases' voxels takes seconds, in every notebook that opens them.
    """
    table, problems = read_cases(root)
    key = None if record is None or problems else _files_key(table, modalities, check_voxels)
    if key is not None and key in _clean_keys(record):
        return table.reset_index(drop=True), []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            good, problems = validate_cases(table, problems, modalities, skip_bad, check_voxels, progress)
    finally:  # the caller sees every warning, as without the record
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if key is not None and not problems and not caught:
        keys = [k for k in _clean_keys(record) if k != key][-49:] + [key]
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps(keys, indent=1))
    return good, problems


def _files_key(table: pd.DataFrame, modalities: tuple[str, ...], check_voxels: bool) -> str | None:
    """A digest of every file the check reads (path, size, time); None if one is missing."""
    files = []
    for column in (*(m.lower() for m in modalities), "mask"):
        for path in table[column] if column in table else [None]:
            path = _text(path)
            if path is None or not Path(path).is_file():
                return None
            stat = Path(path).stat()
            files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps([list(modalities), check_voxels, files])
    return hashlib.sha256(text.encode()).hexdigest()


def _clean_keys(record: str | Path) -> list[str]:
    try:
        return list(json.loads(Path(record).read_text()))
    except (OSError, ValueError):  # absent or unreadable: nothing recorded
        return []


# ---------------------------------------------------------------------------
# Writing nnU-Net's raw format.


def write_nnunet(
    table: pd.DataFrame,
    out_dir: str | Path,
    modalities: tuple[str, ...] = MODALITIES,
    progress: bool = True,
) -> Path:
    """Write the cases as an nnU-Net v2 raw dataset; returns ``dataset.json``'s path.

    nnU-Net wants every channel on one grid, so a T1 that is not on the mask's
    grid is resampled onto it through the headers' world coordinates (linear).
    Give the registered T1 (notebook 02) in ``table['t1']`` to include the
    registration. The clinical columns go to ``mstt_cases.csv`` beside it.
    """
    out_dir = Path(out_dir)
    stale = sorted(
        p.name for p in (out_dir / "labelsTr").glob("*.nii.gz") if p.name[:-7] not in set(table["case_id"])
    )
    if stale:
        raise ValueError(
            f"{out_dir} already holds other cases ({', '.join(stale[:5])}...); "
            "export into an empty folder so that nnU-Net sees only this cohort"
        )
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    for _, row in tqdm(table.iterrows(), total=len(table), desc="nnU-Net export", disable=not progress):
        case_id = row["case_id"]
        mask = load_nifti(row["mask"], case_id)
        save_nifti(
            read_volume(mask, case_id, np.uint8), mask.affine, out_dir / "labelsTr" / f"{case_id}.nii.gz"
        )
        for channel, modality in enumerate(modalities):
            image = on_grid(load_nifti(row[modality.lower()], case_id), mask)
            data = np.asarray(image.dataobj, dtype=np.float32)
            target = out_dir / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz"
            save_nifti(data, mask.affine, target)
    dataset = {
        "channel_names": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": int(len(table)),
        "file_ending": ".nii.gz",
        "name": "MSTT (mstt-book export)",
    }
    clinical = [c for c in ("case_id", "tissue", "site", "diagnosis", "annotation_modality") if c in table]
    with atomic_path(out_dir / NNUNET_METADATA) as tmp:
        table[clinical].to_csv(tmp, index=False)
    with atomic_path(out_dir / "dataset.json") as tmp:
        tmp.write_text(json.dumps(dataset, indent=2))
    return out_dir / "dataset.json"


def reference_image(row: pd.Series) -> nib.Nifti1Image:
    """The image whose grid the mask lies on: T2 if the case has one, else T1."""
    path = _text(row.get("t2")) or row["t1"]
    return load_nifti(path, row["case_id"])
