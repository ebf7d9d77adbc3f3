"""Real-data 5-fold cross-validation Dice of one parameter set and of variants of it.

Each variant is the set's real-data parameters (``mstt_lib.params.real_data_params``) with
some values changed, trained and scored on the same folds into one work folder (runs with
equal settings are reused). Scoring uses a fast inference (no TTA, axial only) unless told
otherwise, so that several variants fit in an hour of CPU; the ranking is what this measures,
not the book's figure (chapter 8 scores with TTA over 3 planes, about 0.02 higher). Beside
the plain mask's Dice each variant gets the post-processed one whose threshold and component
rule are chosen on the other folds (``postprocess.choose_from_results``), as chapter 8 reports.
``--average`` also scores all variants as one model, each fold's runs averaged as
``mstt-predict`` averages an ensemble (for instance seeds, or BatchNorm and InstanceNorm).

    .venv/bin/python benchmarks/bench_cv_variants.py \\
        --variant base '{}' --variant no-augmentation '{"augment": false}' \\
        --variant 768-steps '{"epochs": 24}' --threads 1
    .venv/bin/python benchmarks/bench_cv_variants.py --average --planes axial coronal sagittal \\
        --variant batch '{}' --variant instance '{"norm": "instance", "seed": 1}' --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _record import record, use_threads

from mstt_lib import pipeline, postprocess
from mstt_lib.params import real_data_params
from mstt_lib.provenance import runs_summary


def _score(name: str, variants, reused: bool = False) -> tuple[str, str, str]:
    """Train what is missing, score, print and return one row (``reused``: runs kept in
    ``--work-dir`` or by an earlier row are not trained, nor timed, again)."""
    started = time.perf_counter()
    results = pipeline.cross_validation_results(variants, progress=False)
    per_fold = results.groupby("fold")["dice"].mean().round(3).tolist()
    dice = results["dice"]
    chosen = postprocess.choose_from_results(results)
    # the steps and minutes each run had: a minutes budget buys what the machine allows
    group = variants if isinstance(variants, list) else [variants]
    runs = runs_summary(folder for variant in group for folder in pipeline.run_dirs(variant))
    seconds = time.perf_counter() - started
    on_other_folds = chosen.get("mean_dice_chosen_on_other_folds", float("nan"))  # nan: one fold
    value = (
        f"mean {dice.mean():.3f}, median {dice.median():.3f}; folds {per_fold}; post-processed "
        f"{on_other_folds:.3f} (chosen on the other folds; on all: "
        f"{chosen['postprocessing']} at {chosen['threshold']}); {seconds:.0f} s"
        f"{' (runs trained before reused, not timed)' if reused else ''}; {runs}"
    )
    print(f"{name}: {value}", flush=True)
    return name, value, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="smoke")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--sts-dir", default=None, help="the IBSI T1 export (default: the set's)")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--planes", nargs="+", default=["axial"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument(
        "--average",
        action="store_true",
        help="also score the variants as one model (their fold runs averaged)",
    )
    args = parser.parse_args()
    use_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = Path(args.work_dir or scratch)
        reused = work_dir.is_dir() and any(work_dir.iterdir())
        rows, variants = [], []
        for name, values in args.variant:
            changes = json.loads(values)
            params = real_data_params(args.set, cohort=args.sts_dir, tta=args.tta, planes=tuple(args.planes))
            variants.append(params.replace(**{**changes, "work_dir": work_dir}))
            rows.append(_score(f"{name} {json.dumps(changes)}", variants[-1], reused))
        if args.average:  # the variants' runs, trained above
            rows.append(_score(f"the {len(variants)} variants averaged, fold by fold", variants, True))
    threads = args.threads or torch.get_num_threads()
    record(
        f"Real-data cross-validation Dice of variants of the {args.set} set (TTA {args.tta} x "
        f"{'/'.join(args.planes)}, {threads} torch thread(s))",
        rows,
    )


if __name__ == "__main__":
    main()
