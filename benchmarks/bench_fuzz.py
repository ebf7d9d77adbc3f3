"""The fuzz test of tests/test_fuzz.py with more inputs: counts of each outcome, and seconds.

Each randomly damaged input (NIfTI, cohort.csv, DICOM tags) goes through ``load_cohort``,
``mstt-predict`` (in-process, and a few through the console script) or
``convert_patient``, and must end in a named error or a correct result. Target: no
failures (a hang, a library traceback, a wrong result accepted).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _record import ROOT, record

sys.path.insert(0, str(ROOT / "tests"))

from test_fuzz import run_fuzz, summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=int, default=1000, help="inputs through load_cohort")
    parser.add_argument("--predict", type=int, default=100, help="inputs through mstt-predict, in-process")
    parser.add_argument("--dicom", type=int, default=500, help="inputs through convert_patient")
    parser.add_argument("--cli", type=int, default=5, help="inputs through the mstt-predict console script")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    counts = {"load_cohort": args.cohort, "predict": args.predict, "dicom": args.dicom}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        outcomes = run_fuzz(Path(folder), counts, cli=args.cli, seed=args.seed)
        seconds = time.perf_counter() - started
    tally = summary(outcomes)
    for outcome in outcomes:
        if outcome.result.startswith("FAILURE"):
            print(f"{outcome.target} {outcome.fault}: {outcome.result}\n")
    rows = []
    for target in ("load_cohort", "predict", "predict-cli", "dicom"):
        tried = sum(n for (t, _), n in tally.items() if t == target)
        named, correct, failed = (tally[(target, r)] for r in ("named error", "correct result", "failure"))
        rows.append(
            (
                f"{target}: inputs tried",
                f"{tried} ({named} named errors, {correct} correct results, {failed} failures)",
                "0 failures",
            )
        )
    rows.append(("all inputs", f"{len(outcomes)} in {seconds:.0f} s (seed {args.seed})", ""))
    record("Fuzzing the readers (load_cohort, mstt-predict, convert_patient)", rows)


if __name__ == "__main__":
    main()
