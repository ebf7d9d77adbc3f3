"""Seconds and peak memory to generate the full 199-case synthetic cohort at its default size,
and the seconds of chapter 1's tumour statistics over it in one process and in ``--workers``.

Targets (issue: foundation): 60 s or less and 2 GiB or less on the 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _record import PeakMemory, record

from mstt_lib.analysis import tumour_statistics
from mstt_lib.cohort import read_cases
from mstt_lib.phantom import PhantomSettings, generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=199)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    settings = PhantomSettings(n_cases=args.cases)
    with tempfile.TemporaryDirectory() as folder:
        with PeakMemory() as memory:
            started = time.perf_counter()
            generate_cohort(Path(folder) / "cohort", settings, workers=args.workers, progress=False)
            seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
        cases, _ = read_cases(Path(folder) / "cohort")
        statistics_seconds = {}
        for workers in (1, args.workers):
            started = time.perf_counter()
            tumour_statistics(cases, progress=False, workers=workers)
            statistics_seconds[workers] = time.perf_counter() - started
    record(
        f"Synthetic cohort generation ({args.cases} cases, matrix {settings.matrix}, "
        f"{settings.n_slices} slices, {args.workers} workers)",
        [
            ("wall time", f"{seconds:.1f} s", "≤ 60 s"),
            ("per case", f"{seconds / args.cases:.2f} s", ""),
            ("peak memory (process tree)", f"{memory.peak_gib:.2f} GiB", "≤ 2 GiB"),
            ("size on disk", f"{size:.0f} MiB", ""),
            ("tumour statistics, 1 process", f"{statistics_seconds[1]:.1f} s", ""),
            (
                f"tumour statistics, {args.workers} workers",
                f"{statistics_seconds[args.workers]:.1f} s "
                f"({statistics_seconds[1] / statistics_seconds[args.workers]:.2f} x faster)",
                "",
            ),
        ],
    )


if __name__ == "__main__":
    main()
