"""T1 onto T2 with ANTs (antspyx), as the paper did: rigid by default, affine or SyN on request.

Per case the stage writes a folder with the registered pair on one grid (the grid of
the larger image: the smaller one is resampled to the larger one's resolution, as in
the paper), the ANTs transform, and a row of quality figures: mutual information
before and after, and, on the synthetic cohort, the residual of the recorded
misalignment in mm and degrees. The registered cases form a new case table
(``cohort.csv`` in the project layout), which preprocessing reads; a case whose
registration fails its quality threshold is left out of it and listed, never passed on.

ANTs works in LPS physical space; nibabel (and this project) in RAS. The conversion
is ``mstt_lib.geometry.LPS_TO_RAS``, applied here at the boundary with ANTs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from mstt_lib.cohort import write_cohort_table
from mstt_lib.engines import map_cases
from mstt_lib.geometry import (
    field_of_view_overlap,
    has_shear,
    lps_to_ras,
    misalignment_matrix,
    nearest_rotation,
    remove_shear,
    resample_image,
    resample_mask,
    rotation_angle_deg,
    voxel_spacing,
)
from mstt_lib.io import (
    CaseFileError,
    atomic_path,
    file_stamp,
    load_nifti,
    read_volume,
    save_nifti,
    short_digest,
)

__all__ = [
    "TRANSFORMS",
    "RegistrationSettings",
    "register_case",
    "register_cohort",
    "read_transform_matrix",
    "RESULTS_FILE",
]

TRANSFORMS = {"rigid": "Rigid", "affine": "Affine", "syn": "SyN"}
RESULTS_FILE = "registration.csv"
INPUTS_FILE = "inputs.json"  # the input files a case was registered from (see _finished)


@dataclass(frozen=True)
class RegistrationSettings:
    """How to register; ``min_mutual_information`` is the quality threshold (Mattes MI, nats)."""

    transform: str = "rigid"
    seed: int = 0
    min_mutual_information: float = 0.3
    max_residual_mm: float = 2.0  # synthetic cohort only: recorded misalignment not recovered
    min_overlap: float = 0.25  # fraction of the smaller field of view that the other covers
    # ANTs optimisation: three resolution levels with 5 % of the voxels sampled recover
    # the synthetic misalignment to a mean residual of a few tenths of a mm per case at a
    # third of the cost of ANTs' defaults (2100/1200/1200/10 iterations, 20 % sampled); the
    # worst point of a case (a field-of-view corner) stays within about 1 mm. The sampling,
    # not the iterations, limits it: more of it lowers the worst point.
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2, 1, 0)
    iterations: tuple[int, ...] = (200, 100, 50)
    sampling_rate: float = 0.05

    def key(self) -> str:
        """A short name for these settings, for folder names."""
        return f"{self.transform}-{short_digest(asdict(self))}"


# ---------------------------------------------------------------------------
# nibabel <-> ANTs.


def _to_ants(image: nib.Nifti1Image, data: np.ndarray | None = None):
    import ants

    affine = lps_to_ras(image.affine)  # the same flip takes RAS to LPS
    spacing = voxel_spacing(affine)
    direction = affine[:3, :3] / spacing
    array = np.asarray(image.dataobj, dtype=np.float32) if data is None else data.astype(np.float32)
    return ants.from_numpy(
        np.ascontiguousarray(array), origin=tuple(affine[:3, 3]), spacing=tuple(spacing), direction=direction
    )


def _grid_image(shape, affine) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(shape, np.float32), affine)


def read_transform_matrix(path: str | os.PathLike) -> np.ndarray:
    """The 4x4 RAS matrix of an ANTs linear transform file (fixed point -> moving point)."""
    import ants

    transform = ants.read_transform(str(path))
    points = np.array([[0, 0, 0], [50, 0, 0], [0, 50, 0], [0, 0, 50]], dtype=float)
    mapped = np.array(
        [np.array(ants.apply_ants_transform_to_point(transform, tuple(lps_to_ras(p)))) for p in points]
    )
    mapped = lps_to_ras(mapped)
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T / 50
    return matrix


def _map_points(transform_files: list[str], points_ras: np.ndarray) -> np.ndarray:
    """Apply ANTs forward transforms (fixed -> moving) to RAS points."""
    import ants

    frame = pd.DataFrame(lps_to_ras(points_ras), columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, frame, transform_files, whichtoinvert=None)
    # apply_transforms_to_points maps moving -> fixed for images' forward transforms; for
    # points ITK's convention is the reverse, so the forward list maps fixed -> moving here.
    return lps_to_ras(mapped[["x", "y", "z"]].to_numpy())


# ---------------------------------------------------------------------------
# One case.


def _mutual_information(fixed, moving) -> float:
    """Mattes mutual information of two ANTs images on one grid, as a positive number."""
    import ants

    return float(-ants.image_mutual_information(fixed, moving))


def register_case(
    row: pd.Series,
    out_dir: str | os.PathLike,
    settings: RegistrationSettings = RegistrationSettings(),
    truth: pd.Series | None = None,
) -> dict:
    """Register one case's T1 onto its T2; write the pair and transform; return its quality row.

    The row carries ``status`` ("ok" or why it failed). Input problems (unreadable
    files, fields of view that do not overlap) raise ``CaseFileError``.
    """
    import ants

    if settings.transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {settings.transform!r}; choose one of {sorted(TRANSFORMS)}")
    case_id = row["case_id"]
    t1 = load_nifti(row["t1"], case_id)
    t2 = load_nifti(row["t2"], case_id)
    mask_path = row.get("mask")
    mask = (
        load_nifti(mask_path, case_id) if isinstance(mask_path, str) and mask_path else None
    )  # none: new data
    overlap = field_of_view_overlap(t1, t2)
    if overlap < settings.min_overlap:
        raise CaseFileError(
            case_id,
            row["t1"],
            f"T1 and T2 fields of view do not overlap enough to register ({overlap:.0%} of the smaller)",
        )
    # ITK cannot represent a sheared grid: resample such an image onto the nearest
    # orthogonal one (and the mask with its T2).
    if has_shear(t1.affine):
        t1 = remove_shear(t1)
    if has_shear(t2.affine):
        t2 = remove_shear(t2)
    if mask is not None and has_shear(mask.affine):
        on_grid = resample_mask(read_volume(mask, case_id), mask.affine, t2.shape, t2.affine)
        mask = nib.Nifti1Image(on_grid.astype(np.uint8), t2.affine)

    folder = Path(out_dir) / case_id
    staging = Path(out_dir) / f".{case_id}.partial"  # the case's files until all are written
    shutil.rmtree(staging, ignore_errors=True)
    # ANTs' transforms go to a folder of the system's, removed with the staging folder: its output
    # option cannot take a path with a comma or a bracket, which a user's folder may have
    scratch = Path(tempfile.mkdtemp(prefix="mstt-ants-"))
    try:
        staging.mkdir(parents=True)
        fixed, moving = _to_ants(t2, read_volume(t2, case_id)), _to_ants(t1, read_volume(t1, case_id))
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform=TRANSFORMS[settings.transform],
            aff_metric="mattes",
            aff_iterations=settings.iterations,
            aff_shrink_factors=settings.shrink_factors,
            aff_smoothing_sigmas=settings.smoothing_sigmas,
            aff_random_sampling_rate=settings.sampling_rate,
            verbose=False,
            outprefix=str(scratch / "ants-"),  # antspy's default leaves them in the system's folder
        )
        # The pair's grid: the larger image's (more voxels), as the paper did.
        larger = t1 if np.prod(t1.shape) > np.prod(t2.shape) else t2
        grid = _to_ants(_grid_image(larger.shape, larger.affine))
        warped = ants.apply_transforms(fixed=grid, moving=moving, transformlist=result["fwdtransforms"])
        before = ants.resample_image_to_target(moving, fixed, interp_type="linear")
        on_fixed = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=result["fwdtransforms"])
        metrics = {
            "case_id": case_id,
            "transform": settings.transform,
            "grid": "T1" if larger is t1 else "T2",
            "fov_overlap": overlap,
            "mi_before": _mutual_information(fixed, before),
            "mi_after": _mutual_information(fixed, on_fixed),
        }

        transform_names = []
        for index, source in enumerate(result["fwdtransforms"]):
            name = f"t1_to_t2_{index}{''.join(Path(source).suffixes)}"
            shutil.copyfile(source, staging / name)
            transform_names.append(name)
        transforms = [str(staging / name) for name in transform_names]
        save_nifti(warped.numpy(), larger.affine, staging / "t1.nii.gz", dtype=np.float32)
        if larger is t2:
            save_nifti(read_volume(t2, case_id), t2.affine, staging / "t2.nii.gz")
        else:
            t2_on_grid = resample_image(t2, larger.shape, larger.affine, order=1)
            save_nifti(t2_on_grid, larger.affine, staging / "t2.nii.gz", dtype=np.float32)
        if mask is not None:
            on_grid = resample_mask(read_volume(mask, case_id), mask.affine, larger.shape, larger.affine)
            save_nifti(on_grid, larger.affine, staging / "mask.nii.gz", dtype=np.uint8)

        if truth is not None and mask is not None:
            metrics.update(_residual(transforms, truth, mask, read_volume(mask, case_id)))
        failures = []
        if metrics["mi_after"] < settings.min_mutual_information:
            failures.append(
                f"mutual information {metrics['mi_after']:.2f} < {settings.min_mutual_information}"
            )
        if "residual_mm_max" in metrics and metrics["residual_mm_max"] > settings.max_residual_mm:
            failures.append(f"residual {metrics['residual_mm_max']:.2f} mm > {settings.max_residual_mm} mm")
        metrics["status"] = "ok" if not failures else "failed: " + "; ".join(failures)
        metrics["transforms"] = ";".join(transform_names)
        (staging / "result.json").write_text(json.dumps(metrics, indent=1))
        (staging / INPUTS_FILE).write_text(json.dumps(_input_stamp(row), indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        return metrics
    finally:  # a failed or stopped case leaves no partial folder (a killed one: until the next run)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _residual(transform_files: list[str], truth: pd.Series, mask_image, mask: np.ndarray) -> dict:
    """How far the found transform is from the recorded misalignment, over the tumour and the grid."""
    true = misalignment_matrix(truth)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    corners *= np.array(mask.shape) - 1
    voxels = np.argwhere(mask > 0)
    if len(voxels) > 200:
        voxels = voxels[np.linspace(0, len(voxels) - 1, 200).astype(int)]
    ijk = np.concatenate([corners, voxels])
    points = ijk @ mask_image.affine[:3, :3].T + mask_image.affine[:3, 3]
    found = _map_points(transform_files, points)
    expected = points @ true[:3, :3].T + true[:3, 3]
    distance = np.linalg.norm(found - expected, axis=1)
    # Rotation part of the found transform, by least squares over the points.
    centred = points - points.mean(0)
    linear, *_ = np.linalg.lstsq(centred, found - found.mean(0), rcond=None)
    # A fitted rigid motion is right-handed, so its nearest rotation is a proper one (det +1).
    rotation_error = rotation_angle_deg(nearest_rotation(linear.T).T @ true[:3, :3])
    return {
        "residual_mm_mean": float(distance.mean()),
        "residual_mm_max": float(distance.max()),
        "rotation_error_deg": rotation_error,
        "misalignment_mm_mean": float(np.linalg.norm(expected - points, axis=1).mean()),
    }


# ---------------------------------------------------------------------------
# The cohort.


def _input_stamp(row) -> dict[str, list[int] | None]:
    """Each input file's size and modification time: a case whose files changed in place (or
    a cohort of the same folder name) is registered again, not read from its old result."""
    columns = ("t1", "t2", "mask")
    return {c: file_stamp(row[c]) for c in columns if isinstance(row.get(c), str) and row[c]}


def _finished(job: tuple) -> dict | None:
    """The case's result if it was registered into this folder before from the same files (a
    resumed run or a rerun)."""
    row, out_dir, _, _ = job
    folder = Path(out_dir) / row["case_id"]
    done, inputs = folder / "result.json", folder / INPUTS_FILE
    if not done.is_file():
        return None
    if not inputs.is_file():
        # Registered before cases recorded their inputs: taken as made from today's files (as
        # it always was) and recorded, rather than registering every case of an existing work
        # folder again, which would rename its slice cache and so retrain every run.
        with atomic_path(inputs) as tmp:
            tmp.write_text(json.dumps(_input_stamp(row), indent=1))
    elif json.loads(inputs.read_text()) != _input_stamp(row):
        return None
    return json.loads(done.read_text())


def _register_job(job: tuple) -> dict:
    row, out_dir, settings, truth = job
    try:
        return register_case(row, out_dir, settings, truth)
    except CaseFileError as error:
        return {"case_id": row["case_id"], "status": f"error: {error.problem}", "file": error.path}


def register_cohort(
    cases: pd.DataFrame,
    out_dir: str | os.PathLike,
    settings: RegistrationSettings = RegistrationSettings(),
    truth: pd.DataFrame | None = None,
    workers: int = 2,
    progress: bool = True,
    engine: str | None = None,
) -> pd.DataFrame:
    """Register every case; write ``registration.csv`` and the registered ``cohort.csv``.

    Cases already registered into ``out_dir`` with the same settings are reused,
    so an interrupted run resumes. Returns the quality table (one row per case,
    ``status`` "ok", "failed: ..." or "error: ..."); only "ok" cases enter the
    registered case table. ``engine``: where the cases run (``mstt_lib.engines``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_file = out_dir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(
        json.dumps(asdict(settings))
    ):
        raise ValueError(f"{out_dir} holds registrations made with other settings; use another folder")
    with atomic_path(settings_file) as tmp:
        tmp.write_text(json.dumps(asdict(settings), indent=1))
    truth_rows = truth.set_index("case_id") if truth is not None else None
    jobs = [
        (row, str(out_dir), settings, None if truth_rows is None else truth_rows.loc[row["case_id"]])
        for row in cases.to_dict("records")
    ]
    # Cases registered before are read here: no process pool, Ray session or progress bar for
    # them (a chapter's rerun). The rest run in fresh processes, so that ANTs starts seeded and
    # single-threaded (see _seeded_ants).
    finished = [_finished(job) for job in jobs]
    pending = [job for job, done in zip(jobs, finished, strict=True) if done is None]
    fresh = iter(
        map_cases(
            _register_job,
            pending,
            workers,
            engine,
            env=_ants_environment(settings.seed),
            spawn=True,
            progress=progress,
            desc="registration",
        )
        if pending
        else []
    )
    results = pd.DataFrame([done if done is not None else next(fresh) for done in finished])
    with atomic_path(out_dir / RESULTS_FILE) as tmp:
        results.to_csv(tmp, index=False)

    ok = set(results.loc[results["status"] == "ok", "case_id"])
    registered = cases[cases["case_id"].isin(ok)].copy()
    for column in ("t1", "t2", "mask"):
        written = [out_dir / c / f"{column}.nii.gz" for c in registered["case_id"]]
        registered[column] = [str(p) if p.is_file() else None for p in written]
    write_cohort_table(registered, out_dir)
    return results


def _seeded_ants(seed: int) -> None:
    """Make ANTs repeatable in this process: it must run before ``import ants``.

    antspyx ignores a seed argument to ``registration``; its random sampling reads
    ``ANTS_RANDOM_SEED`` (0 means unseeded, hence + 1), and ITK's threads split the
    work differently run to run, so one thread per process (two processes use both cores).
    """
    os.environ.update(_ants_environment(seed))


def _ants_environment(seed: int) -> dict[str, str]:
    """The environment ``_seeded_ants`` sets, for the worker processes of any engine."""
    return {"ANTS_RANDOM_SEED": str(seed + 1), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
