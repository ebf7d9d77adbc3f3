"""Shared fixtures: one small synthetic cohort for the whole test session, and a tiny project.

Tests read it and never change it: a test that edits cases works on a copy
(``phantom_subset`` or ``shutil.copytree``). 128 x 128 x 16 on the T2 grid is what the
registration tests need to recover the recorded motion within 1 mm; 5 cases give one per
tissue.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from scale_helpers import make_tiny_project

from mstt_lib.phantom import TRUTH_FILE, PhantomSettings, generate_cohort

PHANTOM = PhantomSettings(n_cases=5, matrix=128, n_slices=16)
_LOADED = time.time()  # when pytest started, near enough


def pytest_terminal_summary(terminalreporter) -> None:
    """Under ``.ci/run``: how long the steps before the tests took (lint, install, browser
    packages, book), at the end of the output, where CI's record of a run shows it."""
    started = os.environ.get("MSTT_CI_STARTED")
    if started:
        from mstt_lib.infer import cpu_bfloat16, inference_threads

        before = _LOADED - float(started)
        terminalreporter.write_line(f"[ci] lint, install and book before the tests: {before:.0f} s")
        models = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
        cpu = models[0] if models else "CPU model unknown"
        native = "native bfloat16" if cpu_bfloat16() else "no native bfloat16 (float32: slower)"
        terminalreporter.write_line(f"[ci] {inference_threads()} cores, {cpu}, {native}")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


@pytest.fixture(scope="session")
def phantom_settings() -> PhantomSettings:
    """The settings of the shared cohort (to regenerate it, or to change one of them)."""
    return PHANTOM


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """The shared synthetic cohort's folder (project layout, with its truth table); read only."""
    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, PHANTOM, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_subset(tmp_path_factory, phantom_dir) -> Callable[[int], Path]:
    """A function: a new folder holding a copy of the shared cohort's first ``n`` cases."""

    def make(n: int) -> Path:
        out = tmp_path_factory.mktemp(f"phantom-first-{n}")
        table = pd.read_csv(phantom_dir / "cohort.csv").head(n)
        for case_id in table["case_id"]:
            shutil.copytree(phantom_dir / case_id, out / case_id)
        table.to_csv(out / "cohort.csv", index=False)
        truth = pd.read_csv(phantom_dir / TRUTH_FILE)
        truth[truth["case_id"].isin(table["case_id"])].to_csv(out / TRUTH_FILE, index=False)
        return out

    return make


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> tuple[Path, Path]:
    """(project root, cohort folder) for the scale-out tests (``scale_helpers``): made once."""
    root = tmp_path_factory.mktemp("project")
    return root, make_tiny_project(root)
