"""The named parameter sets: the one place where the book's settings live.

``Params`` holds one set's values: frozen and typed, one field per setting, its defaults the
MSTT-199 paper's. The named sets are tables of changes to those defaults. ``smoke`` is the
default: the best recipe a 2-core CPU trains in its share of the book's few minutes (the models
learn, at a small budget). ``cpu`` is the same recipe with 30 minutes of training per cohort, spent as
measured best on each: one 6-minute run per fold on the synthetic cohort, the mean of four
1.5-minute runs on the real data. ``paper`` carries the paper's settings and is meant for a GPU;
``best`` is the recipe beyond the paper (foreground oversampling, Dice + BCE, a decaying learning
rate, the best checkpoint, post-processing chosen by cross-validation, the folds' ensemble) at
the paper's full size, also for a GPU. Notebooks take a set's name as a papermill parameter and
may override single values; an unknown name or key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "Params",
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
# ``norm``'s values: one normalisation for every run, or "both" alternating over the members.
NORMS = ("batch", "instance", "both")


@dataclass(frozen=True)
class Params:
    """One parameter set's values; the defaults are the paper's (the ``paper`` set).

    Relative ``data_dir``, ``work_dir`` and ``cohort`` folders are resolved against the
    repository root, so notebooks run from any folder; lists (papermill passes lists) become
    tuples. ``replace`` makes a changed copy, checked the same way.
    """

    # Cohort: "synthetic" (the phantom cohort, data_dir/synthetic-v<n>) or a folder (project or nnU-Net).
    cohort: str | Path = "synthetic"
    n_cases: int = 199  # cases of the synthetic cohort
    seed: int = 0  # the seed of the phantom cohort, registration, held-out cases and training
    train_seed: int | None = None  # training's own seed (None: seed), leaving the cohort as it is
    phantom_matrix: int = 192  # in-plane voxels of the synthetic images
    phantom_slices: int = 20  # slices of the synthetic images
    modalities: tuple[str, ...] = ("T1", "T2")  # the input images of each case
    skip_bad_cases: bool = False  # leave out a case that fails its checks (listed) instead of stopping
    data_dir: Path = Path("data")  # where the synthetic cohort is generated
    work_dir: Path = Path("work")  # where the stages keep their files
    workers: int = 2  # processes for per-case stages (registration, preprocessing)
    cases_per_tissue: int | None = None  # later stages work on this many cases per tissue (None: every case)
    registration: str = "rigid"  # of T1 onto T2 (paper: ANTs; rigid): "rigid", "affine" or "syn"
    registration_min_mi: float = 0.3  # quality threshold: Mattes mutual information after registration
    spacing_mm: float = 1.0  # the preprocessing grid (paper, section 4.2)
    low_percentile: float = 0.05  # intensities clipped below this percentile, then scaled
    high_percentile: float = 99.95  # intensities clipped above this percentile, then scaled
    image_size: int = 256  # the side of a 2.5D training sample in pixels
    min_tumour_voxels: int = 100  # training keeps slices with more tumour voxels than this
    models: tuple[str, ...] = ("unet", "litemedsam")  # the models trained (paper, section 3)
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the folds trained (and evaluated) of the n_folds
    n_folds: int = 5  # cross-validation folds over patients
    fold_seed: int = 42  # the seed that deals the patients into folds
    epochs: int = 5  # training epochs (paper, Appendix A)
    batch_size: int = 16  # samples per optimizer step
    lr: float = 1e-4  # the (starting) learning rate
    loss: str = "bce"  # the paper's; "dice_bce" adds batch soft Dice, "slice_dice_bce" Dice per tumour slice
    encoder: str = "se_resnext50_32x4d"  # the U-Net's encoder (segmentation-models-pytorch)
    # The U-Net decoder's channels, deepest first; their number is the encoder stages used (smp's 5).
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    # U-Net encoder weights: "imagenet" (smp's download, cached), a local 3-channel file, or None (random).
    unet_weights: str | Path | None = "imagenet"
    first_conv: str = "tile"  # 6-channel first conv: "tile" (ImageNet filters, as smp) or "random" (authors)
    # The U-Net's normalisation layers: "batch" (smp's, the paper's), "instance" (nnU-Net's), or
    # "both": the runs averaged into a model (``members``) alternate the two, from BatchNorm.
    norm: str = "batch"
    # Runs averaged into each fold's model and the final model (pipeline.member_params), each
    # with its own training seed.
    members: int = 1
    litemedsam_weights: str | Path | None = None  # a local lite_medsam.pth
    augment: bool = True  # the paper's Appendix A augmentations (flips, rot90, intensity, blur, distortion)
    samples_per_epoch: int | None = None  # None: every training sample, every epoch
    val_samples: int | None = None  # validation samples scored after each epoch (None: every one)
    foreground_fraction: float | None = None  # None: tumour slices only (paper); p: tumour slice with prob. p
    schedule: str = "constant"  # the paper's constant rate, or "poly" (nnU-Net's decay)
    keep: str = "last"  # the last weights (the paper) or the "best" validation Dice
    train_minutes: float | None = None  # a wall-clock budget per run; sets the epochs (recorded in run.json)
    final_minutes: float | None = None  # each run's budget in the model on every case (None: as the folds)
    # Post-processing of the predicted mask: None, "largest" (largest connected component) or "auto".
    postprocess: str | None = None
    fold_scheme: str = "stratified"  # or "kfold": the authors' KFold(5, shuffle=True, random_state=42)
    device: str = "auto"  # CUDA when present, else the CPU
    tta: str = "paper"  # "paper" (identity, flips, rot90), "all8" (the authors' code) or "none"
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")  # the planes inference slices along
    # Validation cases scored per fold (None: all), or a number per model.
    eval_cases: int | dict[str, int] | None = None
    inference_batch_size: int = 16  # slices per forward pass at inference
    set: str = "paper"  # the named set these values came from

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list) and str(field.type).startswith("tuple"):
                object.__setattr__(self, field.name, tuple(value))
            number = str(field.type).split(" ")[0]
            if isinstance(value, str) and number in ("int", "float"):
                # YAML 1.1 (``-p lr 1e-4``) reads a number without a decimal point as text
                try:
                    object.__setattr__(self, field.name, int(value) if number == "int" else float(value))
                except ValueError:
                    raise ValueError(f"parameter {field.name} should be a number, got {value!r}") from None
        if self.norm not in NORMS:
            raise ValueError(f"parameter norm should be one of {', '.join(NORMS)}, got {self.norm!r}")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1:
            raise ValueError(
                f"parameter members should be a whole number of runs, 1 or more: {self.members!r}"
            )
        root = project_root()
        for key in ("data_dir", "work_dir", "cohort"):
            value = getattr(self, key)
            if key == "cohort" and value == "synthetic":
                continue
            path = Path(value).expanduser()
            object.__setattr__(self, key, path if path.is_absolute() else (root / path).resolve())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings a set or an override may change (every field but ``set``)."""
        return tuple(f.name for f in fields(cls) if f.name != "set")

    def replace(self, **changes: Any) -> Params:
        """A copy with ``changes`` (None is a value here, unlike ``get_params``'s overrides)."""
        _check_keys(self.set, changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every value by name, for JSON (``plans.json``, ``parameter_set.json``): paths as
        text, tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _check_keys(name: str, values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - set(Params.names()))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for set {name!r}; valid: {sorted(Params.names())}")


# Beyond the paper, after nnU-Net: tumour-free slices beside tumour slices, Dice + BCE,
# nnU-Net's poly decay from 1e-3, and the largest-component step where cross-validation
# shows that it helps. Chapter 8 compares it with the paper's recipe at equal budget: on the
# 29 real cases the two tied at 512 steps per fold and at 15-30 CPU-minutes on a 2 mm grid;
# at 3 mm and 160 steps the set's recipe was ahead on the bfloat16 CPUs (Wilcoxon p = 0.003 and,
# with Dice per tumour slice, 0.0003; benchmarks/results.md, chapter 8).
_RECIPE: dict[str, Any] = {
    "foreground_fraction": 0.5,
    # Soft Dice per tumour slice: batch Dice weighs tumours by size, and the small real tumours
    # were lost with longer training (benchmarks/results.md, 2026-12-06: +0.02-0.06 mean Dice on
    # both cohorts at the book's and at 15 CPU-minutes' budgets).
    "loss": "slice_dice_bce",
    "schedule": "poly",
    "lr": 1e-3,
    "postprocess": "auto",
}

# The paper's training recipe, to compare with another set's at that set's budget and grid.
PAPER_RECIPE: dict[str, Any] = {key: getattr(Params, key) for key in (*_RECIPE, "keep")}

# The default: what a 2-core CPU trains in its share of the book's minutes. The models
# learn, at a small budget (the book says so beside every number).
_SMOKE: dict[str, Any] = {
    **_RECIPE,
    "cases_per_tissue": 5,
    # All five folds: every case is scored once, five per tissue, so that chapters 6 and 7
    # have a mean per tissue and failures to classify (fold 0 alone scored one case per
    # tissue). About 2 minutes more of the book's build than fold 0 alone.
    "folds": (0, 1, 2, 3, 4),
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
    # Four encoder stages and a quarter of smp's decoder width: at 64-pixel crops the last
    # stage (512 channels at 2 x 2) and the wide decoder took most of a step. 2.4 times
    # faster per step in float32 on 2 cores (bench_decoder.py), and on the 29 real cases a
    # 5-fold CV Dice of 0.566 against 0.583 for smp's default (bench_cv_variants.py, one run
    # each, within the +-0.06 per fold of a single run). A 2-core CPU without native
    # bfloat16 trains in float32: a real-data fold took 1.85 min there with smp's decoder,
    # against 0.5-0.6 min on one with it, and 0.8-0.9 min with this one.
    "decoder_channels": (64, 32, 16, 8),
    "unet_weights": None,  # nothing can be downloaded in CI; "imagenet" where a network is
    "batch_size": 8,
    # x 256 samples / 8 = 256 optimizer steps, about 35 s per fold on 2 cores in float32. Over
    # the five folds (one run each, 2026-12-05): Dice 0.815 at 256 steps, 0.796 at 384.
    "epochs": 8,
    "samples_per_epoch": 256,
    "val_samples": 64,
    # Plane fusion, without flips and rot90: on chapter 8's five real-data fold models TTA
    # changed the mean Dice by 0.001 and cost 3.5 times the inference (bench_tta.py), time
    # that the folds' training needs more. The paper and best sets keep the paper's TTA.
    "tta": "none",
    "planes": ("axial", "coronal", "sagittal"),
    "eval_cases": None,
}

# Each named set: its changes to ``Params``' defaults (the paper's settings).
PARAMETER_SETS: dict[str, dict[str, Any]] = {
    "smoke": _SMOKE,
    # 30 minutes of training on a 2-core CPU, spent as measured best on each cohort: the smoke
    # recipe, grid and crops with the paper's TTA. On the synthetic cohort one run of 6 minutes
    # per fold: chapter 6's Table 2 0.893, against 0.868 for four runs of 1.5 minutes (per case
    # p = 0.0004) and smoke's 0.828; the book built with it, 0.898 (benchmarks/results.md,
    # 2026-12-07). The real-data layer (REAL_DATA below) spends the same minutes as four shorter
    # runs per fold.
    "cpu": {
        **_SMOKE,
        "train_minutes": 6.0,
        "tta": "paper",
    },
    # The paper's settings, for a GPU machine.
    "paper": {},
    # The recipe beyond the paper at the paper's size, for a GPU machine.
    "best": {
        **_RECIPE,
        "keep": "best",
        "epochs": 20,
        "samples_per_epoch": 4000,
    },
}


# The real-data chapter (notebook 08): the IBSI export of the TCIA Soft-tissue-Sarcoma
# collection, T1 only (3 input channels), no tissue labels, 5-fold cross-validation
# over its 29 patients. Applied on top of the set of the same name.
_REAL_SMOKE: dict[str, Any] = {
    "cohort": "../shared/data/sts-ibsi-t1",
    "modalities": ("T1",),
    "folds": (0, 1, 2, 3, 4),
    "cases_per_tissue": None,
    # A 3 mm grid: a 64-pixel crop then spans 192 mm, most of a thigh's cross-section, at the
    # 2 mm grid's cost per step, and inference has 2.25 times fewer voxels. 5-fold CV Dice
    # at 256 steps (bench_cv_variants.py, TTA none x 3 planes, float32, 2026-12-04): 0.636,
    # 0.626 and 0.623 for three seeds, against 0.568, 0.522 and 0.573 at 2 mm and 0.574 at
    # 2.5 mm. (Earlier runs found 3 mm worse: inference then skipped the padding that
    # training's crops had, mstt_lib.infer.)
    "spacing_mm": 3.0,
    "min_tumour_voxels": 11,  # the paper's 100 mm2 at 3 x 3 mm pixels
    # The runs averaged into a model (``members``: 4 in ``cpu``) alternate BatchNorm and
    # InstanceNorm: on these cases the two erred on different tumours (ten pairs of one of each
    # at 160 steps: 0.656, against 0.635-0.639 for pairs of one kind). On the synthetic cohort
    # InstanceNorm runs lose (0.66 against 0.76-0.78 for BatchNorm at 1.5 minutes each), so
    # the synthetic layers keep BatchNorm (benchmarks/results.md, 2026-12-05 and 2026-12-07).
    "norm": "both",
    # x 256 samples / 8 = 160 optimizer steps per fold: at 3 mm, three seeds gave a mean CV
    # Dice of 0.628 at 256 steps, 0.627 at 192, 0.627 at 160 (0.643, 0.611, 0.626) and
    # 0.606 at 128.
    "epochs": 5,
    "samples_per_epoch": 256,
    # the model on all 29 cases: its epochs follow from this budget (about 160 steps on 2
    # cores in float32, as many as a fold's)
    "final_minutes": 0.5,
}

REAL_DATA: dict[str, dict[str, Any]] = {
    "smoke": _REAL_SMOKE,
    # Each model the mean of four runs of 1.5 minutes (BatchNorm and InstanceNorm alternating,
    # ``norm``), the final model's runs as long. On the 29 real cases, four seeds: 5-fold CV Dice
    # 0.700-0.712 post-processed, against 0.683-0.704 for one run of 3 minutes per fold (15
    # CPU-minutes) and 0.705-0.709 for four of 3 minutes (60; benchmarks/results.md, 2026-12-06,
    # one torch thread per run): unlike the synthetic cohort, longer single runs did not help.
    "cpu": {**_REAL_SMOKE, "members": 4, "train_minutes": 1.5, "final_minutes": 1.5},
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
        "paper": "a pre-trained encoder; adaptation not stated",
        "paper set": "ImageNet filters tiled over the 6 channels, scaled by 3/6 (smp's own rule)",
        "authors' code": "a randomly initialised 6-channel convolution",
        "option": 'first_conv="random"',
    },
    {
        "setting": "ImageNet weights",
        "paper": "pre-trained (the dataset not named; the authors' code: ImageNet)",
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


def get_params(name: str = DEFAULT_SET, **overrides: Any) -> Params:
    """Parameter set ``name`` with ``overrides`` applied.

    ``None`` overrides are ignored, so a notebook can pass its papermill
    parameters straight through. Relative ``data_dir``/``work_dir`` are resolved
    against the repository root, so notebooks run from any folder.

    >>> get_params("smoke", n_cases=10).n_cases
    10
    """
    if name not in PARAMETER_SETS:
        raise ValueError(f"unknown parameter set {name!r}; choose one of {sorted(PARAMETER_SETS)}")
    return _layered(name, PARAMETER_SETS[name], overrides)


def _layered(name: str, base: dict[str, Any], overrides: dict[str, Any]) -> Params:
    _check_keys(name, overrides)
    return Params(**{**base, **{k: v for k, v in overrides.items() if v is not None}}, set=name)


def real_data_params(name: str = DEFAULT_SET, **overrides: Any) -> Params:
    """Set ``name`` with its real-data (``REAL_DATA``) settings and then ``overrides``.

    >>> real_data_params("smoke").modalities
    ('T1',)
    """
    if name not in REAL_DATA:
        raise ValueError(f"no real-data settings for set {name!r}; choose one of {sorted(REAL_DATA)}")
    return _layered(name, {**PARAMETER_SETS[name], **REAL_DATA[name]}, overrides)
