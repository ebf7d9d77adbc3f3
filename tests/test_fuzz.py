"""Seeded fuzzing of what reads user files: ``load_cohort``, ``mstt-predict`` and ``convert_patient``.

Each input is a small good cohort, image folder or DICOM case with one random fault:
truncated or bit-flipped NIfTI (compressed or not), mangled header fields (shape, spacing,
data type, scaling, affines), odd voxel values (NaN, +-Inf, huge, non-binary masks),
broken ``cohort.csv`` rows, and altered, removed or mistyped DICOM tags. Each must end,
within a per-input time limit, either in a named error (``CaseFileError`` and its
subclasses, ``CohortError``, or a ValueError / FileNotFoundError that names the folder) or
in a result that an independent check finds correct. Anything else (a hang, a library
exception, an exit with a traceback, a file written outside the output folder) is a
failure, reported with the seed and the fault so it can be replayed.

``benchmarks/bench_fuzz.py`` runs the same fuzzer with more inputs and records the counts.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mstt_lib.cohort import CohortError, load_cohort
from mstt_lib.io import CaseFileError, save_nifti

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # the DICOM writers of test_dicom, also for benchmarks/bench_fuzz.py
    sys.path.insert(0, str(TESTS))

SEED = 13
SHAPE = (16, 12, 6)
T1_AFFINE = np.array([[1.0, 0, 0, -8.0], [0, 1.0, 0, -6.0], [0, 0, 5.0, -15.0], [0, 0, 0, 1]])
T2_AFFINE = np.array([[-0.8, 0, 0, 6.0], [0, -0.9, 0, 5.0], [0, 0, 4.0, -12.0], [0, 0, 0, 1]])
TIME_LIMIT_S = 20  # per input, in-process; a hang is a failure, not a stuck CI job


class Hang(Exception):
    """An input ran past the per-input time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expired(signum, frame):
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    target: str  # load_cohort, predict, predict-cli, dicom
    fault: str
    result: str  # "named error", "correct result" or "FAILURE: ..."


# ---------------------------------------------------------------------------
# Good inputs.


def _image(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    i, j, k = np.indices(shape)
    return (200 + 20 * i + 5 * j + 50 * k + rng.normal(0, 10, shape)).astype(np.float32)


def _mask(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5:10, 4:8, 2:4] = 1
    return mask


def write_cohort(root: Path, rng: np.random.Generator, n: int = 2) -> list[dict]:
    """A good project-layout cohort of ``n`` T1 + T2 cases; returns its rows."""
    rows = []
    for c in range(n):
        case_id = f"C{c + 1}"
        save_nifti(_image(rng), T1_AFFINE, root / case_id / "t1.nii.gz")
        save_nifti(_image(rng), T2_AFFINE, root / case_id / "t2.nii.gz")
        save_nifti(_mask(), T2_AFFINE, root / case_id / "mask.nii.gz")
        rows.append(
            {
                "case_id": case_id,
                "tissue": ["Fat", "Myxoid", "Nerve"][c % 3],
                "site": "thigh",
                "diagnosis": "x",
                "annotation_modality": "T2",
                "t1": f"{case_id}/t1.nii.gz",
                "t2": f"{case_id}/t2.nii.gz",
                "mask": f"{case_id}/mask.nii.gz",
            }
        )
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    return rows


# ---------------------------------------------------------------------------
# Faults in one NIfTI file.


def _flip_bits(blob: bytes, rng, start: int = 0, count: int | None = None) -> bytes:
    data = bytearray(blob)
    if len(data) <= start:
        return bytes(data)
    for _ in range(count or int(rng.integers(1, 9))):
        position = int(rng.integers(start, len(data)))
        data[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def _header_of(raw: bytes) -> nib.Nifti1Header:
    return nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)


WEIRD = [0.0, -1.0, np.nan, np.inf, -np.inf, 1e-30, 1e30, 3.0, 0.5, 65535.0]


def _mangle_field(raw: bytes, rng) -> tuple[bytes, str]:
    header = _header_of(raw)
    field = str(
        rng.choice(
            [
                "dim",
                "pixdim",
                "datatype",
                "bitpix",
                "scl_slope",
                "scl_inter",
                "vox_offset",
                "sform",
                "qform",
                "sizeof_hdr",
                "magic",
                "codes",
            ]
        )
    )
    if field == "dim":
        dim = header["dim"].copy()
        axis = int(rng.integers(0, 5))
        dim[axis] = int(rng.choice([0, 1, 2, 3, 4, 7, -1, 255, 4096, 32767]))
        header["dim"] = dim
    elif field == "pixdim":
        pixdim = header["pixdim"].copy()
        pixdim[int(rng.integers(0, 4))] = rng.choice(WEIRD)
        header["pixdim"] = pixdim
    elif field == "datatype":
        header["datatype"] = int(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 2304, 999]))
    elif field == "bitpix":
        header["bitpix"] = int(rng.choice([0, 1, 8, 13, 64, 128]))
    elif field in ("scl_slope", "scl_inter"):
        header[field] = rng.choice(WEIRD)
    elif field == "vox_offset":
        header["vox_offset"] = float(rng.choice([0, 100, 348, 353, 400, 1e6, -352]))
    elif field in ("sform", "qform"):
        names = (
            ["srow_x", "srow_y", "srow_z"] if field == "sform" else ["quatern_b", "quatern_c", "qoffset_x"]
        )
        name = str(rng.choice(names))
        value = header[name].copy() if np.ndim(header[name]) else header[name]
        if np.ndim(value):
            value[int(rng.integers(0, 4))] = rng.choice(WEIRD)
        else:
            value = rng.choice(WEIRD)
        header[name] = value
    elif field == "sizeof_hdr":
        header["sizeof_hdr"] = int(rng.choice([0, 540, 347, 1]))
    elif field == "magic":
        header["magic"] = bytes(rng.choice([b"ni1", b"n+2", b"xxx", b""]))
    else:
        header["sform_code"] = int(rng.choice([0, 1, 2, 5, 99]))
        header["qform_code"] = int(rng.choice([0, 1, 2, 5, 99]))
    return header.binaryblock + raw[348:], f"header field {field}"


def _save_as_is(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Save with the affine as the sform only, even one nibabel could not turn into a qform."""
    image = nib.Nifti1Image(data, None, dtype=data.dtype)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)


def _rewrite(path: Path, rng) -> str:
    """Valid NIfTI, odd content: values, shapes, affines."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    affine = image.affine.copy()
    kind = str(rng.choice(["values", "shape", "affine", "dtype", "mask-values"]))
    if kind in ("values", "mask-values"):
        count = int(rng.integers(1, 6))
        flat = data.reshape(-1)
        value = rng.choice([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 2.0, -1.0, 0.5, 0.0])
        flat[rng.integers(0, flat.size, count)] = value
        if rng.random() < 0.2:
            data[:] = value
        save_nifti(data, affine, path)
        return f"{kind}: {count} voxel(s) {value}"
    if kind == "shape":
        choice = int(rng.integers(0, 5))
        data = [data[:-1], data[..., :1], data[:, :, 0], data[..., None], np.concatenate([data, data], 2)][
            choice
        ]
        _save_as_is(data, affine, path)
        return f"shape {data.shape}"
    if kind == "affine":
        choice = int(rng.integers(0, 6))
        if choice == 0:
            affine[:3, 3] += rng.normal(0, 2, 3)
        elif choice == 1:
            affine[:3, :3] *= rng.choice([1e-6, 1e3, 0.0, -1.0])
        elif choice == 2:
            affine[:3, :3] = affine[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
        elif choice == 3:
            affine[0, 1] = rng.normal(0, 1)  # shear
        elif choice == 4:
            affine[:3, 3] = 1e20
        else:
            affine[int(rng.integers(0, 3)), int(rng.integers(0, 4))] = np.nan
        _save_as_is(data, affine, path)
        return f"affine change {choice}"
    dtype = rng.choice([np.int8, np.uint8, np.int16, np.float64, np.complex64, np.int64])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _save_as_is(data.astype(dtype), affine, path)
    return f"dtype {np.dtype(dtype).name}"


def corrupt_nifti(path: Path, rng) -> str:
    """One random fault in ``path`` (a .nii.gz); returns what was done."""
    blob = path.read_bytes()
    raw = gzip.decompress(blob)
    kind = str(
        rng.choice(
            [
                "truncate-gz",
                "flip-gz",
                "truncate-raw",
                "flip-header",
                "flip-data",
                "field",
                "field",
                "rewrite",
                "rewrite",
                "rewrite",
                "not-nifti",
                "uncompressed-field",
            ]
        )
    )
    if kind == "truncate-gz":
        path.write_bytes(blob[: int(rng.integers(0, len(blob)))])
    elif kind == "flip-gz":
        path.write_bytes(_flip_bits(blob, rng, start=10))
    elif kind == "truncate-raw":
        path.write_bytes(gzip.compress(raw[: int(rng.integers(0, len(raw)))]))
    elif kind == "flip-header":
        path.write_bytes(gzip.compress(_flip_bits(raw[:348], rng) + raw[348:]))
    elif kind == "flip-data":
        path.write_bytes(gzip.compress(_flip_bits(raw, rng, start=352, count=int(rng.integers(1, 40)))))
    elif kind == "field":
        raw, kind = _mangle_field(raw, rng)
        path.write_bytes(gzip.compress(raw))
    elif kind == "uncompressed-field":  # the same, but not compressed, under a .nii.gz name
        raw, kind = _mangle_field(raw, rng)
        path.write_bytes(raw)
        kind = f"uncompressed {kind}"
    elif kind == "rewrite":
        kind = _rewrite(path, rng)
    else:
        path.write_bytes(bytes(rng.choice([b"", b"hello", b"\x1f\x8b", rng.bytes(400)])))
    return f"NIfTI {path.name}: {kind}"


# ---------------------------------------------------------------------------
# Faults in cohort.csv.

ODD_IDS = ["", " ", ".", "..", "../ESCAPED", "a/b", "/tmp/abs", "a b", "caf\u00e9", "C1", "x" * 300, "C1\0"]
ODD_PATHS = ["", "missing.nii.gz", "/etc/hostname", "C1", "../../outside.nii.gz", "C1/t1.nii.gz", "C1\0/t1"]


def corrupt_table(root: Path, rows: list[dict], rng) -> str:
    path = root / "cohort.csv"
    kind = str(
        rng.choice(
            [
                "drop-column",
                "duplicate",
                "odd-id",
                "odd-path",
                "bytes",
                "truncate",
                "empty",
                "header-only",
                "tissue",
                "extra",
                "quote",
                "bom",
            ]
        )
    )
    table = pd.DataFrame(rows)
    row = int(rng.integers(0, len(rows)))
    if kind == "drop-column":
        column = str(rng.choice(list(table.columns)))
        table.drop(columns=[column]).to_csv(path, index=False)
        kind += f" {column}"
    elif kind == "duplicate":
        pd.concat([table, table.iloc[[row]]]).to_csv(path, index=False)
    elif kind == "odd-id":
        table.loc[row, "case_id"] = str(rng.choice(ODD_IDS))
        table.to_csv(path, index=False)
        kind += f" {table.loc[row, 'case_id']!r}"
    elif kind == "odd-path":
        column = str(rng.choice(["t1", "t2", "mask"]))
        table.loc[row, column] = str(rng.choice(ODD_PATHS))
        table.to_csv(path, index=False)
        kind += f" {column}={table.loc[row, column]!r}"
    elif kind == "bytes":
        blob = bytearray(path.read_bytes())
        position = int(rng.integers(0, len(blob)))
        blob[position:position] = rng.bytes(int(rng.integers(1, 20)))
        path.write_bytes(bytes(blob))
    elif kind == "truncate":
        blob = path.read_bytes()
        path.write_bytes(blob[: int(rng.integers(0, len(blob)))])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header-only":
        path.write_text(",".join(table.columns) + "\n")
    elif kind == "tissue":
        table.loc[row, "tissue"] = str(rng.choice(["fat", "Bone", "", "NaN", "None"]))
        table.to_csv(path, index=False)
    elif kind == "extra":
        path.write_text(path.read_text() + "C9,Fat,thigh,x,T2,a,b,c,extra,more\n")
    elif kind == "quote":
        path.write_text(path.read_text().replace("thigh", '"thigh', 1))
    else:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return f"cohort.csv: {kind}"


# ---------------------------------------------------------------------------
# Oracles.


def _named(error: BaseException, root: Path) -> bool:
    """An error of ours, or a plain ValueError / FileNotFoundError naming the folder or a file in it."""
    if isinstance(error, (CaseFileError, CohortError)):
        return True
    return type(error) in (ValueError, FileNotFoundError) and str(root) in str(error)


def _check_cohort(table: pd.DataFrame) -> str | None:
    """Independently: what load_cohort accepted is really usable (None), or why not."""
    for row in table.itertuples():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", row.case_id) or row.case_id in (".", ".."):
            return f"unsafe case id {row.case_id!r} accepted"
        mask = nib.load(row.mask)
        values = np.unique(np.asarray(mask.dataobj))
        if not set(values.tolist()) <= {0, 1}:
            return f"non-binary mask accepted: {values[:5]}"
        for path in (row.t1, row.t2):
            image = nib.load(path)
            data = np.asarray(image.dataobj, dtype=np.float64)
            if image.ndim != 3 or not np.isfinite(data).all() or not np.isfinite(image.affine).all():
                return f"bad image accepted: {path}"
        t2 = nib.load(row.t2)
        if mask.shape != t2.shape or not np.allclose(mask.affine, t2.affine, atol=1e-3):
            return "mask off the T2 grid accepted"
    return None


def fuzz_load_cohort(folder: Path, base: Path, rows: list[dict], rng) -> Outcome:
    root = folder / "cohort"
    shutil.copytree(base, root)
    if rng.random() < 0.35:
        fault = corrupt_table(root, rows, rng)
    else:
        case = rows[int(rng.integers(0, len(rows)))]
        fault = corrupt_nifti(root / case[str(rng.choice(["t1", "t2", "mask"]))], rng)
    try:
        with time_limit(TIME_LIMIT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table, _ = load_cohort(root, progress=False)
    except Hang as error:
        return Outcome("load_cohort", fault, f"FAILURE: hang ({error})")
    except Exception as error:  # noqa: BLE001 - judged just below
        if _named(error, root):
            return Outcome("load_cohort", fault, "named error")
        return Outcome("load_cohort", fault, f"FAILURE: {type(error).__name__}: {error}")
    wrong = _check_cohort(table)
    return Outcome("load_cohort", fault, f"FAILURE: {wrong}" if wrong else "correct result")


# ---------------------------------------------------------------------------
# mstt-predict with a tiny T1-only run.


def make_run(folder: Path) -> Path:
    """A 'trained' T1-only U-Net run folder (random weights; resnet18, 32 x 32 samples)."""
    import torch

    from mstt_lib.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_model("unet", 3, "resnet18").state_dict(), folder / "model.pt")
    (folder / "params.json").write_text(
        json.dumps({"model": "unet", "encoder": "resnet18", "image_size": 32})
    )
    preprocessing = {
        "modalities": ["T1"],
        "spacing_mm": 4.0,
        "low_percentile": 0.05,
        "high_percentile": 99.95,
        "channels": [f"T1[{o}]" for o in ("index-1", "index", "index+1")],
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def write_plain(images: Path, rng) -> Path:
    """Two good T1 cases as plain files: G (stays good) and F (to be damaged)."""
    save_nifti(_image(rng), T1_AFFINE, images / "G_0000.nii.gz")
    save_nifti(_image(rng), T1_AFFINE, images / "F_0000.nii.gz")
    return images


def _predict_input(folder: Path, base: Path, rng) -> tuple[Path, str, str]:
    """Two T1 cases as plain files (G good, F faulty) or as a T1-only cohort.csv."""
    images = folder / "in"
    shutil.copytree(base, images)
    kind = rng.random()
    if kind < 0.7:
        return images, "F", corrupt_nifti(images / "F_0000.nii.gz", rng)
    if kind < 0.85:
        odd = str(rng.choice(["F G", "F\u00e9", "-F", ".F", "F.", "F__"]))
        (images / "F_0000.nii.gz").rename(images / f"{odd}_0000.nii.gz")
        return images, odd, f"plain file case id {odd!r}"
    rows = [{"case_id": c, "t1": f"{c}_0000.nii.gz", "t2": ""} for c in ("G", "F")]
    pd.DataFrame(rows).to_csv(images / "cohort.csv", index=False)
    full = [dict(r, mask="", tissue="", site="", diagnosis="", annotation_modality="") for r in rows]
    return images, "F", corrupt_table(images, full, rng)


def _judge_predict(
    code, err: str, out: Path, images: Path, before: set[Path], target: str, fault: str
) -> Outcome:
    def failure(why):
        return Outcome(target, fault, f"FAILURE: {why}\n{err[-2000:]}")

    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        return failure("traceback")
    if code not in (0, 1):
        return failure(f"exit status {code}")
    if _files(images) != before:
        return failure(f"files changed in the input folder: {sorted(map(str, _files(images) ^ before))[:5]}")
    outside = [p for p in out.parent.iterdir() if p not in (images, out)]
    if outside:
        return failure(f"written outside the output folder: {outside[:5]}")
    if code == 1:
        last = lines[-1] if lines else ""
        if not (last.startswith("mstt-predict: error: ") or "case(s) were not segmented" in last):
            return failure(f"exit 1 without a one-line error: {last!r}")
        if re.match(r"mstt-predict: error: [A-Za-z]+(Error|Exception): ", last):
            return failure(f"a library error: {last!r}")
    table_file = out / "predictions.csv"
    if not table_file.is_file():
        return (
            Outcome(target, fault, "named error") if code == 1 else failure("exit 0 without predictions.csv")
        )
    table = pd.read_csv(table_file, keep_default_na=False)
    for row in table.itertuples():
        if row.status.startswith("error: "):
            if not row.status.startswith(f"error: case {row.case_id}: "):
                return failure(f"case {row.case_id}: a library error: {row.status!r}")
            if (out / f"{row.case_id}.nii.gz").exists():
                return failure(f"case {row.case_id}: error, yet a prediction was written")
            continue
        if not row.status.startswith("ok"):
            return failure(f"case {row.case_id}: status {row.status!r}")
        mask = nib.load(out / f"{row.case_id}.nii.gz")
        probability = np.asarray(nib.load(out / f"{row.case_id}_probability.nii.gz").dataobj)
        values = set(np.unique(np.asarray(mask.dataobj)).tolist())
        if (
            not values <= {0, 1}
            or not np.isfinite(probability).all()
            or probability.min() < 0
            or probability.max() > 1
        ):
            return failure(f"case {row.case_id}: 'ok' but mask values {values} / probability out of [0, 1]")
    if "G" in set(table["case_id"]) and not table.set_index("case_id").loc["G", "status"].startswith("ok"):
        return failure("the good case was not predicted")
    return Outcome(target, fault, "named error" if code == 1 else "correct result")


def fuzz_predict(folder: Path, run: Path, base: Path, rng) -> Outcome:
    from mstt_lib.predict import main

    images, _, fault = _predict_input(folder, base, rng)
    before = _files(images)
    out = folder / "out"
    err = io.StringIO()
    code = 0
    try:
        with (
            time_limit(TIME_LIMIT_S),
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                main(
                    [
                        "-r",
                        str(run),
                        "-i",
                        str(images),
                        "-o",
                        str(out),
                        "--tta",
                        "none",
                        "--planes",
                        "axial",
                        "--device",
                        "cpu",
                        "--workers",
                        "1",
                    ]
                )
    except Hang as error:
        return Outcome("predict", fault, f"FAILURE: hang ({error})")
    except SystemExit as stop:
        code = stop.code
        if isinstance(code, str):
            err.write(code + "\n")
            code = 1
    except Exception as error:  # noqa: BLE001 - main must not let one out
        return Outcome("predict", fault, f"FAILURE: {type(error).__name__} escaped main: {error}")
    return _judge_predict(code, err.getvalue(), out, images, before, "predict", fault)


def fuzz_predict_cli(folder: Path, run: Path, base: Path, rng) -> Outcome:
    images, _, fault = _predict_input(folder, base, rng)
    before = _files(images)
    out = folder / "out"
    command = [
        sys.executable,
        "-m",
        "mstt_lib.predict",
        "-r",
        str(run),
        "-i",
        str(images),
        "-o",
        str(out),
        "--tta",
        "none",
        "--planes",
        "axial",
        "--device",
        "cpu",
        "--workers",
        "1",
    ]
    environment = {"PYTHONPATH": str(TESTS.parent), "PATH": "/usr/bin:/bin"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    except subprocess.TimeoutExpired:
        return Outcome("predict-cli", fault, "FAILURE: hang (no exit within 120 s)")
    return _judge_predict(done.returncode, done.stderr, out, images, before, "predict-cli", fault)


# ---------------------------------------------------------------------------
# convert_patient with altered DICOM tags.

DICOM_EDITS = [
    ("remove", "ImagePositionPatient"),
    ("remove", "PixelSpacing"),
    ("remove", "ImageOrientationPatient"),
    ("remove", "Rows"),
    ("remove", "PixelData"),
    ("remove", "SeriesInstanceUID"),
    ("remove", "FrameOfReferenceUID"),
    ("set", "PixelSpacing", ["0", "1"]),
    ("set", "PixelSpacing", ["nan", "1"]),
    ("set", "PixelSpacing", ["-1", "1"]),
    ("set", "ImagePositionPatient", ["1", "2"]),
    ("set", "ImagePositionPatient", ["inf", "0", "0"]),
    ("set", "ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]),
    ("set", "ImageOrientationPatient", ["0", "0", "0", "0", "0", "0"]),
    ("set", "Rows", 31),
    ("set", "Columns", 0),
    ("set", "BitsAllocated", 8),
    ("set", "SamplesPerPixel", 3),
    ("set", "NumberOfFrames", 4),
    ("set", "RescaleSlope", "abc"),
    ("set", "RescaleSlope", "nan"),
    ("set", "Modality", "CT"),
    ("set", "SeriesInstanceUID", "1.2.3"),
    ("set", "PixelRepresentation", 1),
]
RTSTRUCT_EDITS = [
    ("remove", "ROIContourSequence"),
    ("remove", "StructureSetROISequence"),
    ("remove", "ReferencedFrameOfReferenceSequence"),
    ("set", "Modality", "MR"),
    ("contour", "odd"),
    ("contour", "nan"),
    ("contour", "empty"),
    ("contour", "far"),
    ("roi-name", "Other"),
]


def _edit_dicom(path: Path, edit: tuple, rng) -> None:
    import pydicom

    ds = pydicom.dcmread(path, force=True)
    action, keyword = edit[0], edit[1]
    if action == "remove":
        if keyword in ds:
            delattr(ds, keyword)
    elif action == "set" and isinstance(edit[2], (str, list)):  # raw text: pydicom would refuse 'abc' as DS
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.dataelem import RawDataElement

        tag = tag_for_keyword(keyword)
        text = "\\".join(edit[2]) if isinstance(edit[2], list) else edit[2]
        raw = text.encode() + (b" " if len(text) % 2 else b"")
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    elif action == "set":
        setattr(ds, keyword, edit[2])
    elif action == "roi-name":
        for item in ds.StructureSetROISequence:
            item.ROIName = keyword
    else:
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        points = list(contour.ContourData)
        if keyword == "odd":
            contour.ContourData = points[:-1]
        elif keyword == "nan":
            contour.ContourData = ["nan"] + points[1:]
        elif keyword == "empty":
            contour.ContourData = []
        else:
            contour.ContourData = [float(v) + 1e4 for v in points]
        contour.NumberOfContourPoints = len(contour.ContourData) // 3
    ds.save_as(path)


def write_dicom(folder: Path) -> Path:
    """A good DICOM case: ``<folder>/STS_900/MR_T1/image/*.dcm`` and ``.../mask/RS.dcm``.

    Its UIDs are numbered, not random, so the same bytes are written every time and a fuzzed
    DICOM input replays from its seed and number (bit flips land on the same fields).
    """
    from pydicom.uid import generate_uid
    from test_dicom import edges, make_rtstruct, make_series

    numbers = itertools.count()

    def new_uid() -> str:
        return generate_uid(entropy_srcs=["mstt-fuzz", str(next(numbers))])

    series_dir = folder / "STS_900" / "MR_T1" / "image"
    synth = make_series(series_dir, n=5, rows=24, cols=20, new_uid=new_uid)
    contours = {"GTV_Mass": [(k, edges(4, 12, 5, 14)) for k in (1, 2, 3)]}
    make_rtstruct(series_dir.parent / "mask" / "RS.dcm", synth, contours, new_uid=new_uid)
    return folder


def fuzz_dicom(folder: Path, base: Path, rng) -> Outcome:
    from mstt_lib.dicom import convert_patient

    shutil.copytree(base, folder / "dicom")
    series_dir = folder / "dicom" / "STS_900" / "MR_T1" / "image"
    rtstruct = series_dir.parent / "mask" / "RS.dcm"
    files = sorted(series_dir.glob("*.dcm"))
    kind = rng.random()
    if kind < 0.55:
        edit = DICOM_EDITS[int(rng.integers(0, len(DICOM_EDITS)))]
        target = files if rng.random() < 0.5 else [files[int(rng.integers(0, len(files)))]]
        for path in target:
            _edit_dicom(path, edit, rng)
        fault = f"DICOM image tag {edit[:3]} in {len(target)} file(s)"
    elif kind < 0.8:
        edit = RTSTRUCT_EDITS[int(rng.integers(0, len(RTSTRUCT_EDITS)))]
        _edit_dicom(rtstruct, edit, rng)
        fault = f"RTSTRUCT {edit}"
    else:
        path = files[int(rng.integers(0, len(files)))] if rng.random() < 0.7 else rtstruct
        blob = path.read_bytes()
        if rng.random() < 0.5:
            path.write_bytes(blob[: int(rng.integers(0, len(blob)))])
            fault = f"truncated {path.name}"
        else:
            path.write_bytes(_flip_bits(blob, rng, count=int(rng.integers(1, 30))))
            fault = f"bit flips in {path.name}"
    out = folder / "nifti"
    try:
        with time_limit(TIME_LIMIT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image_path, mask_path = convert_patient(series_dir, rtstruct.parent, out)
    except Hang as error:
        return Outcome("dicom", fault, f"FAILURE: hang ({error})")
    except Exception as error:  # noqa: BLE001 - judged just below
        if isinstance(error, CaseFileError) and "STS_900" in str(error):
            if out.exists() and any(p.is_file() for p in out.rglob("*")):
                return Outcome("dicom", fault, "FAILURE: an error, yet files were written")
            return Outcome("dicom", fault, "named error")
        return Outcome("dicom", fault, f"FAILURE: {type(error).__name__}: {error}")
    image, mask = nib.load(image_path), nib.load(mask_path)
    data = np.asarray(image.dataobj, dtype=np.float64)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    if image.shape != mask.shape or not np.isfinite(data).all() or not values <= {0, 1} or image.ndim != 3:
        return Outcome("dicom", fault, "FAILURE: converted, but the NIfTI pair is inconsistent")
    return Outcome("dicom", fault, "correct result")


# ---------------------------------------------------------------------------
# The driver, shared with benchmarks/bench_fuzz.py.


def run_fuzz(workdir: Path, counts: dict[str, int], cli: int = 2, seed: int = SEED) -> list[Outcome]:
    """``counts`` inputs per target (load_cohort, predict, dicom), plus ``cli`` through the console script.

    The good inputs are written once and copied for each damaged one. Input ``n`` draws its
    fault from the generator seeded ``[seed, n]``, so one failing input can be replayed alone.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny volumes: threads cost more than they give on a shared machine
    rng = np.random.default_rng(seed)
    run = make_run(workdir / "run")
    cohort_base = workdir / "base-cohort"
    rows = write_cohort(cohort_base, rng)
    plain_base = write_plain(workdir / "base-plain", rng)
    dicom_base = write_dicom(workdir / "base-dicom")
    outcomes = []
    plan = [t for t, n in counts.items() for _ in range(n)] + ["predict-cli"] * cli
    try:
        for number, target in enumerate(plan):
            folder = workdir / f"{number:04d}"
            folder.mkdir()
            input_rng = np.random.default_rng([seed, number])
            if target == "load_cohort":
                outcome = fuzz_load_cohort(folder, cohort_base, rows, input_rng)
            elif target == "predict":
                outcome = fuzz_predict(folder, run, plain_base, input_rng)
            elif target == "predict-cli":
                outcome = fuzz_predict_cli(folder, run, plain_base, input_rng)
            else:
                outcome = fuzz_dicom(folder, dicom_base, input_rng)
            outcome.fault = f"input {number} (seed {seed}): {outcome.fault}"
            outcomes.append(outcome)
            if not outcome.result.startswith("FAILURE"):
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
    return outcomes


def summary(outcomes: list[Outcome]) -> Counter:
    return Counter(
        (o.target, o.result if not o.result.startswith("FAILURE") else "failure") for o in outcomes
    )


# Faults the fuzzer found in mstt_lib.dicom, now named errors: a NaN rescale slope (was converted
# into a NaN image) and a NaN contour coordinate (was numpy's ValueError).
KNOWN_DICOM_FAULTS = [
    ("image", ("set", "RescaleSlope", "nan")),
    ("rtstruct", ("contour", "nan")),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("where, edit", KNOWN_DICOM_FAULTS, ids=["nan-slope", "nan-contour"])
def test_known_dicom_faults_end_in_a_named_error(tmp_path, where, edit):
    from mstt_lib.dicom import convert_patient

    base = write_dicom(tmp_path / "dicom")
    series_dir = base / "STS_900" / "MR_T1" / "image"
    rng = np.random.default_rng(0)
    targets = (
        sorted(series_dir.glob("*.dcm")) if where == "image" else [series_dir.parent / "mask" / "RS.dcm"]
    )
    for path in targets:
        _edit_dicom(path, edit, rng)
    with pytest.raises(CaseFileError, match="STS_900"):
        convert_patient(series_dir, series_dir.parent / "mask", tmp_path / "out")


@pytest.mark.filterwarnings("ignore")
def test_an_unknown_value_representation_inside_the_rtstruct_is_a_named_error(tmp_path):
    # Found by the fuzzer (bit flips made ROIContourSequence's VR 'WQ'): pydicom converts an
    # element when it is first read, so the damage surfaced as its NotImplementedError.
    from mstt_lib.dicom import convert_patient

    series_dir = write_dicom(tmp_path / "dicom") / "STS_900" / "MR_T1" / "image"
    rtstruct = series_dir.parent / "mask" / "RS.dcm"
    tag = b"\x06\x30\x39\x00SQ"  # (3006,0039) ROIContourSequence, explicit VR little endian
    blob = rtstruct.read_bytes()
    assert blob.count(tag) == 1
    rtstruct.write_bytes(blob.replace(tag, b"\x06\x30\x39\x00WQ"))
    with pytest.raises(CaseFileError, match="STS_900.*RS.dcm"):
        convert_patient(series_dir, rtstruct.parent, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.filterwarnings("ignore")
def test_a_fuzzed_dicom_input_replays_from_its_seed_and_number(tmp_path):
    replays = []
    for attempt in ("first", "second"):
        base = write_dicom(tmp_path / attempt / "base")
        folder = tmp_path / attempt / "input"
        folder.mkdir()
        outcome = fuzz_dicom(folder, base, np.random.default_rng([SEED, 7]))
        files = {p.relative_to(folder): p.read_bytes() for p in sorted((folder / "dicom").rglob("*.dcm"))}
        replays.append((outcome.fault, outcome.result, files))
    assert len(replays[0][2]) == 6 and replays[0] == replays[1]


@pytest.mark.filterwarnings("ignore")
def test_corrupted_inputs_end_in_a_named_error_or_a_correct_result(tmp_path):
    # about 320 inputs in about a minute on 2 shared cores; benchmarks/bench_fuzz.py runs more
    outcomes = run_fuzz(tmp_path, {"load_cohort": 200, "predict": 15, "dicom": 100}, cli=1)
    failures = [f"{o.target} {o.fault}: {o.result}" for o in outcomes if o.result.startswith("FAILURE")]
    assert not failures, "\n\n".join(failures[:10])
    counts = summary(outcomes)
    # the fuzzer must reach both ends of every target, or it tests little
    for target in ("load_cohort", "predict", "dicom"):
        assert counts[(target, "named error")] > 0 and counts[(target, "correct result")] > 0, counts
