"""Real-data 5-fold cross-validation Dice of one parameter set and of variants of it.

Each variant is the set's real-data parameters (``mstt_lib.params.real_data_params``) with
some values changed, trained and scored on the same folds into one work folder (runs with
equal settings are reused). Scoring uses a fast inference (no TTA, axial only) unless told
otherwise, so that several variants fit in an hour of CPU; the ranking is what this measures,
not the book's figure (chapter 8 scores with TTA over 3 planes, about 0.02 higher).

    .venv/bin/python benchmarks/bench_cv_variants.py \\
        --variant base '{}' --variant no-augmentation '{"augment": false}' \\
        --variant 768-steps '{"epochs": 24}' --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _record import record, use_threads

from mstt_lib import pipeline
from mstt_lib.params import real_data_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="smoke")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--sts-dir", default=None, help="the IBSI T1 export (default: the set's)")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--planes", nargs="+", default=["axial"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", default=None, help="keep runs here (default: a temporary folder)")
    args = parser.parse_args()
    use_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = Path(args.work_dir or scratch)
        rows = []
        for name, values in args.variant:
            changes = json.loads(values)
            params = real_data_params(args.set, cohort=args.sts_dir, tta=args.tta, planes=tuple(args.planes))
            params = params.replace(**{**changes, "work_dir": work_dir})
            started = time.perf_counter()
            results = pipeline.cross_validation_results(params, progress=False)
            per_fold = results.groupby("fold")["dice"].mean().round(3).tolist()
            dice = results["dice"]
            seconds = time.perf_counter() - started
            value = f"mean {dice.mean():.3f}, median {dice.median():.3f}; folds {per_fold}; {seconds:.0f} s"
            print(f"{name}: {json.dumps(changes)} {value}", flush=True)
            rows.append((f"{name} {json.dumps(changes)}", value, ""))
    threads = args.threads or torch.get_num_threads()
    record(
        f"Real-data cross-validation Dice of variants of the {args.set} set (TTA {args.tta} x "
        f"{'/'.join(args.planes)}, {threads} torch thread(s))",
        rows,
    )


if __name__ == "__main__":
    main()
