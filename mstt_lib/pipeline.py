"""The pipeline layer: a parameter set's stages, where each keeps its files, and the runs over them.

A ``Params`` (``mstt_lib.params``) names everything; this module turns it into each stage's
settings and folder and runs the stages in order, each only when its files are missing, so any
notebook can be rerun on its own. Stages hand over files: the cohort (``data/synthetic-v<n>``
or the user's folder), the registered cohort (``<work_dir>/registration/<cohort>-<transform>``),
the slice cache (``<work_dir>/cache/<hash>``), the training runs
(``<work_dir>/runs/<cohort>/<model>-fold<k>-<hash>``, ``<model>-all-<hash>`` for the run on every
case, ``<model>-ensemble-<hash>`` for the folds' ensemble) and the scored predictions
(``<work_dir>/evaluation/<cohort>/...``). The hashes cover the settings and inputs a folder
depends on, so changed settings never reuse an old folder. The book's notebooks, ``mstt-book
grid`` and ``mstt_lib.launch`` call it; the stages themselves know no parameter set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mstt_lib.cohort import NNUNET_METADATA, TISSUES, CaseProblem, load_cohort, read_cohort
from mstt_lib.io import short_digest
from mstt_lib.params import PAPER_RECIPE, Params
from mstt_lib.phantom import TRUTH_FILE, PhantomSettings, generate_cohort

__all__ = [
    "train_grid",
    "external_results",
    "conversion_check",
    "predicted_dice",
    "splits",
    "train_settings",
    "run_dir",
    "train_run",
    "run_dirs",
    "caption",
    "paper_recipe",
    "fold_ensemble",
    "evaluation_dir",
    "cross_validation_results",
    "final_run",
    "cohort_statistics",
    "cohort_dir",
    "phantom_settings",
    "open_cohort",
    "select_cases",
    "selected_cases",
    "phantom_truth",
    "registration_settings",
    "registration_dir",
    "registered_cohort",
    "cache_settings",
    "slice_cache",
]


_CHECKED: dict[tuple, tuple[pd.DataFrame, list[CaseProblem]]] = {}


def phantom_settings(params: Params) -> PhantomSettings:
    """What shapes the set's synthetic cohort."""
    return PhantomSettings(
        n_cases=params.n_cases, seed=params.seed, matrix=params.phantom_matrix, n_slices=params.phantom_slices
    )


def cohort_dir(params: Params) -> Path:
    """Where the set's cohort lives: ``<data_dir>/synthetic-v<generator version>`` or the given folder.

    The synthetic folder is named by what made it, not by the set: the sets share the default
    cohort (and its registration and slice cache), and other phantom settings (a ``-<hash>``
    suffix) or a new generator get their own folder, so a cohort is never remade in place
    under registrations of the old one.
    """
    if params.cohort == "synthetic":
        settings = phantom_settings(params)
        name = f"synthetic-v{settings.version}"
        if settings != PhantomSettings():
            name += f"-{short_digest(dataclasses.asdict(settings), 8)}"
        return params.data_dir / name
    return Path(params.cohort).expanduser().resolve()


def open_cohort(params: Params, progress: bool = True) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Validated case table of the set's cohort, generating the synthetic one if needed.

    Returns the good cases and the skipped ones (empty unless
    ``params.skip_bad_cases``; otherwise a bad case raises ``CohortError``).
    """
    root = cohort_dir(params)
    if params.cohort == "synthetic":
        generate_cohort(root, phantom_settings(params), progress=progress)
    # Checking every file of 199 cases takes seconds; a notebook asks several times. The times
    # of the table files and of the case folders (cases added or removed) tell a changed cohort
    # within a kernel, in every layout (a label corrected in nnU-Net's mstt_cases.csv included);
    # across kernels, the record of cohorts that passed, by their files' sizes and times.
    markers = ("cohort.csv", "dataset.json", NNUNET_METADATA, "labelsTr", "imagesTr", "imagesTs")
    stamp = (
        tuple(p.stat().st_mtime_ns if p.exists() else None for p in (root, *(root / n for n in markers)))
        if root.exists()
        else None
    )
    key = (str(root), params.modalities, params.skip_bad_cases, stamp)
    if key not in _CHECKED or stamp is None:
        _CHECKED[key] = load_cohort(
            root,
            modalities=params.modalities,
            skip_bad=params.skip_bad_cases,
            progress=progress,
            record=params.work_dir / "checked_cohorts.json",
        )
    cases, problems = _CHECKED[key]
    return cases.copy(), list(problems)


def select_cases(cases: pd.DataFrame, per_tissue: int | None) -> pd.DataFrame:
    """The first ``per_tissue`` cases of each tissue by case id (all when None).

    Cases without a recorded tissue are kept up to the same number.
    """
    if per_tissue is None:
        return cases.reset_index(drop=True)
    ordered = cases.sort_values("case_id")
    picked = ordered.groupby(ordered["tissue"].fillna("unknown"), sort=False).head(per_tissue)
    order = {t: i for i, t in enumerate(TISSUES)}
    key = picked["tissue"].map(order).fillna(len(TISSUES))
    return (
        picked.assign(_order=key)
        .sort_values(["_order", "case_id"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def selected_cases(params: Params, progress: bool = True) -> pd.DataFrame:
    """The checked cases the later stages work on: ``cases_per_tissue`` of each tissue."""
    cases, _ = open_cohort(params, progress=progress)
    return select_cases(cases, params.cases_per_tissue)


def phantom_truth(params: Params) -> pd.DataFrame | None:
    """The synthetic cohort's recorded truth (misalignment, volumes), or None for real data."""
    path = cohort_dir(params) / TRUTH_FILE
    return pd.read_csv(path) if path.is_file() else None


def registration_settings(params: Params):
    from mstt_lib.registration import RegistrationSettings

    return RegistrationSettings(
        transform=params.registration,
        seed=params.seed,
        min_mutual_information=params.registration_min_mi,
    )


def registration_dir(params: Params) -> Path:
    """``<work_dir>/registration/<cohort>-<transform>-<settings hash>``."""
    return (
        params.work_dir / "registration" / f"{cohort_dir(params).name}-{registration_settings(params).key()}"
    )


def registered_cohort(params: Params, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The set's cases registered T1 onto T2 (registering those not done yet).

    Returns the registered case table (only cases whose registration passed) and the
    quality table of every selected case. A T1-only cohort is passed through unchanged.
    """
    from mstt_lib.registration import register_cohort

    cases = selected_cases(params, progress)
    if "T2" not in params.modalities or "T1" not in params.modalities:
        return cases.assign(native_mask=cases["mask"]), pd.DataFrame(
            {"case_id": cases["case_id"], "status": "ok"}
        )
    settings = registration_settings(params)
    folder = registration_dir(params)
    quality = register_cohort(
        cases, folder, settings, truth=phantom_truth(params), workers=params.workers, progress=progress
    )
    registered, _ = read_cohort(folder)
    native = cases.set_index("case_id")["mask"]
    registered["native_mask"] = registered["case_id"].map(native)
    return registered, quality


def cache_settings(params: Params):
    from mstt_lib.slices import CacheSettings

    return CacheSettings(
        modalities=params.modalities,
        spacing_mm=float(params.spacing_mm),
        low_percentile=float(params.low_percentile),
        high_percentile=float(params.high_percentile),
    )


def slice_cache(params: Params, progress: bool = True):
    """The set's slice cache (``SliceCache``), built from the registered cohort if needed."""
    from mstt_lib.slices import SliceCache, build_cache

    registered, _ = registered_cohort(params, progress=progress)
    folder = build_cache(
        registered,
        params.work_dir / "cache",
        cache_settings(params),
        workers=params.workers,
        progress=progress,
        skip_bad=params.skip_bad_cases,
    )
    return SliceCache(folder)


def splits(params: Params, cases: pd.DataFrame) -> list[dict[str, list[str]]]:
    """The folds of these cases: ``<work_dir>/splits/<cohort>-<cases hash>.json``, made once."""

    from mstt_lib.folds import ensure_splits

    digest = short_digest(sorted(cases["case_id"]))
    name = f"{cohort_dir(params).name}-{len(cases)}cases-{digest}{_folds_suffix(params)}.json"
    return ensure_splits(
        cases, params.work_dir / "splits" / name, params.n_folds, params.fold_seed, params.fold_scheme
    )


def _folds_suffix(params: Params) -> str:
    """How the folds were dealt, where it is not the default (5 stratified folds, seed 42): in the
    splits file's name and in every fold run's, so that other folds never reuse a run that
    trained on their validation cases."""
    suffix = "" if params.fold_scheme == "stratified" else f"-{params.fold_scheme}"
    if (params.n_folds, params.fold_seed) != (5, 42):
        suffix += f"-{params.n_folds}folds-seed{params.fold_seed}"
    return suffix


def train_settings(params: Params, model: str, fold: int | None):
    """The ``TrainSettings`` of one (model, fold) run of the set."""
    from mstt_lib.devices import resolve_device
    from mstt_lib.train import TrainSettings

    weights = params.unet_weights if model == "unet" else params.litemedsam_weights
    # Loader processes feed a GPU; on a CPU they would take the model's cores.
    on_gpu = resolve_device(params.device).type == "cuda"
    return TrainSettings(
        model=model,
        fold=None if fold is None else int(fold),
        epochs=int(params.epochs),
        batch_size=int(params.batch_size),
        lr=float(params.lr),
        encoder=params.encoder,
        decoder_channels=tuple(int(c) for c in params.decoder_channels),
        weights=None if weights is None else str(weights),
        loss=params.loss,
        # LiteMedSAM's image encoder takes 256 x 256 only, whatever the set's U-Net crops.
        image_size=256 if model == "litemedsam" else int(params.image_size),
        min_tumour_voxels=int(params.min_tumour_voxels),
        augment=bool(params.augment),
        samples_per_epoch=params.samples_per_epoch,
        val_samples=params.val_samples,
        seed=int(params.seed if params.train_seed is None else params.train_seed),
        device=params.device,
        loader_workers=int(params.workers) if on_gpu else 0,
        foreground_fraction=params.foreground_fraction,
        schedule=params.schedule,
        keep=params.keep,
        train_minutes=params.train_minutes,
        first_conv=params.first_conv,
        norm="batch" if params.norm == "both" else params.norm,  # "both": its first member's
    )


def run_dir(params: Params, model: str, fold: int | None, cache) -> Path:
    """``<work_dir>/runs/<cohort>/<model>-fold<k>-<hash>``: one folder per run.

    The hash covers the training settings and the slice cache the run reads, so changed
    data or settings never resume an old run. The number of epochs is left out only at a
    constant learning rate without a minutes budget, where more epochs continue the run; a
    decaying schedule is fixed by its length, so another length is another run.
    """
    from dataclasses import asdict

    from mstt_lib.models import DECODER_CHANNELS

    settings = asdict(train_settings(params, model, fold))
    continued = _epochs_continue(settings)
    epochs = settings.pop("epochs") if continued else None
    if settings["decoder_channels"] == DECODER_CHANNELS:  # runs made before it was a setting keep their names
        settings.pop("decoder_channels")
    if settings["norm"] == "batch":  # likewise
        settings.pop("norm")
    settings["cache"] = Path(cache.folder).name
    if fold is not None and _folds_suffix(params):  # default folds: the names runs always had
        settings["folds"] = _folds_suffix(params)
    name = f"{model}-all" if fold is None else f"{model}-fold{fold}"
    folder = params.work_dir / "runs" / cohort_dir(params).name / f"{name}-{short_digest(settings)}"
    weights = settings["weights"]
    if weights and Path(weights).is_file():  # a local file replaced at the same path: another start
        stat = Path(weights).stat()
        named_before = folder  # runs trained before the file's identity joined the name
        folder = folder.with_name(
            f"{name}-{short_digest({**settings, 'weights_file': [stat.st_size, stat.st_mtime_ns]})}"
        )
        if not folder.exists() and _started_from(named_before, Path(weights)):
            folder = named_before
    if continued and _trained_epochs(folder) > epochs:
        # The continued run went past the epochs asked (-p epochs 8, then the set's 5): weights
        # cannot go back, so fewer epochs are a run of their own, named with its epochs.
        folder = folder.with_name(f"{name}-{short_digest({**settings, 'epochs': epochs})}")
    return folder


def _started_from(folder: Path, weights: Path) -> bool:
    """Whether the run in ``folder`` recorded ``weights``' bytes (SHA-256) as its start."""
    import json

    from mstt_lib.plans import file_sha256

    record = folder / "run.json"
    if not record.is_file():
        return False
    return json.loads(record.read_text()).get("weights_sha256") == file_sha256(weights)


def _trained_epochs(folder: Path) -> int:
    """The epochs a run has trained so far: its record's, or its history's rows if more (the
    history is written with every checkpoint: a continuation stopped after more epochs than its
    last finish counts them); 0 for none."""
    import json

    history, record = folder / "history.csv", folder / "run.json"
    rows = len(history.read_text().strip().splitlines()) - 1 if history.is_file() else 0  # a header
    finished = json.loads(record.read_text()).get("epochs", 0) if record.is_file() else 0
    return max(0, rows, int(finished))


def train_run(params: Params, model: str, fold: int | None, cache=None, progress: bool = True) -> Path:
    """Train (or resume, or find finished) one (model, fold) run of the set; its folder.

    Fold None is the run on every case (``final_run``). The folder also records the
    parameter set (``parameter_set.json``) that the book's captions name.
    """
    from mstt_lib.distributed import current_world
    from mstt_lib.provenance import record_parameter_set
    from mstt_lib.train import train

    main = current_world().main  # among torchrun's processes only rank 0 writes (mstt_lib.distributed)
    cache = cache or slice_cache(params, progress=progress)
    folder = run_dir(params, model, fold, cache)
    if _needs_training(folder, train_settings(params, model, fold)):
        registered, _ = registered_cohort(params, progress=progress)
        cases = registered[registered["case_id"].isin(cache.case_ids)]
        if fold is None:
            train_cases, val_cases = sorted(cases["case_id"]), []
        else:
            folds = splits(params, cases)
            train_cases, val_cases = folds[fold]["train"], folds[fold]["val"]
        if params.keep == "best":
            # The checkpoint is chosen on cases held out of training, never on the fold's test
            # cases: otherwise cross-validation would score the checkpoint it picked with them.
            train_cases, val_cases = _hold_out(train_cases, params.seed)
        settings = train_settings(params, model, fold)
        if main:
            _record_plans(params, folder, cache, settings.image_size, train_cases, val_cases)
        train(settings, cache, train_cases, val_cases, folder, progress=progress)
    elif main and not (folder / "plans.json").is_file():  # a run trained before runs recorded their plans
        registered, _ = registered_cohort(params, progress=progress)
        ids = sorted(registered.loc[registered["case_id"].isin(cache.case_ids), "case_id"])
        _record_plans(params, folder, cache, train_settings(params, model, fold).image_size, ids, [])
    if main:
        record_parameter_set(folder, params)
    return folder


def _record_plans(params: Params, folder: Path, cache, image_size: int, train_cases, val_cases) -> None:
    """``plans.json`` (``mstt_lib.plans``): what a predictor needs to treat new cases as this run's.

    The data fingerprint hashes the cohort's own files (not the registered copies) of the cases
    the run learned from; digests are kept in ``<work_dir>/file_hashes.json`` by size and time.
    """
    from mstt_lib.plans import data_fingerprint, write_plans

    registered = {"T1", "T2"} <= set(params.modalities)
    used = set(train_cases) | set(val_cases)
    originals = selected_cases(params, progress=False)
    fingerprint = data_fingerprint(
        originals[originals["case_id"].isin(used)], cache_file=params.work_dir / "file_hashes.json"
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_plans(
        folder,
        parameter_set=params.to_dict(),
        registration=registration_settings(params) if registered else None,
        preprocessing={**cache.manifest["settings"], "channels": cache.manifest["channels"]},
        image_size=image_size,
        data=fingerprint,
        train_cases=train_cases,
        val_cases=val_cases,
    )


def member_params(params: Params) -> list[Params]:
    """The runs averaged into each of the set's models (``members``): the set itself, then the
    training seed advancing run by run, or with ``norm="both"`` the normalisation alternating
    between BatchNorm and InstanceNorm and the seed advancing every two (the cohort's seed is
    left alone: it would make another synthetic cohort).

    Why both: in cross-validation on the 29 real cases (160 steps per run, README), the two
    normalisations erred on different cases, so a BatchNorm and an InstanceNorm run averaged
    gained 0.02 over two runs of one kind, and ten runs of both gave 0.675 against 0.62 for one.
    On the synthetic cohort InstanceNorm runs were worse, and the average with them too.
    """
    seed = params.seed if params.train_seed is None else params.train_seed
    if params.members == 1:
        return [params]
    if params.norm == "both":
        return [
            params.replace(members=1, train_seed=seed + i // 2, norm=("batch", "instance")[i % 2])
            for i in range(params.members)
        ]
    return [params.replace(members=1, train_seed=seed + i) for i in range(params.members)]


def train_grid(params: Params, cache=None, progress: bool = True) -> tuple[list[Path], pd.DataFrame]:
    """Train (or resume, or find) every (model, fold) run of the set: their folders, and one
    per-epoch history table with ``model``, ``fold`` and ``run`` columns (chapter 4)."""
    cache = cache or slice_cache(params, progress=progress)
    runs, histories = [], []
    for name in params.models:
        for fold in params.folds:
            for member in member_params(params):
                folder = train_run(member, name, fold, cache, progress=progress)
                runs.append(folder)
                history = pd.read_csv(folder / "history.csv")
                histories.append(history.assign(model=name, fold=fold, run=folder.name))
    return runs, pd.concat(histories, ignore_index=True)


def external_results(params: Params, external_cohort: str | Path, progress: bool = True) -> pd.DataFrame:
    """Each model's fold runs (every member), averaged, scored on an external cohort (``domain`` "external").

    Predictions and scores go to ``<work_dir>/evaluation/<cohort>/external-<model>-<hash>``,
    the hash naming the runs and their weights, the external cohort, the TTA and the planes.
    """
    from mstt_lib.ensemble import weights_stamp
    from mstt_lib.evaluate import evaluate_external

    slice_cache(params, progress=progress)  # built here, with its progress bar, if missing
    scores = []
    for name in params.models:
        runs = run_dirs(params, [name])  # every fold's members
        what = [[r.name for r in runs], str(Path(external_cohort).resolve()), params.tta, params.planes]
        what.append(weights_stamp(runs))  # a run continued in its folder predicts anew
        out = (
            runs[0].parent.parent.parent
            / "evaluation"
            / runs[0].parent.name
            / f"external-{name}-{short_digest(what)}"
        )
        external = evaluate_external(runs, external_cohort, out, params.tta, params.planes, progress=progress)
        scores.append(external.assign(model=name, domain="external"))
    return pd.concat(scores, ignore_index=True)


def conversion_check(converted: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """Masks converted from DICOM (``dicom.convert_collection``) against the cohort's masks of
    the same cases: whether the grids agree (``geometry.same_grid``: shape and affine) and,
    where they do, the Dice."""
    from mstt_lib.geometry import same_grid
    from mstt_lib.io import load_nifti, read_volume
    from mstt_lib.metrics import dice

    reference = cases.set_index("case_id")["mask"]
    rows = []
    for row in converted.itertuples():
        ours, theirs = (load_nifti(path, row.case_id) for path in (row.mask, reference[row.case_id]))
        same = same_grid(ours.shape, ours.affine, theirs.shape, theirs.affine)
        rows.append(
            {
                "case_id": row.case_id,
                "same grid": same,
                "Dice against the IBSI mask": (
                    dice(read_volume(ours, row.case_id) > 0, read_volume(theirs, row.case_id) > 0)
                    if same
                    else None
                ),
            }
        )
    return pd.DataFrame(rows)


def predicted_dice(status: pd.DataFrame, predictions: Path, masks: dict[str, str | Path]) -> pd.DataFrame:
    """``mstt-predict``'s status table with each prediction's Dice against its case's mask."""
    from mstt_lib.metrics import dice
    from mstt_lib.viz import load_mask

    scores = [
        dice(load_mask(Path(predictions) / f"{c}.nii.gz", c), load_mask(masks[c], c))
        for c in status["case_id"]
    ]
    return status.assign(dice=scores)


def _epochs_continue(settings: dict[str, Any]) -> bool:
    """Whether more epochs continue a run (constant rate, no minutes budget), as ``train`` allows."""
    return settings["schedule"] == "constant" and settings["train_minutes"] is None


def _needs_training(folder: Path, settings) -> bool:
    """No final weights yet, or a continuable run asked for more epochs than it has trained."""
    import json

    if not (folder / "model.pt").is_file():
        return True
    record = folder / "run.json"
    if not (_epochs_continue(vars(settings)) and record.is_file()):
        return False
    return json.loads(record.read_text()).get("epochs", settings.epochs) < settings.epochs


def _hold_out(case_ids: list[str], seed: int, fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """(training, internal validation): a seeded fifth of the cases held out for checkpoint choice."""
    import numpy as np

    ordered = sorted(case_ids)
    held = set(np.random.default_rng(seed).permutation(ordered)[: max(1, round(fraction * len(ordered)))])
    return [c for c in ordered if c not in held], sorted(held)


def evaluation_dir(params: Params, model: str, fold: int, cache) -> Path:
    """``<work_dir>/evaluation/<cohort>/<run>-<tta>-<planes>``: predictions and metrics.csv."""
    run = run_dir(params, model, fold, cache)
    planes = "".join(p[0] for p in params.planes)
    return params.work_dir / "evaluation" / run.parent.name / f"{run.name}-{params.tta}-{planes}"


def cross_validation_results(params: Params | Sequence[Params], progress: bool = True) -> pd.DataFrame:
    """Per-case metrics of every (model, fold) run of the set on its validation cases.

    Trains the runs that are missing and scores the cases not scored yet (both resume).
    One row per (model, case) with ``fold``, ``tissue``, ``site`` and the files
    ``prediction`` and ``native_mask``; the layout of ``mstt_lib.evaluate``'s ``metrics.csv``.

    Several variants of a set (other seeds, another ``norm``) are scored as one model: each
    fold's runs of every variant averaged, as ``mstt-predict`` averages an ensemble (nnU-Net
    ensembles its configurations this way). They share the work folder, the folds and the
    slice cache; the first variant's inference settings score the average. A set with
    ``members`` above 1 is scored as its members averaged (``member_params``).
    """
    from mstt_lib.devices import resolve_device
    from mstt_lib.evaluate import evaluate_run

    variants = member_params(params) if isinstance(params, Params) else list(params)
    if not variants:
        raise ValueError("give a parameter set, or a list of its variants to average")
    params = variants[0]
    cache = slice_cache(params, progress=progress)
    for variant in variants[1:]:
        if variant.work_dir != params.work_dir:
            raise ValueError("the variants to average should share the work folder")
        # settings first: a variant on another grid is refused before its cache is built
        if (
            cache_settings(variant) != cache_settings(params)
            or slice_cache(variant, progress=False).folder != cache.folder
        ):
            raise ValueError(
                "the variants read other slice caches (grid, crop or images): their models cannot be averaged"
            )
    registered, _ = registered_cohort(params, progress=progress)
    cases = registered[registered["case_id"].isin(cache.case_ids)]
    folds = splits(params, cases)
    if any(splits(v, cases) != folds for v in variants[1:]):
        raise ValueError("the variants to average should share the folds")
    results = []
    for name in params.models:
        for fold in params.folds:
            runs = [train_run(v, name, fold, cache, progress=progress) for v in variants]
            predictions = evaluation_dir(params, name, fold, cache)
            if len(runs) > 1:
                average = f"{name}-fold{fold}-average-{short_digest([r.name for r in runs])}"
                predictions = predictions.with_name(predictions.name.replace(runs[0].name, average))
            val = cases[cases["case_id"].isin(folds[fold]["val"])].sort_values("case_id")
            limit = params.eval_cases
            limit = limit.get(name) if isinstance(limit, dict) else limit
            if limit is not None:
                val = val.head(limit)
            scores = evaluate_run(
                runs,
                cache,
                val,
                predictions,
                params.tta,
                params.planes,
                params.inference_batch_size,
                device=resolve_device(params.device),
                progress=progress,
            )
            results.append(
                scores.assign(
                    model=name,
                    fold=fold,
                    prediction=[str(predictions / f"{c}.nii.gz") for c in scores["case_id"]],
                )
            )
    results = pd.concat(results, ignore_index=True)
    return results.merge(cases[["case_id", "tissue", "site", "native_mask"]], on="case_id")


def final_run(params: Params, model: str, postprocessing: dict | None = None, progress: bool = True) -> Path:
    """The model trained on every case of the set (no validation cases), for new cases.

    ``<work_dir>/runs/<cohort>/<model>-all-<hash>``, trained once (resumes), in the
    layout ``mstt-predict`` reads. Its training settings are the set's, with the
    ``final_minutes`` budget when one is set; ``fold`` is None. With ``members`` above 1, each
    member is such a run and the model is an ensemble folder beside them,
    ``<model>-all-ensemble-<hash>``, that lists them. ``postprocessing``, the decision that
    ``fold_ensemble`` recorded for the same recipe's fold runs, is stored in the folder (and
    in each member, so that any of them used alone is thresholded the same way), so that
    ``mstt-predict`` thresholds its masks as cross-validation chose (a run on all cases has
    no validation cases to choose on).
    """
    from mstt_lib.postprocess import write_choice

    if params.final_minutes is not None:
        params = params.replace(train_minutes=params.final_minutes)
    runs = [train_run(member, model, None, progress=progress) for member in member_params(params)]
    folder = runs[0] if len(runs) == 1 else _write_ensemble(runs, f"{model}-all-ensemble")
    if postprocessing is not None:
        chosen_on = "the parameter set"  # fixed there, unless it carries cross-validation's evidence
        if "mean_dice_by_candidate" in postprocessing:
            chosen_on = "the cross-validation of the set's fold runs"
        for target in dict.fromkeys([*runs, folder]):
            write_choice(target, {**postprocessing, "chosen_on": chosen_on})
    return folder


def _write_ensemble(runs: list[Path], prefix: str) -> Path:
    """An ensemble folder beside ``runs`` whose ``ensemble.json`` lists them (``mstt_lib.ensemble``)."""
    import json

    from mstt_lib.io import atomic_path

    folder = runs[0].parent / f"{prefix}-{short_digest([r.name for r in runs])}"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "ensemble.json") as tmp:
        tmp.write_text(json.dumps({"runs": [r.name for r in runs]}, indent=1))
    return folder


def run_dirs(params: Params, models=None) -> list[Path]:
    """The run folders of the set's (model, fold) grid, every member (trained or not)."""
    cache = slice_cache(params, progress=False)
    return [
        run_dir(member, model, fold, cache)
        for model in (models or params.models)
        for fold in params.folds
        for member in member_params(params)
    ]


def caption(params: Params, models=None, extra: str = "") -> str:
    """The provenance line of a table or figure made from the set's cross-validation runs."""
    from mstt_lib.provenance import caption as provenance_caption

    inference = f"TTA {params.tta} over {len(params.planes)} plane(s)"
    if params.members > 1:
        inference = f"each fold's model the mean of {params.members} runs, {inference}"
    return provenance_caption(params, run_dirs(params, models), ", ".join(p for p in (inference, extra) if p))


def paper_recipe(params: Params) -> Params:
    """The set with the paper's training recipe (tumour slices only, BCE, constant rate 1e-4,
    last weights, no post-processing) at the set's own grid, budget and weights."""
    return params.replace(**PAPER_RECIPE)


def fold_ensemble(params: Params, model: str, results: pd.DataFrame) -> Path:
    """The set's fold runs of ``model`` as one ensemble folder that ``mstt-predict -r`` takes.

    ``<work_dir>/runs/<cohort>/<model>-ensemble-<hash>/``: ``ensemble.json`` lists the
    fold runs, every member of each (folder names beside it), and ``postprocessing.json``
    the threshold and step chosen by nnU-Net's rule on the cross-validation ``results`` of
    those runs (``postprocess``: ``"auto"``; ``postprocess.choose_from_results``), or the
    set's fixed choice.
    """
    from mstt_lib.postprocess import choose_from_results, write_choice

    folder = _write_ensemble(run_dirs(params, [model]), f"{model}-ensemble")
    scored = results[results["model"] == model] if "model" in results else results
    if params.postprocess == "auto":
        decision = choose_from_results(scored)
    else:
        kind = params.postprocess or "none"
        decision = {"postprocessing": kind, "threshold": 0.5, "rule": "fixed by the parameter set"}
    write_choice(folder, decision)
    return folder


def cohort_statistics(params: Params, cases: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """``analysis.tumour_statistics`` of the cases, kept in ``<work_dir>/statistics/``.

    The file is named by a hash of the cases' files (paths, sizes, times), so new data
    is measured again.
    """
    import os

    from mstt_lib.analysis import tumour_statistics
    from mstt_lib.io import atomic_path

    stamp = [
        (row["case_id"], path, os.stat(path).st_size, os.stat(path).st_mtime_ns)
        for row in cases.to_dict("records")
        for path in (row.get("t1"), row.get("t2"), row.get("mask"))
        if isinstance(path, str) and path
    ]
    path = params.work_dir / "statistics" / f"{cohort_dir(params).name}-{short_digest(stamp)}.csv"
    if path.is_file():
        # the measures follow the files (the stamp); the labels are the case table's now, so a
        # corrected tissue or site regroups every figure without measuring again
        labels = [c for c in ("tissue", "site", "diagnosis", "annotation_modality") if c in cases]
        measured = pd.read_csv(path, dtype={"case_id": str}).drop(columns=labels, errors="ignore")
        return cases[["case_id", *labels]].merge(measured, on="case_id")
    statistics = tumour_statistics(cases, progress=progress, workers=params.workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        statistics.to_csv(tmp, index=False)
    return statistics
