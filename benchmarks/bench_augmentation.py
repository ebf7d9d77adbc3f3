"""Real-data cross-validation Dice with the paper's Appendix A augmentations and with
nnU-Net's spatial augmentation added, at a CPU budget in minutes.

The question: the set's recipe fits its 23 training cases per fold at long budgets (CV Dice
0.60 at 15 CPU-minutes, 0.58 at 60, against 0.63 at 160 steps); does stronger augmentation
keep the longer runs from overfitting? ``affine`` adds, before the crop, nnU-Net's scaling
(0.7-1.4) and rotation (±30°) with p = 0.3 and Gaussian noise (std 0-0.05, p = 0.15) to
``mstt_lib.train.augmentations``. The library keeps Appendix A: this script swaps the
function for the run (the run folder's hash does not cover the augmentations, so each variant
trains into its own work folder). One variant per process, so two run side by side::

    .venv/bin/python benchmarks/bench_augmentation.py --variant appendix-a --minutes 30 --threads 1
    .venv/bin/python benchmarks/bench_augmentation.py --variant affine --minutes 30 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml
from _record import record, use_threads
from bench_real_data import budget, cross_validate, summary

from mstt_lib import train
from mstt_lib.params import real_data_params

APPENDIX_A = train.augmentations


def with_spatial(size: int):
    """Appendix A with nnU-Net's scaling, rotation and noise before the crop."""
    import albumentations as A

    appendix = APPENDIX_A(size)
    spatial = [
        A.Affine(scale=(0.7, 1.4), rotate=(-30, 30), border_mode=0, fill=0, fill_mask=0, p=0.3),
        A.GaussNoise(std_range=(0.0, 0.05), p=0.15),
    ]
    return A.Compose(spatial + list(appendix.transforms), strict=True)


VARIANTS = {"appendix-a": APPENDIX_A, "affine": with_spatial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--minutes", type=float, required=True, help="total CPU budget (a fifth per fold)")
    parser.add_argument("--set", default="smoke")
    parser.add_argument("--sts-dir", default=None)
    parser.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a parameter (YAML value)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", default=None, help="keep runs here (default: temporary)")
    args = parser.parse_args()
    use_threads(args.threads)
    train.augmentations = VARIANTS[args.variant]
    overrides = {name: yaml.safe_load(value) for name, value in args.p}
    with tempfile.TemporaryDirectory(prefix="mstt-bench-") as scratch:
        work = Path(args.work_dir or scratch) / args.variant
        reused = work.is_dir() and any(work.iterdir())  # what --work-dir holds is not run (nor timed) again
        params = real_data_params(args.set, cohort=args.sts_dir, work_dir=work).replace(**overrides)
        if not Path(params.cohort).is_dir():
            raise SystemExit(f"no real data at {params.cohort}: give --sts-dir")
        params = params.replace(train_minutes=args.minutes / len(params.folds))
        results, seconds, peak = cross_validate(params)
    name = f"{args.variant}, real data, {args.minutes:g} CPU-minutes in total"
    per_fold = results.groupby("fold")["dice"].mean().round(3).tolist()
    rows = [("training budget", budget(params), "")]
    rows += summary(results, name, seconds, peak, reused)
    rows.append((f"{name}: Dice per fold", f"{per_fold}", ""))
    cases = results.sort_values("case_id").itertuples()
    rows.append((f"{name}: Dice per case", ", ".join(f"{r.case_id} {r.dice:.2f}" for r in cases), ""))
    threads = f"{torch.get_num_threads()} torch thread(s)"
    record(f"Augmentations of the {args.set} set's recipe at a CPU budget, {threads}", rows)


if __name__ == "__main__":
    main()
