"""NIfTI reading and writing with errors that name the case and the file.

Every stage hands its results to the next one as files, so two rules live here:
a file that cannot be read is reported with its case id and path (never a
stack trace from inside nibabel), and a file is written to a temporary name and
renamed, so that an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "CaseFileError",
    "SAFE_CASE_ID",
    "STOP_REPORTED_ABOVE",
    "Stopped",
    "atomic_path",
    "case_id_problem",
    "command_errors",
    "describe_error",
    "file_stamp",
    "load_nifti",
    "nonfinite_voxels",
    "read_volume",
    "save_nifti",
]

# Case ids become file and folder names in every output folder: letters, digits, "_", "-"
# and "." only, so that no id can name a path elsewhere ("../x", "/tmp/x", "a/b").
SAFE_CASE_ID = re.compile(r"[A-Za-z0-9_.-]+")
# More voxels than any MRI volume has (2**30, 4 GiB as float32): a damaged header, not an image.
MAX_VOXELS = 2**30
# Voxel sizes and a field of view no MRI has: resampling such a grid to 1 mm would not fit in memory.
MIN_SPACING_MM, MAX_SPACING_MM, MAX_EXTENT_MM = 1e-3, 100.0, 2500.0


class CaseFileError(ValueError):
    """A problem with one file of one case; the message names both."""

    def __init__(self, case_id: str, path: str | os.PathLike | None, problem: str):
        self.case_id = case_id
        self.path = None if path is None else str(path)
        self.problem = problem
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"case {case_id}: {problem}{where}")


def case_id_problem(case_id: object) -> str | None:
    """Why ``case_id`` cannot name a case's files (None when it can).

    Checked wherever case ids are read, because every output is named after one.
    """
    if not isinstance(case_id, str) or not case_id.strip():
        return "empty case id"
    if not SAFE_CASE_ID.fullmatch(case_id) or case_id in (".", ".."):
        return (
            f"case id {case_id!r} is not a plain name (use letters, digits, '_', '-' and '.', "
            "no path separators, not '.' or '..')"
        )
    return None


def nonfinite_voxels(data: np.ndarray) -> str | None:
    """'2 NaN, 1 +Inf voxel(s)' for an array with non-finite values; None when all are finite."""
    if not np.issubdtype(data.dtype, np.floating) or np.isfinite(data).all():
        return None
    counts = {
        "NaN": int(np.isnan(data).sum()),
        "+Inf": int(np.isposinf(data).sum()),
        "-Inf": int(np.isneginf(data).sum()),
    }
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) + " voxel(s)"


def load_nifti(path: str | os.PathLike, case_id: str = "?") -> nib.Nifti1Image:
    """Open a NIfTI image and check that its header describes a usable 3D volume.

    The voxel data is not read here; ``read_volume`` reads it.
    """
    path = Path(path)
    if not path.is_file():
        raise CaseFileError(case_id, path, "file not found")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for a damaged header
        raise CaseFileError(case_id, path, f"not a readable NIfTI file: {exc}") from None
    if image.ndim != 3:
        raise CaseFileError(case_id, path, f"expected a 3D volume, got shape {image.shape}")
    voxels = int(np.prod(image.shape, dtype=np.int64))
    if voxels == 0:
        raise CaseFileError(case_id, path, f"empty volume (shape {image.shape})")
    if voxels > MAX_VOXELS:
        raise CaseFileError(case_id, path, f"implausibly large volume {image.shape} (damaged header?)")
    _check_size(image, path, case_id)
    # nibabel quietly replaces a zero pixdim by 1 when loading, so read the raw header too.
    raw = _raw_pixdim(image, path)
    columns = np.linalg.norm(image.affine[:3, :3], axis=0)
    for spacing in (raw, columns):
        if spacing is not None and (not np.all(np.isfinite(spacing)) or np.any(spacing <= 0)):
            shown = tuple(round(float(s), 4) for s in spacing)
            raise CaseFileError(case_id, path, f"degenerate voxel spacing {shown}")
    if not np.all(np.isfinite(image.affine)):
        raise CaseFileError(case_id, path, "the affine (qform/sform) holds NaN or infinite values")
    for spacing in (raw, columns):
        if spacing is not None and (np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM)):
            shown = tuple(float(f"{s:.4g}") for s in spacing)
            raise CaseFileError(case_id, path, f"implausible voxel spacing {shown} mm (damaged header?)")
    extent = columns * np.asarray(image.shape[:3], dtype=float)
    if np.any(extent > MAX_EXTENT_MM):
        shown = tuple(round(float(e)) for e in extent)
        raise CaseFileError(case_id, path, f"implausible field of view {shown} mm (damaged header?)")
    return image


def _check_size(image: nib.Nifti1Image, path: Path, case_id: str) -> None:
    """An uncompressed file must hold the voxel data its header describes (before reading it)."""
    if path.suffix != ".nii" or not isinstance(image, nib.Nifti1Image):
        return
    offset = int(image.dataobj.offset)
    needed = offset + int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < needed:
        raise CaseFileError(
            case_id, path, f"truncated: the header describes {needed} bytes, the file holds {size}"
        )


def _raw_pixdim(image: nib.Nifti1Image, path: Path) -> np.ndarray | None:
    """pixdim[1:4] as stored in the file, before nibabel's fixes (None for non-NIfTI)."""
    header_class = type(image.header)
    if not hasattr(header_class, "from_fileobj") or "pixdim" not in image.header:
        return None
    try:
        with nib.openers.ImageOpener(path) as handle:
            raw = header_class.from_fileobj(handle, check=False)
        return np.asarray(raw["pixdim"][1:4], dtype=float)
    except Exception:  # the header was readable a moment ago; keep nibabel's view
        return None


def read_volume(
    image: nib.Nifti1Image, case_id: str = "?", dtype: type = np.float32, finite: bool = True
) -> np.ndarray:
    """Read the voxel data of an opened image; a truncated file is a clear error.

    With ``finite`` (the default), NaN and +-Inf voxels are an error too: they would
    poison percentiles, resampling and registration (ANTs loops on them) without a word.
    """
    floating = np.issubdtype(dtype, np.floating)
    try:
        data = np.asarray(image.dataobj, dtype=dtype) if floating else np.asarray(image.dataobj)
    except Exception as exc:  # EOFError, zlib.error, ValueError for short files...
        raise CaseFileError(
            case_id, image.get_filename(), f"voxel data cannot be read (truncated?): {exc}"
        ) from None
    if finite:
        bad = nonfinite_voxels(data)
        if bad:
            raise CaseFileError(case_id, image.get_filename(), f"{bad} (NaN and Inf are not allowed)")
    return data if floating else data.astype(dtype)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffixes (``.nii.gz``) so libraries that pick a
    format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what a plain write gives
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_stamp(path: str | os.PathLike) -> list[int] | None:
    """A file's [size, modification time in ns], or None when it is not there: what every
    stage's "done earlier" check compares, so that changed inputs are never reused."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def short_digest(payload: object, length: int = 12) -> str:
    """The one recipe for the hashes in stage folder names: SHA-1 of ``payload`` as sorted JSON.

    Anything ``json.dumps`` takes (with ``str`` for the rest, e.g. paths), so equal settings
    always give equal names.
    """
    import hashlib
    import json

    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_nifti(
    data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: type | None = None
) -> Path:
    """Write a volume with a scanner-space qform and sform, atomically."""
    array = np.asarray(data if dtype is None else data.astype(dtype))
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if np.issubdtype(array.dtype, np.integer):
        image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def describe_error(error: BaseException) -> str:
    """One line saying what failed and where: the message, the file of an OSError, the type if foreign."""
    problems = getattr(error, "problems", None)
    if problems:  # a CohortError: every bad case, on one line
        text = f"{len(problems)} bad case(s): " + "; ".join(map(str, problems))
    elif isinstance(error, OSError) and error.strerror:
        where = [str(f) for f in (error.filename, error.filename2) if f is not None]
        text = error.strerror + (f": {' -> '.join(where)}" if where else "")
    elif isinstance(error, ValueError) and type(error).__module__.startswith(("mstt_lib", "__main__")):
        text = str(error)
    elif type(error) in (ValueError, FileNotFoundError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt: Python's default
    would end the process on the spot, leaving its temporary files and worker processes."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


STOP_REPORTED_ABOVE = "MSTT_STOP_REPORTED_ABOVE"
"""Set for the processes of a command that reports their stop itself (``launch --devices``)."""


def _end_by_sigint() -> None:
    """The process's end after Ctrl-C: killed by SIGINT, as a shell expects, but only after the
    other exit functions (this one, registered last, runs first), or the process pool's
    semaphores, among others, would be reported leaked. Python's own way, an uncaught
    KeyboardInterrupt, is undone by some extensions' finalisation (torchvision's: exit status 1)."""
    atexit.unregister(_end_by_sigint)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def command_errors(prog: str, debug: bool = False) -> Iterator[None]:
    """A command line's errors as one line on stderr and exit status 1; ``debug`` keeps the traceback.

    Usage errors (exit status 2) are argparse's. Ctrl-C and SIGTERM unwind the program (its
    temporary files are removed, its worker processes stopped) and end it with one line. SIGTERM
    ends it with exit status 143; Ctrl-C, once the interpreter has run its exit functions, by
    SIGINT itself, which a shell reports as 130 and which stops a shell loop around the command
    (after a program that exits 130 the loop goes on).
    """
    main_thread = threading.current_thread() is threading.main_thread()  # where signals are handled
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
    try:
        yield
    except KeyboardInterrupt as stop:
        if debug:
            raise
        # one line for torchrun's processes, not one each, and none under a launcher that reports it
        if os.environ.get("RANK", "0") == "0" and not os.environ.get(STOP_REPORTED_ABOVE):
            reason = str(stop) or "interrupted"
            print(
                f"{prog}: {reason}; what it finished is kept, and the same command goes on from there",
                file=sys.stderr,
            )
        signum = getattr(stop, "signum", signal.SIGINT)
        if signum == signal.SIGINT:
            atexit.register(_end_by_sigint)
        raise SystemExit(128 + signum) from None
    except Exception as error:
        if debug:
            raise
        print(f"{prog}: error: {describe_error(error)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
