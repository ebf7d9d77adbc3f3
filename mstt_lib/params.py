"""The named parameter sets: the one place where the book's settings live.

``smoke`` is the default: small enough for the whole book to build on a 2-core
CPU in minutes. ``paper`` carries the MSTT-199 paper's settings and is meant for
a GPU. Notebooks take a set's name as a papermill parameter and may override
single values; an unknown name or key is an error that lists the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PARAMETER_SETS", "DEFAULT_SET", "REAL_DATA", "get_params", "real_data_params", "project_root"]

DEFAULT_SET = "smoke"

_COMMON: dict[str, Any] = {
    # Cohort: "synthetic" generates the phantom cohort into data_dir/synthetic-<set>;
    # a path reads a cohort in the project layout or nnU-Net's raw format.
    "cohort": "synthetic",
    "n_cases": 199,
    "seed": 0,
    "phantom_matrix": 192,
    "phantom_slices": 20,
    "modalities": ("T1", "T2"),
    "skip_bad_cases": False,
    "data_dir": "data",
    "work_dir": "work",
    "workers": 2,  # processes for per-case stages (registration, preprocessing)
    # Later stages work on this many cases per tissue (None: every case).
    "cases_per_tissue": None,
    # Registration of T1 onto T2 (paper: ANTs; rigid): "rigid", "affine" or "syn".
    "registration": "rigid",
    "registration_min_mi": 0.3,  # quality threshold: Mattes mutual information after registration
    # Preprocessing and 2.5D samples (paper, section 4.2).
    "spacing_mm": 1.0,
    "low_percentile": 0.05,
    "high_percentile": 99.95,
    "image_size": 256,
    "min_tumour_voxels": 100,  # training keeps slices with more tumour voxels than this
    # Training (paper, section 3 and Appendix A).
    "models": ("unet", "litemedsam"),
    "folds": (0, 1, 2, 3, 4),  # the folds trained (and evaluated) of the 5
    "n_folds": 5,
    "fold_seed": 42,
    "epochs": 5,
    "batch_size": 16,
    "lr": 1e-4,
    "loss": "bce",  # the paper's; "dice_bce" adds soft Dice
    "encoder": "se_resnext50_32x4d",
    "unet_weights": None,  # a local 3-channel ImageNet encoder file (nothing is downloaded)
    "litemedsam_weights": None,  # a local lite_medsam.pth
    "augment": True,
    "samples_per_epoch": None,  # None: every training sample, every epoch
    "val_samples": None,
    "device": "auto",  # CUDA when present, else the CPU
    # Inference and evaluation (paper, sections 4.2-4.6).
    "tta": "paper",  # "paper" (identity, flips, rot90), "all8" (the authors' code) or "none"
    "planes": ("axial", "coronal", "sagittal"),
    "eval_cases": None,  # validation cases scored per fold (None: all), or a number per model
    "inference_batch_size": 16,
}

PARAMETER_SETS: dict[str, dict[str, Any]] = {
    # Small enough for the whole book on a 2-core CPU in minutes.
    "smoke": {
        **_COMMON,
        "cases_per_tissue": 5,
        "folds": (0,),
        "epochs": 2,
        "batch_size": 4,
        "encoder": "resnet18",
        "samples_per_epoch": 16,  # LiteMedSAM takes about 10 s per step of 4 on 2 CPU cores
        "val_samples": 16,
        # LiteMedSAM needs about 2 s per 2.5D sample on 2 CPU cores: the smoke set scores
        # it on one validation case (the U-Net on all), axial plane only, without
        # test-time augmentation.
        "tta": "none",
        "planes": ("axial",),
        "eval_cases": {"unet": None, "litemedsam": 1},
    },
    # The paper's settings, for a GPU machine.
    "paper": {**_COMMON},
}


# The real-data chapter (notebook 08): the IBSI export of the TCIA Soft-tissue-Sarcoma
# collection, T1 only (3 input channels), no tissue labels, 5-fold cross-validation
# over its 29 patients. Applied on top of the set of the same name.
REAL_DATA: dict[str, dict[str, Any]] = {
    "smoke": {
        "cohort": "../shared/data/sts-ibsi-t1",
        "modalities": ("T1",),
        "models": ("unet",),  # LiteMedSAM takes about 2 s per sample on 2 CPU cores
        "folds": (0, 1, 2, 3, 4),
        "cases_per_tissue": None,
        # A 2 mm grid and 128 x 128 inputs: 8 times fewer voxels than the paper's 1 mm,
        # so five folds train and score every case in about two minutes on 2 cores.
        "spacing_mm": 2.0,
        "image_size": 128,
        "min_tumour_voxels": 25,  # the paper's 100 mm2 at 2 x 2 mm pixels
        "epochs": 5,
        "batch_size": 8,
        "samples_per_epoch": 64,
        "val_samples": 32,
        # Ten times the paper's rate: with 40 steps per fold, 1e-4 leaves the U-Net
        # predicting tumour almost everywhere (Dice about 0.15, against about 0.4).
        "lr": 1e-3,
        "eval_cases": None,
    },
    "paper": {
        "cohort": "../shared/data/sts-ibsi-t1",
        "modalities": ("T1",),
        "cases_per_tissue": None,
    },
}


def project_root() -> Path:
    """The repository root (where ``_config.yml`` lives), or the working folder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "mstt_lib").is_dir():
            return folder
    return here


def get_params(name: str = DEFAULT_SET, **overrides: Any) -> dict[str, Any]:
    """A copy of parameter set ``name`` with ``overrides`` applied.

    ``None`` overrides are ignored, so a notebook can pass its papermill
    parameters straight through. Relative ``data_dir``/``work_dir`` are resolved
    against the repository root, so notebooks run from any folder.

    >>> get_params("smoke", n_cases=10)["n_cases"]
    10
    """
    if name not in PARAMETER_SETS:
        raise ValueError(f"unknown parameter set {name!r}; choose one of {sorted(PARAMETER_SETS)}")
    return _layered(name, PARAMETER_SETS[name], overrides)


def _layered(name: str, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    params = dict(base)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for set {name!r}; valid: {sorted(params)}")
    params.update({k: v for k, v in overrides.items() if v is not None})
    params["set"] = name
    root = project_root()
    for key in ("data_dir", "work_dir", "cohort"):
        if key == "cohort" and params[key] == "synthetic":
            continue
        path = Path(params[key]).expanduser()
        params[key] = path if path.is_absolute() else (root / path).resolve()
    return params


def real_data_params(name: str = DEFAULT_SET, **overrides: Any) -> dict[str, Any]:
    """Set ``name`` with its real-data (``REAL_DATA``) settings and then ``overrides``.

    >>> real_data_params("smoke")["modalities"]
    ('T1',)
    """
    if name not in REAL_DATA:
        raise ValueError(f"no real-data settings for set {name!r}; choose one of {sorted(REAL_DATA)}")
    return _layered(name, {**PARAMETER_SETS[name], **REAL_DATA[name]}, overrides)
