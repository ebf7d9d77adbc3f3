"""What test-time augmentation and plane fusion buy, against what they cost, on the real cases.

The set's five real-data fold models (trained here, or found in ``--work-dir``) segment their
held-out cases once per inference option (TTA mode x planes); each option's Dice (native grid,
mask at probability 0.5, no post-processing) and seconds of inference per case are recorded,
with the paired difference to the first option. This is the measurement behind the smoke set's
``tta`` (chapter 8 scores 58 case-inferences, so inference time is training time lost).

    .venv/bin/python benchmarks/bench_tta.py --work-dir work
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _record import record, use_threads
from scipy.stats import wilcoxon

from mstt_lib import pipeline
from mstt_lib.infer import set_inference_threads
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.metrics import dice
from mstt_lib.params import real_data_params
from mstt_lib.predictor import Predictor

ALL_PLANES = ("axial", "coronal", "sagittal")
OPTIONS = {  # name: (tta, planes)
    "TTA paper x 3 planes": ("paper", ALL_PLANES),
    "TTA none x 3 planes": ("none", ALL_PLANES),
    "TTA paper x axial": ("paper", ("axial",)),
    "TTA none x axial": ("none", ("axial",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="smoke")
    parser.add_argument("--sts-dir", default=None, help="the IBSI T1 export (default: the set's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", default=None, help="find or keep the runs here (default: temporary)")
    args = parser.parse_args()
    use_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        params = real_data_params(args.set, cohort=args.sts_dir)
        params = params.replace(work_dir=Path(args.work_dir or scratch).resolve())
        cache = pipeline.slice_cache(params, progress=False)
        registered, _ = pipeline.registered_cohort(params, progress=False)
        cases = registered[registered["case_id"].isin(cache.case_ids)].set_index("case_id")
        folds = pipeline.splits(params, cases.reset_index())
        set_inference_threads()
        rows = []
        for fold in params.folds:
            run = pipeline.train_run(params, params.models[0], fold, cache, progress=False)
            predictors = {
                name: Predictor(tta, planes, "cpu", params.inference_batch_size, progress=False).load_runs(
                    [run]
                )
                for name, (tta, planes) in OPTIONS.items()
            }
            for case_id in folds[fold]["val"]:
                meta = cache.meta(case_id)
                image = np.asarray(cache.volumes(case_id)[0])
                truth = read_volume(load_nifti(cases.loc[case_id, "native_mask"], case_id), case_id) > 0
                for name, predictor in predictors.items():
                    started = time.perf_counter()
                    logits = predictor.logits(image)
                    seconds = time.perf_counter() - started
                    grid = (meta["affine"], meta["native_shape"], meta["native_affine"])
                    mask = predictor.to_grid(logits, *grid)[1]
                    rows.append({"case_id": case_id, "option": name, "dice": dice(mask, truth), "s": seconds})
        table = pd.DataFrame(rows)
    reference = next(iter(OPTIONS))
    by_case = table.pivot(index="case_id", columns="option", values="dice")
    threads = args.threads or torch.get_num_threads()
    out = []
    for name in OPTIONS:
        chosen = table[table["option"] == name]
        value = (
            f"Dice mean {chosen['dice'].mean():.3f}, median {chosen['dice'].median():.3f}; "
            f"{chosen['s'].mean():.2f} s per case ({chosen['s'].sum():.0f} s for {len(chosen)} cases)"
        )
        if name != reference:
            difference = by_case[name] - by_case[reference]
            p = wilcoxon(by_case[name], by_case[reference]).pvalue if difference.any() else 1.0
            value += f"; minus {reference}: median {difference.median():+.3f}, Wilcoxon p = {p:.2g}"
        out.append((name, value, ""))
    record(
        f"Test-time augmentation and planes on the real cases ({args.set} set's 5 fold models, "
        f"{threads} torch thread(s))",
        out,
    )


if __name__ == "__main__":
    main()
