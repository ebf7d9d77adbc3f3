"""A run folder that describes itself: ``plans.json`` (the idea of nnU-Net's ``plans.json`` and
``dataset.json``).

A trained run holds, beside its weights, everything needed to reproduce it and to predict with it:

- ``parameter_set``: the named set and every value in it;
- ``registration``: the settings T1 was registered onto T2 with (None for one modality);
- ``preprocessing``: grid spacing, intensity normalisation, modalities, channels and sample size;
- ``data``: a fingerprint of the cases the run learned from (case ids, the SHA-256 of each input
  file, and one digest over them all), and which cases trained and which validated;
- ``environment``: the code commit and the library versions.

The starting weights (SHA-256 or "random initialisation"), the device and the wall time are in the
run's ``run.json`` (``mstt_lib.train``); ``describe_run`` reads both. Prediction
(``mstt_lib.predictor``) registers and preprocesses new cases with the recorded settings, not with
today's defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from mstt_lib.io import atomic_path

__all__ = [
    "PLANS_FILE",
    "PLANS_VERSION",
    "LIBRARIES",
    "file_sha256",
    "data_fingerprint",
    "environment",
    "write_plans",
    "read_plans",
    "registration_from_plans",
    "describe_run",
]

PLANS_FILE = "plans.json"
PLANS_VERSION = 1
LIBRARIES = (
    "torch",
    "segmentation-models-pytorch",
    "numpy",
    "scipy",
    "antspyx",
    "SimpleITK",
    "nibabel",
    "pydicom",
    "highdicom",
)
"""The distributions whose versions a run records (those installed)."""

NORMALISATION = "each image clipped to its low/high percentiles, then min-max scaled to [0, 1]"
GRID = "the T2's field of view (the T1's for a T1-only run), resampled to spacing_mm in every direction"


def file_sha256(path: str | os.PathLike, cache: dict | None = None) -> str:
    """SHA-256 of a file's bytes; ``cache`` (path -> [size, mtime_ns, digest]) skips unchanged files."""
    path = Path(path).resolve()
    stat = path.stat()
    key = str(path)
    if cache is not None:
        known = cache.get(key)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return known[2]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if cache is not None:
        cache[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
    return digest.hexdigest()


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        cache = json.loads(path.read_text())
    except (ValueError, OSError):
        return {}  # a damaged cache is only slower: every file is hashed again
    return cache if isinstance(cache, dict) else {}


def data_fingerprint(
    cases: pd.DataFrame,
    columns: Iterable[str] = ("t1", "t2", "mask"),
    cache_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Case ids and the SHA-256 of each case's input files, with one digest over them all.

    Hashing reads every byte once; ``cache_file`` (a JSON file) keeps the digests by path, size and
    modification time, so a cohort is hashed again only where a file changed.
    """
    cache_path = Path(cache_file) if cache_file is not None else None
    cache = _load_cache(cache_path)
    files: dict[str, dict[str, str]] = {}
    for row in cases.sort_values("case_id").to_dict("records"):
        files[row["case_id"]] = {
            column: file_sha256(row[column], cache)
            for column in columns
            if isinstance(row.get(column), str) and row[column]
        }
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps(cache))
    overall = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"n_cases": len(files), "sha256": overall, "files": files}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """The code commit ("unknown" outside a git checkout), uncommitted changes, and library versions."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "code_commit": commit or "unknown",
        "code_modified": None if status is None else bool(status),
        "python": platform.python_version(),
        "libraries": versions,
    }


def write_plans(
    run_dir: str | os.PathLike,
    *,
    parameter_set: Mapping[str, Any],
    registration,
    preprocessing: Mapping[str, Any],
    image_size: int,
    data: Mapping[str, Any],
    train_cases: Iterable[str],
    val_cases: Iterable[str],
) -> Path:
    """Write ``plans.json`` into a run folder (see the module's notes); returns its path.

    ``registration`` is a ``RegistrationSettings`` (or None: the run's cohort was not registered),
    ``preprocessing`` the slice cache's settings and channels, ``data`` a ``data_fingerprint``.
    """
    plans = {
        "plans_version": PLANS_VERSION,
        "parameter_set": {k: (str(v) if isinstance(v, Path) else v) for k, v in parameter_set.items()},
        "registration": None if registration is None else asdict(registration),
        "preprocessing": {
            **dict(preprocessing),
            "normalisation": NORMALISATION,
            "grid": GRID,
            "image_size": int(image_size),
        },
        "data": {**dict(data), "train_cases": sorted(train_cases), "val_cases": sorted(val_cases)},
        "environment": environment(),
    }
    path = Path(run_dir) / PLANS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plans, indent=1, default=str))
    return path


def read_plans(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``plans.json``, or None for a run trained before runs recorded one."""
    path = Path(run_dir) / PLANS_FILE
    if not path.is_file():
        return None
    try:
        plans = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON (damaged or truncated?): {error}") from None
    if not isinstance(plans, dict) or "registration" not in plans:
        raise ValueError(f"{path} is not a run's plans (no 'registration' entry)")
    return plans


def registration_from_plans(plans: Mapping[str, Any], where: str | os.PathLike = "plans.json"):
    """The ``RegistrationSettings`` a run recorded (None: its cohort was not registered)."""
    from mstt_lib.registration import RegistrationSettings

    recorded = plans["registration"]
    if recorded is None:
        return None
    try:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
        return RegistrationSettings(**values)
    except TypeError as error:
        raise ValueError(f"{where}: registration settings this version cannot use ({error})") from None


def describe_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything a run folder records: ``plans.json``, ``run.json`` and ``params.json`` together."""
    run_dir = Path(run_dir)
    record: dict[str, Any] = {"run": run_dir.name}
    for name in ("params.json", "run.json"):
        path = run_dir / name
        record[name.removesuffix(".json")] = json.loads(path.read_text()) if path.is_file() else None
    record["plans"] = read_plans(run_dir)
    return record
