"""The named parameter sets: the one place where the book's settings live.

``smoke`` is the default: the best recipe a 2-core CPU trains in its share of the
book's few minutes (the models learn, at a small budget). ``paper`` carries the
MSTT-199 paper's settings and is meant for a GPU; ``best`` is the recipe beyond the
paper (foreground oversampling, Dice + BCE, a decaying learning rate, the best
checkpoint, post-processing chosen by cross-validation, the folds' ensemble) at the
paper's full size, also for a GPU. Notebooks take a set's name as a papermill parameter and may override
single values; an unknown name or key is an error that lists the valid ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "PARAMETER_SETS",
    "DEFAULT_SET",
    "REAL_DATA",
    "PAPER_DEVIATIONS",
    "PAPER_RECIPE",
    "get_params",
    "real_data_params",
    "project_root",
    "shared_data_dir",
]

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
    # U-Net encoder weights: "imagenet" (segmentation-models-pytorch's download, cached),
    # a local 3-channel ImageNet encoder file, or None (random initialisation).
    "unet_weights": "imagenet",
    # The 6-channel first convolution: "tile" (ImageNet filters tiled, as smp does) or
    # "random" (as the authors' code did).
    "first_conv": "tile",
    "litemedsam_weights": None,  # a local lite_medsam.pth
    "augment": True,
    "samples_per_epoch": None,  # None: every training sample, every epoch
    "val_samples": None,
    # None: tumour slices only (the paper); p: a tumour slice with probability p, else any slice.
    "foreground_fraction": None,
    "schedule": "constant",  # the paper's constant rate, or "poly" (nnU-Net's decay)
    "keep": "last",  # the last weights (the paper) or the "best" validation Dice
    "train_minutes": None,  # a wall-clock budget per run; sets the epochs (recorded in run.json)
    "final_minutes": None,  # the budget of the model trained on every case (None: as the folds)
    # Post-processing of the predicted mask: None, "largest" (largest connected component)
    # or "auto" (whichever cross-validation shows to help, nnU-Net's rule).
    "postprocess": None,
    "fold_scheme": "stratified",  # or "kfold": the authors' KFold(5, shuffle=True, random_state=42)
    "device": "auto",  # CUDA when present, else the CPU
    # Inference and evaluation (paper, sections 4.2-4.6).
    "tta": "paper",  # "paper" (identity, flips, rot90), "all8" (the authors' code) or "none"
    "planes": ("axial", "coronal", "sagittal"),
    "eval_cases": None,  # validation cases scored per fold (None: all), or a number per model
    "inference_batch_size": 16,
}

# Beyond the paper, after nnU-Net: tumour-free slices beside tumour slices, Dice + BCE,
# nnU-Net's poly decay from 1e-3, and the largest-component step where cross-validation
# shows that it helps. Chapter 8 compares it with the paper's recipe at equal budget; at the
# smoke budget on the 29 real cases the two did not differ (benchmarks/results.md).
_RECIPE: dict[str, Any] = {
    "foreground_fraction": 0.5,
    "loss": "dice_bce",
    "schedule": "poly",
    "lr": 1e-3,
    "postprocess": "auto",
}

# The paper's training recipe, to compare with another set's at that set's budget and grid.
PAPER_RECIPE: dict[str, Any] = {key: _COMMON[key] for key in (*_RECIPE, "keep")}

PARAMETER_SETS: dict[str, dict[str, Any]] = {
    # The default: what a 2-core CPU trains in its share of the book's minutes. The models
    # learn, at a small budget (the book says so beside every number).
    "smoke": {
        **_COMMON,
        **_RECIPE,
        "cases_per_tissue": 5,
        "folds": (0,),
        # LiteMedSAM needs about 2 s per 2.5D sample on 2 CPU cores: it cannot learn in the
        # smoke set's minutes, so the set trains and scores the U-Net only (chapter 4 still
        # builds LiteMedSAM and measures its speed); the paper and best sets train both.
        "models": ("unet",),
        # A 2 mm grid and 64-pixel training crops (128 mm): 8 times fewer voxels than the
        # paper's 1 mm, and 2.3 times fewer pixels per sample than 96-pixel crops, which
        # learned less in the same minutes (benchmarks/results.md). Inference runs on whole
        # slices whatever their size.
        "spacing_mm": 2.0,
        "image_size": 64,
        "min_tumour_voxels": 25,  # the paper's 100 mm2 at 2 x 2 mm pixels
        "encoder": "resnet18",
        "unet_weights": None,  # nothing can be downloaded in CI; "imagenet" where a network is
        "batch_size": 8,
        "epochs": 12,  # x 256 samples / 8 = 384 optimizer steps, about a minute on 2 cores
        "samples_per_epoch": 256,
        "val_samples": 64,
        "tta": "paper",
        "planes": ("axial", "coronal", "sagittal"),
        "eval_cases": None,
    },
    # The paper's settings, for a GPU machine.
    "paper": {**_COMMON},
    # The recipe beyond the paper at the paper's size, for a GPU machine.
    "best": {
        **_COMMON,
        **_RECIPE,
        "keep": "best",
        "epochs": 20,
        "samples_per_epoch": 4000,
    },
}


# The real-data chapter (notebook 08): the IBSI export of the TCIA Soft-tissue-Sarcoma
# collection, T1 only (3 input channels), no tissue labels, 5-fold cross-validation
# over its 29 patients. Applied on top of the set of the same name.
REAL_DATA: dict[str, dict[str, Any]] = {
    "smoke": {
        "cohort": "../shared/data/sts-ibsi-t1",
        "modalities": ("T1",),
        "folds": (0, 1, 2, 3, 4),
        "cases_per_tissue": None,
        "epochs": 16,  # x 256 samples / 8 = 512 optimizer steps per fold
        "samples_per_epoch": 256,
        "final_minutes": 1.0,  # the model on all 29 cases: its epochs follow from this budget
    },
    "paper": {
        "cohort": "../shared/data/sts-ibsi-t1",
        "modalities": ("T1",),
        "cases_per_tissue": None,
    },
    "best": {
        "cohort": "../shared/data/sts-ibsi-t1",
        "modalities": ("T1",),
        "cases_per_tissue": None,
    },
}


# Where the ``paper`` set departs from the paper's text, and what the authors' public code
# did instead (chapter 4 shows this table). The last column is the parameter that offers
# the authors' choice, where one exists.
PAPER_DEVIATIONS: tuple[dict[str, str], ...] = (
    {
        "setting": "folds",
        "paper": "5-fold cross-validation over patients",
        "paper set": "patient folds stratified by tissue, dealt round-robin (seed 42)",
        "authors' code": "KFold(5, shuffle=True, random_state=42), unstratified",
        "option": 'fold_scheme="kfold"',
    },
    {
        "setting": "U-Net first convolution (6 channels)",
        "paper": "ImageNet-pretrained encoder; adaptation not stated",
        "paper set": "ImageNet filters tiled over the 6 channels, scaled by 3/6 (smp's own rule)",
        "authors' code": "a randomly initialised 6-channel convolution",
        "option": 'first_conv="random"',
    },
    {
        "setting": "ImageNet weights",
        "paper": "ImageNet-pretrained",
        "paper set": 'unet_weights="imagenet": smp\'s hub download (cached), or a local file',
        "authors' code": "smp's download",
        "option": "unet_weights=/path/to/encoder.pth",
    },
    {
        "setting": "training slices",
        "paper": "more than 100 tumour voxels",
        "paper set": "more than 100 tumour voxels",
        "authors' code": "U-Net script: any tumour voxel; LiteMedSAM script: more than 100",
        "option": "min_tumour_voxels=0",
    },
    {
        "setting": "inference input size",
        "paper": "resized to 256 x 256",
        "paper set": "U-Net: each slice whole, padded to a multiple of 32; LiteMedSAM: resized to 256",
        "authors' code": "resized to 256 x 256 and back",
        "option": "",
    },
    {
        "setting": "test-time augmentation",
        "paper": "horizontal flip, vertical flip, rot90",
        "paper set": 'the same ("paper")',
        "authors' code": "all 8 combinations of the three (external evaluation)",
        "option": 'tta="all8"',
    },
    {
        "setting": "Dice grid",
        "paper": "not stated",
        "paper set": "each case's native grid (and dice_iso on the 1 mm grid)",
        "authors' code": "the 1 mm isotropic grid",
        "option": "the dice_iso column",
    },
    {
        "setting": "LiteMedSAM with 6 channels",
        "paper": "not stated",
        "paper set": "a 7 x 7 convolution maps 6 channels to 3 before the image encoder",
        "authors' code": "the same",
        "option": "",
    },
)


def project_root() -> Path:
    """The repository root (where ``_config.yml`` lives), or the working folder."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "mstt_lib").is_dir():
            return folder
    return here


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$MSTT_SHARED_DATA``, else ``<project root>/../shared/data``."""
    env = os.environ.get("MSTT_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"


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
