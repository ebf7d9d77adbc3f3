"""Failure analysis: error volumes split by where they lie, and the failure kinds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mstt_lib.failures import (
    FAILURE_KINDS,
    classify_failures,
    describe_cases,
    error_slice,
    error_volumes,
    measure_failures,
)
from mstt_lib.io import save_nifti


def _volumes():
    truth = np.zeros((20, 20, 10), bool)
    truth[5:10, 5:10, 2:6] = True  # 100 voxels
    prediction = np.zeros_like(truth)
    prediction[5:10, 5:8, 2:6] = True  # 60 of them found
    prediction[10, 5:10, 2:6] = True  # 20 voxels stuck to the tumour: near false positives
    prediction[15:18, 15:18, 7:9] = True  # 18 voxels far away: a remote false positive
    return prediction, truth


def test_error_volumes_split_false_positives_by_contact_with_the_tumour():
    prediction, truth = _volumes()
    volumes = error_volumes(prediction, truth, (2.0, 1.0, 5.0))  # 10 mm3 per voxel
    assert volumes["truth_ml"] == pytest.approx(1.0)
    assert volumes["tp_ml"] == pytest.approx(0.6)
    assert volumes["fn_ml"] == pytest.approx(0.4)
    assert volumes["fp_near_ml"] == pytest.approx(0.2)
    assert volumes["fp_remote_ml"] == pytest.approx(0.18)
    assert volumes["fp_ml"] == pytest.approx(volumes["fp_near_ml"] + volumes["fp_remote_ml"])
    assert volumes["predicted_components"] == 2 and volumes["remote_components"] == 1
    assert volumes["recall"] == pytest.approx(0.6)
    assert not volumes["missed_entirely"]


def test_a_prediction_beside_but_not_on_the_tumour_is_not_remote_and_not_missed_entirely():
    truth = np.zeros((10, 10, 4), bool)
    truth[2:4, 2:4, 1:3] = True
    prediction = np.zeros_like(truth)
    prediction[4:6, 2:4, 1:3] = True  # touches the tumour's face, no overlap
    volumes = error_volumes(prediction, truth, (1, 1, 1))
    assert volumes["fp_remote_ml"] == 0 and volumes["tp_ml"] == 0
    assert not volumes["missed_entirely"]


def test_empty_prediction_and_empty_truth_edge_cases():
    truth = np.zeros((6, 6, 3), bool)
    truth[1:3, 1:3, 1] = True
    empty = np.zeros_like(truth)
    missed = error_volumes(empty, truth, (1, 1, 1))
    assert missed["missed_entirely"] and missed["fp_ml"] == 0 and missed["recall"] == 0
    nothing_to_find = error_volumes(truth, empty, (1, 1, 1))
    assert math.isnan(nothing_to_find["recall"]) and not nothing_to_find["missed_entirely"]
    assert nothing_to_find["fp_remote_ml"] == nothing_to_find["fp_ml"]
    with pytest.raises(ValueError, match="shape"):
        error_volumes(truth, truth[:3], (1, 1, 1))


def test_classify_failures_takes_the_first_matching_kind_and_leaves_good_cases_blank():
    table = pd.DataFrame(
        {
            "case_id": list("abcgdef"),
            "dice": [0.0, 0.4, 0.5, 0.55, 0.6, 0.65, 0.9],
            "missed_entirely": [True, False, False, False, False, False, False],
            "truth_ml": [10.0, 10.0, 10.0, 1.0, 1.0, 10.0, 10.0],
            "fp_remote_ml": [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 9.0],
            "fn_ml": [10.0, 5.0, 5.0, 0.1, 0.1, 1.0, 0.0],
            # g: a small tumour over-segmented (2 ml beside 1 ml); d: small, barely over
            "fp_near_ml": [0.0, 0.0, 9.0, 2.0, 0.2, 1.0, 0.0],
        }
    )
    classified = classify_failures(table, dice_threshold=0.7, small_ml=2.0)
    assert list(classified["failure_kind"]) == [
        FAILURE_KINDS[0],
        FAILURE_KINDS[1],
        FAILURE_KINDS[2],  # parts missed comes before the false positives beside them
        "false positives at the tumour",
        "small tumour",
        "other",
        "",  # Dice 0.9: not a failure, whatever its false positives
    ]
    assert list(classified["failed"]) == [True] * 6 + [False]
    assert classify_failures(table)["failure_kind"].iloc[4] == "small tumour"  # quartile default


def test_error_slice_shows_where_the_prediction_is_most_wrong():
    prediction, truth = _volumes()
    assert error_slice(prediction, truth) in (2, 3, 4, 5)
    only_far = np.zeros_like(truth)
    only_far[0, 0, 8] = True
    assert error_slice(only_far, np.zeros_like(truth)) == 8
    assert error_slice(truth, truth) in (2, 3, 4, 5)  # no error: the slice with most tumour


def test_measure_failures_reads_files_and_names_the_case_on_a_grid_mismatch(tmp_path):
    prediction, truth = _volumes()
    affine = np.diag([2.0, 1.0, 5.0, 1.0])
    save_nifti(truth.astype(np.uint8), affine, tmp_path / "truth.nii.gz")
    save_nifti(prediction.astype(np.uint8), affine, tmp_path / "prediction.nii.gz")
    save_nifti(prediction[:10].astype(np.uint8), affine, tmp_path / "small.nii.gz")
    rows = pd.DataFrame(
        {
            "case_id": ["X1"],
            "dice": [0.5],
            "native_mask": [str(tmp_path / "truth.nii.gz")],
            "prediction": [str(tmp_path / "prediction.nii.gz")],
        }
    )
    measured = measure_failures(rows, progress=False)
    assert measured.loc[0, "fp_remote_ml"] == pytest.approx(0.18) and measured.loc[0, "dice"] == 0.5
    with pytest.raises(ValueError, match="X1.*small.nii.gz"):
        measure_failures(rows.assign(prediction=str(tmp_path / "small.nii.gz")), progress=False)


def test_failure_montage_puts_each_tissues_worst_left_and_best_right(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mstt_lib.failures import failure_montage

    prediction, truth = _volumes()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    rng = np.random.default_rng(1)
    save_nifti(rng.normal(size=truth.shape).astype(np.float32), affine, tmp_path / "t2.nii.gz")
    save_nifti(truth.astype(np.uint8), affine, tmp_path / "truth.nii.gz")
    save_nifti(prediction.astype(np.uint8), affine, tmp_path / "prediction.nii.gz")
    files = {
        "t1": None,
        "t2": str(tmp_path / "t2.nii.gz"),
        "native_mask": str(tmp_path / "truth.nii.gz"),
        "prediction": str(tmp_path / "prediction.nii.gz"),
    }
    table = pd.DataFrame(
        [
            {"case_id": "F1", "tissue": "Fat", "dice": 0.9, **files},
            {"case_id": "F2", "tissue": "Fat", "dice": 0.2, "failure_kind": "small tumour", **files},
            {"case_id": "N1", "tissue": "Nerve", "dice": 0.5, **files},
        ]
    )
    figure = failure_montage(table)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:2] == ["worst: F2\nDice 0.20\nsmall tumour", "best: F1\nDice 0.90"]
    assert titles[2].startswith("worst: N1") and titles[3] == ""
    assert not figure.axes[3].axison  # Nerve has no second case: its best panel is blank
    assert figure.axes[0].get_ylabel() == "Fat" and figure.axes[2].get_ylabel() == "Nerve"


def test_focus_window_frames_both_masks_and_stays_inside_the_slice():
    from mstt_lib.failures import focus_window

    truth, prediction = np.zeros((200, 150), bool), np.zeros((200, 150), bool)
    truth[100:110, 60:70] = True
    rows, cols = focus_window(truth, prediction, min_side=40, scale=2.0)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (40, 40)  # 2 x 10 is below the minimum
    assert truth[rows, cols].sum() == truth.sum()
    assert abs((rows.start + rows.stop) / 2 - 105) <= 1 and abs((cols.start + cols.stop) / 2 - 65) <= 1

    prediction[5:15, 140:150] = True  # a false positive in the corner widens the window, kept inside
    rows, cols = focus_window(truth, prediction, min_side=40, scale=2.0)
    assert rows.start >= 0 and rows.stop <= 200 and cols.start >= 0 and cols.stop <= 150
    assert cols.stop - cols.start == 150  # the box (105 x 90) doubled is wider than the slice: all of it
    assert prediction[rows, cols].sum() == prediction.sum() and truth[rows, cols].sum() == truth.sum()

    assert focus_window(np.zeros((8, 8), bool)) == (slice(None), slice(None))


def test_failed_cases_are_described_one_by_one_worst_first():
    table = pd.DataFrame(
        {
            "case_id": ["big", "small"],
            "dice": [0.09, 0.43],
            "truth_ml": [1529.1, 27.6],
            "fn_ml": [1452.7, 1.04],
            "fp_near_ml": [52.3, 68.7],
            "fp_remote_ml": [0.0, 0.0],
        }
    )
    text = describe_cases(table.iloc[::-1])
    assert text.index("big (Dice 0.09)") < text.index("small (Dice 0.43)")
    assert "small (Dice 0.43) missed 1 of its 28 ml of tumour and predicted 69 ml beside it" in text
    assert describe_cases(table.iloc[:0]) == "No case is under the threshold."
