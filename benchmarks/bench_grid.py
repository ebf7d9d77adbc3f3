"""The (model, fold) grid: `mstt-book grid` serial against `--engine ray`, 2 tiny tasks.

A tiny project (12 synthetic 64 x 64 x 8 cases, smoke set, 1 epoch, 2 folds) is made in a
temporary folder and its shared stages (registration, preprocessing) are prepared untimed;
then the grid runs serially, its runs are removed, and it runs as Ray tasks on a local
instance (2 CPUs, 1 CPU per task). Wall times include papermill's kernels and, for Ray, its
start-up. The machine is shared with other users: figures are indicative.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _record import ROOT, record  # noqa: E402
from scale_helpers import library_environment, make_tiny_project  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as folder:
        root = Path(folder) / "project"
        cohort = make_tiny_project(root)
        env = library_environment()
        env["OMP_NUM_THREADS"] = "1"
        overrides = ["-p", "cohort", str(cohort), "-p", "epochs", "1", "-p", "device", "cpu"]
        overrides += ["-p", "folds", "[0, 1]"]
        prepare = "from mstt_lib import pipeline; from mstt_lib.params import get_params; "
        prepare += f"pipeline.slice_cache(get_params('smoke', cohort={str(cohort)!r}), progress=False)"
        subprocess.run([sys.executable, "-c", prepare], cwd=root, env=env, check=True)
        seconds = {}
        for engine in ("serial", "ray"):
            shutil.rmtree(root / "work" / "runs", ignore_errors=True)
            shutil.rmtree(root / "work" / "grid", ignore_errors=True)
            command = [sys.executable, "-m", "mstt_lib.runner", "grid", "--params", "smoke"]
            command += ["--engine", engine]
            started = time.perf_counter()
            subprocess.run(command + overrides, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds[engine] = time.perf_counter() - started
            print(f"{engine}: {seconds[engine]:.1f} s", flush=True)
    task = "smoke set, 12 synthetic 64x64x8 cases, 1 epoch of 32 steps, chapter 4 via papermill"
    record(
        "Grid: serial against Ray tasks (2 tiny tasks; machine shared with other jobs)",
        [
            (f"2 tasks ({task}), `mstt-book grid` serial", f"{seconds['serial']:.1f} s", ""),
            (
                "the same, `--engine ray` (local instance, 2 CPUs, 1 CPU per task; start-up included)",
                f"{seconds['ray']:.1f} s ({seconds['serial'] / seconds['ray']:.2f} x)",
                "",
            ),
            ("ray 2.60 install size", "79.3 MB wheel, 245 MB installed (+ msgpack, protobuf: 4 MB)", ""),
            ("load average at the end (1, 5, 15 min)", ", ".join(f"{x:.1f}" for x in os.getloadavg()), ""),
        ],
    )


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
