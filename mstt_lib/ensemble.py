"""Ensemble folders: the fold models of a cross-validation, used as one model for new cases.

An ensemble folder (``pipeline.fold_ensemble`` writes it) holds ``ensemble.json``, the
names of the fold run folders beside it, and ``postprocessing.json``, the threshold and
step chosen by cross-validation. ``mstt-predict -r`` takes it like a run folder: the folds'
logits are averaged (as nnU-Net ensembles its five folds) and the recorded choice applied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from mstt_lib.io import file_stamp, short_digest
from mstt_lib.postprocess import Choice, read_choice

__all__ = ["ENSEMBLE_FILE", "resolve_runs", "weights_stamp"]

ENSEMBLE_FILE = "ensemble.json"


def _members(folder: Path) -> list[Path]:
    path = folder / ENSEMBLE_FILE
    try:
        names = json.loads(path.read_text())["runs"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not an ensemble file (expected a list under 'runs')") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} lists no run folders")
    members = [folder.parent / name for name in names]
    missing = [m.name for m in members if not m.is_dir()]
    if missing:
        raise FileNotFoundError(f"{path} names run folders that are not beside it: {missing}")
    return members


def resolve_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[list[Path], Choice]:
    """(the run folders to average, the post-processing to apply) for ``-r`` arguments.

    Ensemble folders expand into their fold runs; a plain run folder stands for itself; a run
    named twice (an ensemble and its own member, as a shell pattern may give) is used once. The
    post-processing is the one recorded in the folders given (the plain mask where none is); folders
    that record different steps cannot be combined.
    """
    runs: list[Path] = []
    choices = set()
    for folder in map(Path, run_dirs):
        if (folder / ENSEMBLE_FILE).is_file():
            runs.extend(_members(folder))
        else:
            runs.append(folder)
        choices.add(read_choice(folder))
    if len(choices) > 1:
        raise ValueError(
            f"the run folders record different post-processing {sorted(c.label for c in choices)}: "
            "predict with them apart"
        )
    first = {}
    for run in runs:
        first.setdefault(run.resolve(), run)
    return list(first.values()), choices.pop() if choices else Choice()


def weights_stamp(run_dirs: Sequence[str | os.PathLike]) -> str:
    """Which weights made a prediction or a score: each run's ``model.pt`` by name, size and
    modification time (a run continued in its folder changes it)."""
    return short_digest([(Path(d).name, file_stamp(Path(d) / "model.pt")) for d in run_dirs])
