"""Real-data cross-validation Dice with the training budget it used, and the same budget on
the synthetic cohort.

The real data: the 29 T1 cases of the IBSI export of TCIA Soft-tissue-Sarcoma
(``../shared/data/sts-ibsi-t1``, or ``--sts-dir``), with the set's real-data settings
(``mstt_lib.params.REAL_DATA``). The synthetic comparison trains and scores the same way
(same epochs, samples per epoch, batch, learning rate, grid, input size, models, folds,
test-time augmentation and planes) on a fresh 30-case synthetic cohort (6 per tissue) with
one modality, T2, so that both see 3 channels and no registration. Every stage runs into a
fresh temporary folder, so the seconds include preprocessing (with ``--work-dir``, what
it already holds is reused and the record says so). ``--device cuda`` on a GPU.

``--recipes`` compares the set's training recipe with the paper's (``pipeline.paper_recipe``)
on the same folds, per case with a Wilcoxon signed-rank test, on the real data and on the
synthetic cohort (``--skip-real``/``--skip-synthetic`` leave one out, ``--recipe set`` runs
the set's recipe alone); ``--minutes 15 30 60`` does so at equal CPU budgets in total (each of
the five fold runs gets a fifth, as ``train_minutes``; with ``-p members N`` each of the 5 x N
runs gets its share). ``--threads 1`` runs torch on one core, so that two comparisons can run
side by side on a 2-core machine, each with a core's minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from _record import PeakMemory, record, use_threads

from mstt_lib import pipeline, postprocess
from mstt_lib.analysis import bootstrap_ci, paired_comparison
from mstt_lib.params import REAL_DATA, Params, real_data_params

SAME_BUDGET = (
    "epochs",
    "samples_per_epoch",
    "val_samples",
    "batch_size",
    "lr",
    "loss",
    "foreground_fraction",
    "schedule",
    "keep",
    "spacing_mm",
    "image_size",
    "encoder",
    "decoder_channels",
    "unet_weights",
    "min_tumour_voxels",
    "models",
    "folds",
    "tta",
    "planes",
    "device",
    "workers",
    "inference_batch_size",
)


def _sampling(params: Params) -> str:
    if params.foreground_fraction is None:
        return "tumour slices only"
    return f"tumour slices {params.foreground_fraction:g} of the time"


def budget(params: Params) -> str:
    """The run's settings as the record's first row: what a row was measured with, recipe included."""
    samples = params.samples_per_epoch or "all"
    members = ""
    if params.members > 1:
        norms = "BatchNorm and InstanceNorm" if params.norm == "both" else f"{params.norm} norm"
        members = f", each model the mean of {params.members} runs ({norms})"
    return (
        f"{'/'.join(params.models)}, {len(params.folds)} folds x {params.epochs} epochs x "
        f"{samples} samples (batch {params.batch_size}, lr {params.lr:g}, {params.schedule} rate, "
        f"loss {params.loss}, {_sampling(params)}, {params.keep} weights), "
        f"{params.spacing_mm:g} mm grid, {params.image_size} px, encoder {params.encoder}, "
        f"TTA {params.tta}, planes {'+'.join(params.planes)}, device {params.device}, "
        f"weights {params.unet_weights or 'random initialisation'}, seed {params.seed}{members}"
    )


def cross_validate(params: Params) -> tuple[object, float, float]:
    started = time.perf_counter()
    with PeakMemory() as memory:
        results = pipeline.cross_validation_results(params)
    return results, time.perf_counter() - started, memory.peak_gib


def summary(
    results, name: str, seconds: float, peak: float, reused: bool = False
) -> list[tuple[str, str, str]]:
    mean, low, high = bootstrap_ci(results["dice"])
    decision = postprocess.choose_from_results(results)
    chosen = f"{decision['postprocessing']} @ {decision['threshold']:g}"
    return [
        (f"{name}: cross-validation Dice", f"{mean:.3f} (95 % CI {low:.3f}-{high:.3f})", ""),
        (
            f"{name}: cross-validation Dice post-processed (threshold and step chosen on the other folds)",
            f"{decision.get('mean_dice_chosen_on_other_folds', float('nan')):.3f} "
            f"(on all folds: {chosen}, {decision['mean_dice_chosen']:.3f})",
            "",
        ),
        (f"{name}: HD95 (mm), median", f"{np.nanmedian(results['hd95_mm']):.1f}", ""),
        (f"{name}: surface Dice at 2 mm, mean", f"{np.nanmean(results['surface_dice']):.3f}", ""),
        (
            f"{name}: wall time (preprocessing, training, scoring)",
            f"{seconds:.0f} s (peak {peak:.2f} GiB)"
            + ("; stages and runs found in --work-dir were reused, not timed" if reused else ""),
            "",
        ),
    ]


def compare_recipes(
    params: Params, minutes: float | None, cohort: str, which: str = "both", reused: bool = False
) -> list[tuple[str, str, str]]:
    """The set's recipe and the paper's on the same folds at the same budget: Dice per case."""
    import pandas as pd

    # the budget is shared by every run: each fold's model is ``members`` runs
    runs = len(params.folds) * params.members
    budget_params = params if minutes is None else params.replace(train_minutes=minutes / runs)
    spent = "same steps" if minutes is None else f"{minutes:g} CPU-minutes of training in total"
    label = f"{cohort}, {spent}"
    scored = {}
    rows = []
    recipes = (("set recipe", budget_params), ("paper recipe", pipeline.paper_recipe(budget_params)))
    recipes = tuple(r for r in recipes if which == "both" or r[0].startswith(which))
    for name, params in recipes:
        results, seconds, peak = cross_validate(params)
        scored[name] = results.assign(model=name)
        rows += summary(results, f"{name}, {label}", seconds, peak, reused)
        rows.append(
            (
                f"{name}, {label}: Dice per case",
                ", ".join(f"{r.case_id} {r.dice:.2f}" for r in results.sort_values("case_id").itertuples()),
                "",
            )
        )
    if len(scored) < 2:
        return rows
    test = paired_comparison(pd.concat(scored.values()), "set recipe", "paper recipe")
    rows.append(
        (
            f"set recipe - paper recipe, {label}",
            f"median Dice difference {test['median_difference']:+.3f} over {test['n']} cases, "
            f"Wilcoxon p = {test['p_value']:.2g}",
            "",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="smoke", choices=sorted(REAL_DATA))
    parser.add_argument("--sts-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--recipes", action="store_true", help="the set's recipe against the paper's")
    parser.add_argument(
        "--recipe", default="both", choices=("both", "set", "paper"), help="with --recipes: one recipe only"
    )
    parser.add_argument("--minutes", nargs="*", type=float, default=None, help="total CPU budgets")
    parser.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter (YAML value)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep runs and predictions here (default: temporary)",
    )
    args = parser.parse_args()
    use_threads(args.threads)
    overrides = {name: yaml.safe_load(value) for name, value in args.p}

    rows = []
    with tempfile.TemporaryDirectory(prefix="mstt-bench-") as scratch:
        work = args.work_dir or scratch
        # a kept folder's finished stages are not run (nor timed) again
        reused = args.work_dir is not None and Path(work).is_dir() and any(Path(work).iterdir())
        # replace, not real_data_params' overrides, so that "-p unet_weights null" means None
        real = real_data_params(args.set, cohort=args.sts_dir, work_dir=work, device=args.device)
        real = real.replace(**overrides)
        if not args.skip_real and not Path(real.cohort).is_dir():
            raise SystemExit(f"no real data at {real.cohort}: give --sts-dir")
        label = "training budget"
        if args.recipes and args.minutes:
            label += " (the epochs shown are the set's; each budget in minutes sets each run's own)"
        rows.append((label, budget(real), ""))
        synthetic = real_data_params(
            args.set, cohort="synthetic", modalities=("T2",), n_cases=30, data_dir=work, work_dir=work
        ).replace(**{k: getattr(real, k) for k in SAME_BUDGET})
        if args.recipes:
            cohorts = [] if args.skip_real else [("real data", real)]
            cohorts += [] if args.skip_synthetic else [("synthetic (30 cases, T2 only)", synthetic)]
            threads = f", {torch.get_num_threads()} torch thread(s)"
            title = f"The {args.set} set's recipe against the paper's, same folds and budget{threads}"
            for cohort, params in cohorts:
                for minutes in args.minutes or [None]:
                    # recorded budget by budget, so that a stopped run keeps the budgets it finished
                    record(title, rows[:1] + compare_recipes(params, minutes, cohort, args.recipe, reused))
            return
        if not args.skip_real:
            results, seconds, peak = cross_validate(real)
            name = f"real data ({results['case_id'].nunique()} T1 cases)"
            rows += summary(results, name, seconds, peak, reused)
            rows.append(
                (
                    "real data: Dice per case",
                    ", ".join(
                        f"{r.case_id} {r.dice:.2f}" for r in results.sort_values("case_id").itertuples()
                    ),
                    "",
                )
            )
        if not args.skip_synthetic:
            results, seconds, peak = cross_validate(synthetic)
            name = f"synthetic, same budget ({results['case_id'].nunique()} cases, T2 only)"
            rows += summary(results, name, seconds, peak, reused)
    record(f"Real-data cross-validation ({args.set} set) and the same budget on the synthetic cohort", rows)


if __name__ == "__main__":
    main()
