"""Post-processing: the largest component, and nnU-Net's keep-if-it-helps rule."""

import json

import numpy as np
import pytest

from mstt_lib.postprocess import apply, choose, largest_component, read_choice, write_choice


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
    helped = choose([0.5, 0.6, 0.7], [0.7, 0.6, 0.7])
    assert helped["postprocessing"] == "largest" and helped["cases"] == 3
    hurt = choose([0.5, 0.6, 0.7], [0.5, 0.2, 0.7])
    assert hurt["postprocessing"] == "none"
    tie = choose([0.5, 0.6], [0.6, 0.5])
    assert tie["postprocessing"] == "none"  # no gain, no step
    with pytest.raises(ValueError):
        choose([0.5], [0.5, 0.6])
    write_choice(tmp_path, helped)
    assert read_choice(tmp_path) == "largest"
    assert read_choice(tmp_path / "elsewhere") == "none"
    (tmp_path / "postprocessing.json").write_text(json.dumps({"postprocessing": "magic"}))
    with pytest.raises(ValueError, match="unknown post-processing 'magic'"):
        read_choice(tmp_path)
