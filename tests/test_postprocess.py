"""Post-processing: the largest component, the threshold, and nnU-Net's keep-if-it-helps rule."""

import json

import numpy as np
import pandas as pd
import pytest

from mstt_lib.io import save_nifti
from mstt_lib.postprocess import (
    CANDIDATES,
    Choice,
    apply,
    binarize,
    choose,
    choose_from_results,
    largest_component,
    read_choice,
    write_choice,
)


def test_largest_component_keeps_the_biggest_island_and_counts_diagonal_neighbours_as_joined():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    mask[12:15, 12:15, 12:15] = True  # 27 voxels, away
    mask[8, 8, 8] = True  # touches the big cube only at a corner: 26-connected to it
    kept = largest_component(mask)
    assert kept[2:8, 2:8, 2:8].all() and kept[8, 8, 8]
    assert not kept[12:15, 12:15, 12:15].any()
    assert kept.sum() == 217


def test_empty_and_single_component_masks_come_back_unchanged():
    empty = np.zeros((5, 5, 5), bool)
    assert not largest_component(empty).any()
    one = empty.copy()
    one[1:3, 1:3, 1:3] = True
    assert np.array_equal(apply(one, "largest"), one)
    assert np.array_equal(apply(one, None), one)
    with pytest.raises(ValueError, match="unknown post-processing"):
        apply(one, "smallest")


def test_the_step_is_kept_only_when_it_raises_the_mean_dice(tmp_path):
    plain, largest, low = Choice(), Choice("largest"), Choice("none", 0.3)
    helped = choose({plain: [0.5, 0.6, 0.7], largest: [0.7, 0.6, 0.7]})
    assert (helped["postprocessing"], helped["threshold"], helped["cases"]) == ("largest", 0.5, 3)
    assert helped["mean_dice_raw"] == pytest.approx(0.6)
    assert helped["mean_dice_chosen"] == pytest.approx(2 / 3)
    assert helped["mean_dice_by_candidate"] == pytest.approx({"none @ 0.5": 0.6, "largest @ 0.5": 2 / 3})
    hurt = choose({plain: [0.5, 0.6, 0.7], largest: [0.5, 0.2, 0.7], low: [0.4, 0.6, 0.7]})
    assert (hurt["postprocessing"], hurt["threshold"]) == ("none", 0.5)
    tie = choose({largest: [0.6, 0.5], plain: [0.5, 0.6]})
    assert (tie["postprocessing"], tie["threshold"]) == ("none", 0.5)  # no gain, no step
    with pytest.raises(ValueError):
        choose({plain: [0.5], largest: [0.5, 0.6]})
    with pytest.raises(ValueError, match="plain mask"):
        choose({largest: [0.5]})
    write_choice(tmp_path, {**helped, "threshold": 0.3})
    assert read_choice(tmp_path) == Choice("largest", 0.3)
    assert read_choice(tmp_path / "elsewhere") == Choice("none", 0.5)
    (tmp_path / "postprocessing.json").write_text(json.dumps({"postprocessing": "largest"}))
    assert read_choice(tmp_path) == Choice("largest", 0.5)  # a record from before thresholds
    (tmp_path / "postprocessing.json").write_text(json.dumps({"postprocessing": "magic"}))
    with pytest.raises(ValueError, match="unknown post-processing 'magic'"):
        read_choice(tmp_path)
    (tmp_path / "postprocessing.json").write_text(json.dumps({"postprocessing": "none", "threshold": 1.5}))
    with pytest.raises(ValueError, match="threshold 1.5"):
        read_choice(tmp_path)


def test_the_threshold_comes_before_the_step():
    probability = np.zeros((12, 12, 12), np.float32)
    probability[2:6, 2:6, 2:6] = 0.35  # a tumour the model is unsure of
    probability[9:11, 9:11, 9:11] = 0.9  # a confident island, smaller
    assert binarize(probability).sum() == 8  # at 0.5: only the island
    assert binarize(probability, Choice("largest", 0.3)).sum() == 64  # at 0.3 the tumour is the largest
    assert binarize(probability, Choice("none", 0.3)).sum() == 72
    assert CANDIDATES[0] == Choice() and len(set(CANDIDATES)) == len(CANDIDATES)


def test_the_choice_on_cross_validation_predictions_and_its_estimate_on_other_folds(tmp_path):
    """Folds 0 needs a threshold of 0.2 (its tumours lie at 0.22), which hurts fold 1 (a rim at
    0.21 around its confident tumours): chosen on all cases, 0.2 wins; chosen on the other
    fold, each fold gets the other's best, and the estimate falls below the in-sample one."""
    affine = np.eye(4)
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    rows = []
    for case_id, fold in (("a", 0), ("b", 0), ("c", 1), ("d", 1)):
        probability = np.zeros(truth.shape, np.float32)
        if fold == 0:
            probability[truth > 0] = 0.22
        else:
            probability[1:7, 1:7, 1:7] = 0.21
            probability[truth > 0] = 0.9
        save_nifti(probability, affine, tmp_path / f"{case_id}_probability.nii.gz", dtype=np.float32)
        save_nifti(truth, affine, tmp_path / f"{case_id}_truth.nii.gz")
        rows.append(
            {
                "case_id": case_id,
                "fold": fold,
                "prediction": str(tmp_path / f"{case_id}.nii.gz"),
                "native_mask": str(tmp_path / f"{case_id}_truth.nii.gz"),
            }
        )
    decision = choose_from_results(pd.DataFrame(rows))
    rim_dice = 2 * 64 / (216 + 64)
    assert (decision["postprocessing"], decision["threshold"]) == ("none", 0.2)
    assert decision["mean_dice_raw"] == pytest.approx(0.5)
    assert decision["mean_dice_chosen"] == pytest.approx((2 + 2 * rim_dice) / 4)
    # fold 0 by fold 1's choice (0.5: nothing found), fold 1 by fold 0's (0.2: the rim too)
    assert decision["mean_dice_chosen_on_other_folds"] == pytest.approx(2 * rim_dice / 4)
