"""Five folds split by patient and stratified by tissue type, written once and read by every stage.

The file has nnU-Net's ``splits_final.json`` layout: a list of ``{"train": [...],
"val": [...]}``, one entry per fold, case ids sorted. MSTT-199 has one tumour per
patient, so splitting by case splits by patient. (The authors' code used an
unstratified ``KFold(5, shuffle=True, random_state=42)``; stratifying keeps every
tissue in every fold.) scikit-learn's ``StratifiedKFold`` refuses a tissue with fewer
cases than folds, which a small cohort has, so the folds are dealt here: each
tissue's cases, shuffled, go round the folds in turn, continuing where the previous
tissue stopped, so fold sizes differ by at most one. ``scheme="kfold"`` gives the
authors' unstratified folds instead (``KFold(5, shuffle=True, random_state=42)`` over the
case ids in sorted order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mstt_lib.io import atomic_path

__all__ = ["FOLD_SCHEMES", "make_folds", "ensure_splits", "read_splits", "fold_cases"]


FOLD_SCHEMES = ("stratified", "kfold")


def make_folds(
    cases: pd.DataFrame, n_folds: int = 5, seed: int = 42, scheme: str = "stratified"
) -> list[dict[str, list[str]]]:
    """Patient-level folds stratified by tissue (cases without a tissue form their own stratum),
    or the authors' unstratified ``KFold`` with ``scheme="kfold"``."""
    if scheme not in FOLD_SCHEMES:
        raise ValueError(f"unknown fold scheme {scheme!r}; choose one of {FOLD_SCHEMES}")
    if len(cases) < n_folds:
        raise ValueError(f"{len(cases)} cases cannot make {n_folds} folds")
    if cases["case_id"].duplicated().any():
        raise ValueError("duplicate case ids: folds must split by patient")
    if scheme == "kfold":
        from sklearn.model_selection import KFold

        ids = np.array(sorted(cases["case_id"]))
        return [
            {"train": sorted(ids[train].tolist()), "val": sorted(ids[val].tolist())}
            for train, val in KFold(n_folds, shuffle=True, random_state=seed).split(ids)
        ]
    strata = cases["tissue"].fillna("unknown").astype(str)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    next_fold = 0
    for stratum in sorted(set(strata)):
        members = sorted(cases.loc[strata == stratum, "case_id"])
        rng.shuffle(members)
        for member in members:
            fold_of[member] = next_fold
            next_fold = (next_fold + 1) % n_folds
    ids = sorted(fold_of)
    return [
        {"train": [c for c in ids if fold_of[c] != k], "val": [c for c in ids if fold_of[c] == k]}
        for k in range(n_folds)
    ]


def read_splits(path: str | os.PathLike, cases: pd.DataFrame | None = None) -> list[dict[str, list[str]]]:
    """Read a splits file; with ``cases``, check that it matches the case table exactly."""
    path = Path(path)
    splits = json.loads(path.read_text())
    if cases is not None:
        in_file = {c for fold in splits for c in fold["val"]}
        in_table = set(cases["case_id"])
        if in_file != in_table:
            only_file, only_table = sorted(in_file - in_table), sorted(in_table - in_file)
            raise ValueError(
                f"splits file {path} does not match the case table: "
                f"{len(only_file)} case(s) only in the file {only_file[:5]}, "
                f"{len(only_table)} only in the table {only_table[:5]}; delete it to make new folds"
            )
    return splits


def ensure_splits(
    cases: pd.DataFrame, path: str | os.PathLike, n_folds: int = 5, seed: int = 42, scheme: str = "stratified"
) -> list[dict[str, list[str]]]:
    """The folds in ``path``: written on first use, afterwards read (and checked) unchanged."""
    path = Path(path)
    if path.is_file():
        return read_splits(path, cases)
    splits = make_folds(cases, n_folds, seed, scheme)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=1))
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold``."""
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} does not exist; the splits file has folds 0..{len(splits) - 1}")
    return splits[fold]["train"], splits[fold]["val"]
