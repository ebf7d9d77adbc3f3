"""The cohort a parameter set names: the synthetic one (made on first use) or a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mstt_lib.cohort import CaseProblem, load_cohort
from mstt_lib.phantom import PhantomSettings, generate_cohort

__all__ = ["cohort_dir", "open_cohort"]


def cohort_dir(params: dict[str, Any]) -> Path:
    """Where the set's cohort lives: ``<data_dir>/synthetic-<set>`` or the given folder."""
    if params["cohort"] == "synthetic":
        return Path(params["data_dir"]) / f"synthetic-{params['set']}"
    return Path(params["cohort"]).expanduser().resolve()


def open_cohort(params: dict[str, Any], progress: bool = True) -> tuple[pd.DataFrame, list[CaseProblem]]:
    """Validated case table of the set's cohort, generating the synthetic one if needed.

    Returns the good cases and the skipped ones (empty unless
    ``params['skip_bad_cases']``; otherwise a bad case raises ``CohortError``).
    """
    root = cohort_dir(params)
    if params["cohort"] == "synthetic":
        settings = PhantomSettings(
            n_cases=params["n_cases"],
            seed=params["seed"],
            matrix=params["phantom_matrix"],
            n_slices=params["phantom_slices"],
        )
        # The default folder is the library's own cache: remade when the settings change.
        generate_cohort(root, settings, progress=progress, replace_stale=True)
    return load_cohort(
        root,
        modalities=tuple(params["modalities"]),
        skip_bad=params["skip_bad_cases"],
        progress=progress,
    )
