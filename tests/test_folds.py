"""Folds: by patient, stratified by tissue, written once."""

import json

import pandas as pd
import pytest

from mstt_lib.folds import ensure_splits, fold_cases, make_folds, read_splits


def _cases(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{t[:3].upper()}_{i:02d}", t) for t, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["case_id", "tissue"])


CASES = _cases({"Fibrous": 9, "Fat": 8, "Myxoid": 8, "Nerve": 7, "Vascular": 6})


def test_folds_are_patient_disjoint_and_validate_every_case_exactly_once():
    folds = make_folds(CASES, 5, seed=1)
    validated = [c for fold in folds for c in fold["val"]]
    assert sorted(validated) == sorted(CASES["case_id"])
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(CASES["case_id"])


def test_every_tissue_is_spread_evenly_over_the_folds():
    folds = make_folds(CASES, 5, seed=1)
    tissue = CASES.set_index("case_id")["tissue"]
    for name, total in tissue.value_counts().items():
        per_fold = [int((tissue[fold["val"]] == name).sum()) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1, (name, per_fold)
        assert sum(per_fold) == total
    sizes = [len(fold["val"]) for fold in folds]
    assert max(sizes) - min(sizes) <= 1


def test_a_tissue_with_fewer_cases_than_folds_is_still_split():
    folds = make_folds(_cases({"Fat": 2, "Nerve": 6}), 5, seed=0)
    assert sum(len(f["val"]) for f in folds) == 8


def test_folds_depend_on_the_seed_only():
    assert make_folds(CASES, 5, 3) == make_folds(CASES.sample(frac=1, random_state=0), 5, 3)
    assert make_folds(CASES, 5, 3) != make_folds(CASES, 5, 4)


def test_too_few_cases_and_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="3 cases"):
        make_folds(CASES.head(3), 5)
    with pytest.raises(ValueError, match="duplicate"):
        make_folds(pd.concat([CASES, CASES.head(1)]), 5)


def test_splits_are_written_once_then_read_unchanged(tmp_path):
    path = tmp_path / "splits.json"
    first = ensure_splits(CASES, path, 5, seed=1)
    assert json.loads(path.read_text()) == first
    assert ensure_splits(CASES, path, 5, seed=99) == first  # the file wins over a new seed
    assert fold_cases(first, 2) == (first[2]["train"], first[2]["val"])
    with pytest.raises(ValueError, match="fold 5"):
        fold_cases(first, 5)


def test_a_splits_file_that_does_not_match_the_case_table_is_an_error(tmp_path):
    path = tmp_path / "splits.json"
    ensure_splits(CASES, path, 5, seed=1)
    with pytest.raises(ValueError, match="only in the file"):
        read_splits(path, CASES.iloc[1:])
    with pytest.raises(ValueError, match="does not match"):
        ensure_splits(pd.concat([CASES, _cases({"Other": 1})]), path)


def test_the_authors_kfold_scheme_is_sklearns_kfold_over_sorted_ids():
    from sklearn.model_selection import KFold

    cases = pd.DataFrame({"case_id": [f"C{i:03d}" for i in range(23)][::-1], "tissue": None})
    ours = make_folds(cases, 5, 42, scheme="kfold")
    ids = sorted(cases["case_id"])
    for fold, (_, val) in zip(ours, KFold(5, shuffle=True, random_state=42).split(ids), strict=True):
        assert fold["val"] == sorted(ids[i] for i in val)
        assert sorted(fold["train"] + fold["val"]) == ids
    assert ours != make_folds(cases, 5, 42)  # not the stratified deal
    with pytest.raises(ValueError, match="unknown fold scheme"):
        make_folds(cases, 5, 42, scheme="random")
