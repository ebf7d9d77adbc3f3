"""Tests for mstt_lib.phantom: the plan (Table 1), the generated files, and resuming.

One small cohort (5 cases, one per tissue, 64 x 64 x 8 T2 grid) is generated once
for the module; tests that change a cohort work on a copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mstt_lib import phantom
from mstt_lib.cohort import TISSUES, load_cohort
from mstt_lib.phantom import (
    DIAGNOSES,
    TABLE1,
    TRUTH_FILE,
    PhantomSettings,
    generate_case,
    generate_cohort,
    misalignment_matrix,
    plan_cohort,
)

FILES = ("t1.nii.gz", "t2.nii.gz", "mask.nii.gz")


@pytest.fixture(scope="module")
def cohort_dir(phantom_dir) -> Path:
    return phantom_dir  # the session's shared cohort (tests/conftest.py)


@pytest.fixture(scope="module")
def truth(cohort_dir) -> pd.DataFrame:
    return pd.read_csv(cohort_dir / TRUTH_FILE).set_index("case_id")


@pytest.fixture(scope="module")
def cases(cohort_dir) -> dict[str, dict[str, nib.Nifti1Image]]:
    """case id -> {"t1", "t2", "mask"} -> image, for every generated case."""
    table = pd.read_csv(cohort_dir / "cohort.csv")
    return {
        case_id: {name.split(".")[0]: nib.load(cohort_dir / case_id / name) for name in FILES}
        for case_id in table["case_id"]
    }


def _arrays(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(voxels, affine) of every case file under ``folder``, keyed by relative path."""
    found = {}
    for path in sorted(folder.glob("MSTT_*/*.nii.gz")):
        image = nib.load(path)
        found[str(path.relative_to(folder))] = (np.asarray(image.dataobj), image.affine)
    return found


def _assert_same_arrays(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        np.testing.assert_array_equal(left[key][0], right[key][0], err_msg=key)
        assert left[key][0].dtype == right[key][0].dtype, key
        np.testing.assert_array_equal(left[key][1], right[key][1], err_msg=key)


def _air_level(volume: np.ndarray) -> float:
    """Mean of the four in-plane 6 x 6 corners of every slice: air, outside the body."""
    c = 6
    corners = [volume[:c, :c], volume[-c:, :c], volume[:c, -c:], volume[-c:, -c:]]
    return float(np.mean([corner.mean() for corner in corners]))


def _body_region(volume: np.ndarray) -> np.ndarray:
    """Per slice: the largest bright component with its holes filled (skin encloses it)."""
    bright = volume > 4 * _air_level(volume)
    body = np.zeros(volume.shape, dtype=bool)
    for k in range(volume.shape[2]):
        labels, n = ndimage.label(bright[:, :, k])
        if n:
            sizes = ndimage.sum_labels(bright[:, :, k], labels, range(1, n + 1))
            body[:, :, k] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    return body


def _dice_on_t2_grid(matrix: np.ndarray, t1_body, t1_affine, t2_body, t2_affine) -> float:
    """Dice of the T2 body and the T1 body sampled at ``matrix @ p`` for each T2 voxel p.

    Only T2 voxels whose sample point falls inside the T1 grid count.
    """
    ijk = np.stack(np.meshgrid(*map(np.arange, t2_body.shape), indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ t2_affine[:3, :3].T + t2_affine[:3, 3]
    in_t1 = world @ matrix[:3, :3].T + matrix[:3, 3]
    to_voxels = np.linalg.inv(t1_affine)
    voxels = in_t1 @ to_voxels[:3, :3].T + to_voxels[:3, 3]
    inside = np.all((voxels >= 0) & (voxels <= np.array(t1_body.shape) - 1), axis=1)
    sampled = ndimage.map_coordinates(t1_body.astype(np.float32), voxels.T, order=1) > 0.5
    a, b = sampled[inside], t2_body.reshape(-1)[inside]
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


# ---------------------------------------------------------------------------
# The plan.


def test_plan_of_199_cases_is_table_1_exactly():
    plan = plan_cohort(199)
    counts = pd.crosstab(plan["site"], plan["tissue"]).reindex(
        index=list(TABLE1), columns=list(TISSUES), fill_value=0
    )
    assert counts.values.sum() == 199  # no site outside Table 1
    np.testing.assert_array_equal(counts.values, np.array(list(TABLE1.values())))


def test_plan_of_199_cases_has_the_papers_tissue_totals_and_unique_ids():
    plan = plan_cohort(199)
    assert plan["tissue"].value_counts().to_dict() == {
        "Fibrous": 40,
        "Fat": 40,
        "Myxoid": 40,
        "Nerve": 40,
        "Vascular": 39,
    }
    assert plan["case_id"].tolist() == [f"MSTT_{i:03d}" for i in range(1, 200)]


def test_plan_of_20_cases_keeps_tissues_balanced():
    plan = plan_cohort(20)
    assert plan["tissue"].value_counts().to_dict() == {t: 4 for t in TISSUES}


@pytest.mark.parametrize("n_cases", [1, 7, 23])
def test_small_plan_sizes_differ_by_at_most_one_and_use_table_1_sites(n_cases):
    plan = plan_cohort(n_cases)
    assert len(plan) == n_cases
    sizes = plan["tissue"].value_counts().reindex(list(TISSUES), fill_value=0)
    assert sizes.max() - sizes.min() <= 1
    for tissue, site in zip(plan["tissue"], plan["site"], strict=True):
        assert TABLE1[site][TISSUES.index(tissue)] > 0, (tissue, site)


def test_plan_annotates_fat_on_t1_and_every_other_tissue_on_t2():
    plan = plan_cohort(199)
    on_t1 = plan["annotation_modality"] == "T1"
    assert (on_t1 == (plan["tissue"] == "Fat")).all()
    assert set(plan["annotation_modality"]) == {"T1", "T2"}


def test_plan_diagnosis_is_one_of_its_tissues_two():
    plan = plan_cohort(199)
    for tissue, diagnosis in zip(plan["tissue"], plan["diagnosis"], strict=True):
        assert diagnosis in DIAGNOSES[tissue]
    assert plan["diagnosis"].nunique() == 10  # both benign and malignant occur


def test_plan_is_seeded():
    pd.testing.assert_frame_equal(plan_cohort(30, seed=3), plan_cohort(30, seed=3))
    assert not plan_cohort(30, seed=3).equals(plan_cohort(30, seed=4))


def test_plan_rejects_an_empty_cohort():
    with pytest.raises(ValueError, match="at least 1, got 0"):
        plan_cohort(0)


# ---------------------------------------------------------------------------
# The misalignment matrix, by hand.


def test_misalignment_matrix_rotates_about_the_centre_then_shifts():
    truth = {
        "rot_x_deg": 0.0,
        "rot_y_deg": 0.0,
        "rot_z_deg": 90.0,
        "centre_x_mm": 10.0,
        "centre_y_mm": 0.0,
        "centre_z_mm": 0.0,
        "shift_x_mm": 1.0,
        "shift_y_mm": 2.0,
        "shift_z_mm": 3.0,
    }
    matrix = misalignment_matrix(truth)
    # The centre only moves by the shift; a point 1 mm along +x turns to +y about it.
    np.testing.assert_allclose(matrix @ [10, 0, 0, 1], [11, 2, 3, 1], atol=1e-12)
    np.testing.assert_allclose(matrix @ [11, 0, 0, 1], [11, 3, 3, 1], atol=1e-12)
    np.testing.assert_allclose(matrix[3], [0, 0, 0, 1])


def test_misalignment_matrix_of_no_motion_is_the_identity():
    keys = ["rot_x_deg", "rot_y_deg", "rot_z_deg", "shift_x_mm", "shift_y_mm", "shift_z_mm"]
    centre = {"centre_x_mm": 5.0, "centre_y_mm": -3.0, "centre_z_mm": 40.0}
    truth = {**dict.fromkeys(keys, 0.0), **centre}
    np.testing.assert_allclose(misalignment_matrix(truth), np.eye(4), atol=1e-12)


# ---------------------------------------------------------------------------
# The generated cohort.


def test_generated_cohort_is_a_valid_cohort_with_one_case_per_tissue(cohort_dir):
    table, problems = load_cohort(cohort_dir, progress=False)
    assert problems == []
    assert sorted(table["tissue"]) == sorted(TISSUES)
    assert table["case_id"].tolist() == plan_cohort(5)["case_id"].tolist()
    for _, row in table.iterrows():
        assert row["annotation_modality"] == ("T1" if row["tissue"] == "Fat" else "T2")


def test_same_seed_gives_identical_files(cohort_dir, tmp_path, phantom_settings):
    # A second run, in parallel this time: a case depends only on (seed, index).
    generate_cohort(tmp_path, phantom_settings, workers=2, progress=False)
    _assert_same_arrays(_arrays(cohort_dir), _arrays(tmp_path))
    for name in ("cohort.csv", TRUTH_FILE):
        assert (tmp_path / name).read_text() == (cohort_dir / name).read_text()


def test_different_seed_gives_different_volumes():
    case = plan_cohort(1).to_dict("records")[0]
    small = PhantomSettings(n_cases=5, matrix=64, n_slices=8)  # one case, not a cohort: no fixture
    one = generate_case(case, 0, small)
    again = generate_case(case, 0, small)
    other = generate_case(case, 0, replace(small, seed=1))
    for key in ("T1", "T2", "mask"):
        np.testing.assert_array_equal(one[key][0], again[key][0])
        assert not np.array_equal(one[key][0], other[key][0]), key


def test_every_case_has_a_non_empty_mask_on_the_t2_grid(cases, truth):
    for case_id, images in cases.items():
        mask = np.asarray(images["mask"].dataobj)
        assert mask.shape == images["t2"].shape, case_id
        np.testing.assert_array_equal(images["mask"].affine, images["t2"].affine)
        assert set(np.unique(mask)) == {0, 1}, case_id
        voxel_ml = np.prod(images["t2"].header.get_zooms()) / 1000
        assert truth.loc[case_id, "tumour_volume_ml"] == pytest.approx(mask.sum() * voxel_ml)


def test_tumour_lies_inside_the_body(cases, truth):
    assert truth["tumour_inside_body"].dtype == bool
    assert truth["tumour_inside_body"].all()
    for case_id, images in cases.items():
        t2 = np.asarray(images["t2"].dataobj, dtype=np.float32)
        mask = np.asarray(images["mask"].dataobj).astype(bool)
        # Independently of the truth table: every tumour voxel lies in the region the
        # skin encloses on the T2, and deeper than the skin, not on the body's rim as a
        # tumour breaking out of the body would be.
        body = _body_region(t2)
        assert body[mask].all(), case_id
        depth = np.stack([ndimage.distance_transform_edt(body[:, :, k]) for k in range(body.shape[2])], -1)
        assert depth[mask].min() >= 1.5, (case_id, depth[mask].min())


def test_tumour_annotated_on_t2_is_far_brighter_than_air_on_t2(cases, cohort_dir):
    # Fat tumours are annotated on T1: on T2 fat-sat they may be as dark as suppressed fat.
    table = pd.read_csv(cohort_dir / "cohort.csv").set_index("case_id")
    on_t2 = [c for c in cases if table.loc[c, "annotation_modality"] == "T2"]
    assert len(on_t2) == 4
    for case_id in on_t2:
        t2 = np.asarray(cases[case_id]["t2"].dataobj, dtype=np.float32)
        mask = np.asarray(cases[case_id]["mask"].dataobj).astype(bool)
        assert np.median(t2[mask]) > 4 * _air_level(t2), case_id


def test_voxel_spacing_is_clinical(cases):
    for case_id, images in cases.items():
        for name in ("t1", "t2"):
            dx, dy, dz = images[name].header.get_zooms()
            assert dx < 1 and dy < 1, (case_id, name, dx, dy)
            assert dx == pytest.approx(dy), (case_id, name)
            assert 3 <= dz <= 6, (case_id, name, dz)


def test_t1_and_t2_lie_on_different_grids(cases):
    for case_id, images in cases.items():
        t1, t2 = images["t1"], images["t2"]
        same = t1.shape == t2.shape and np.allclose(t1.affine, t2.affine, atol=1e-3)
        assert not same, case_id
        assert nib.aff2axcodes(t1.affine) != nib.aff2axcodes(t2.affine), case_id


def test_recorded_misalignment_is_a_small_proper_rigid_transform(truth):
    for case_id, row in truth.iterrows():
        matrix = misalignment_matrix(row)
        rotation = matrix[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        np.testing.assert_allclose(matrix[3], [0, 0, 0, 1])
        # Angles about x, y, z (R = Rz Ry Rx) and the shift of the rotation centre.
        angles = np.degrees(
            [
                np.arctan2(rotation[2, 1], rotation[2, 2]),
                -np.arcsin(rotation[2, 0]),
                np.arctan2(rotation[1, 0], rotation[0, 0]),
            ]
        )
        np.testing.assert_allclose(
            angles, row[["rot_x_deg", "rot_y_deg", "rot_z_deg"]].astype(float), atol=1e-9
        )
        assert np.all(np.abs(angles) <= 3), (case_id, angles)
        centre = row[["centre_x_mm", "centre_y_mm", "centre_z_mm"]].to_numpy(float)
        shift = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
        assert np.all(np.abs(shift) <= 5), (case_id, shift)
        assert np.abs(shift).max() > 0, case_id


def test_recorded_misalignment_matches_the_images(cases, truth):
    """Sampling the T1 through the recorded matrix lines its body up with the T2's.

    The identity (ignoring the motion) and the inverse matrix (the motion the wrong
    way round) must both do worse, so the check can tell a wrong matrix apart.
    """
    for case_id, images in cases.items():
        matrix = misalignment_matrix(truth.loc[case_id])
        t1_body = _body_region(np.asarray(images["t1"].dataobj, dtype=np.float32))
        t2_body = _body_region(np.asarray(images["t2"].dataobj, dtype=np.float32))
        grids = (t1_body, images["t1"].affine, t2_body, images["t2"].affine)
        recorded = _dice_on_t2_grid(matrix, *grids)
        identity = _dice_on_t2_grid(np.eye(4), *grids)
        inverse = _dice_on_t2_grid(np.linalg.inv(matrix), *grids)
        assert recorded > 0.94, (case_id, recorded)  # ghosting costs a little
        assert recorded > identity and recorded > inverse, (case_id, recorded, identity, inverse)
        row = truth.loc[case_id]
        if np.hypot(row["shift_x_mm"], row["shift_y_mm"]) > 1.5:  # a visible in-plane shift
            assert recorded - identity > 0.02, (case_id, recorded, identity)


def test_truth_json_of_each_case_matches_the_truth_table(cohort_dir, truth):
    for case_id in truth.index:
        record = json.loads((cohort_dir / case_id / "truth.json").read_text())
        assert record["shift_x_mm"] == pytest.approx(truth.loc[case_id, "shift_x_mm"])
        assert record["tumour_inside_body"] == bool(truth.loc[case_id, "tumour_inside_body"])


# ---------------------------------------------------------------------------
# Resuming.


@pytest.fixture
def counted_cases(monkeypatch) -> list[int]:
    """Record the index of every case that generate_cohort actually generates."""
    calls: list[int] = []
    original = phantom.generate_case

    def counting(case, index, settings):
        calls.append(index)
        return original(case, index, settings)

    monkeypatch.setattr(phantom, "generate_case", counting)
    return calls


def test_resume_regenerates_only_the_missing_case_and_equals_the_original(
    cohort_dir, tmp_path, counted_cases, phantom_settings
):
    copy = tmp_path / "cohort"
    shutil.copytree(cohort_dir, copy)
    shutil.rmtree(copy / "MSTT_003")
    (copy / "cohort.csv").unlink()

    generate_cohort(copy, phantom_settings, workers=1, progress=False)

    assert counted_cases == [2]  # MSTT_003 is the third case
    _assert_same_arrays(_arrays(cohort_dir), _arrays(copy))
    for name in ("cohort.csv", TRUTH_FILE):
        assert (copy / name).read_text() == (cohort_dir / name).read_text()
    assert not list(copy.glob(".*partial"))


def test_finished_cohort_is_not_generated_again(cohort_dir, tmp_path, counted_cases, phantom_settings):
    copy = tmp_path / "cohort"
    shutil.copytree(cohort_dir, copy)
    assert generate_cohort(copy, phantom_settings, workers=1, progress=False) == copy / "cohort.csv"
    assert counted_cases == []


def test_folder_made_with_other_settings_is_refused_untouched(cohort_dir, tmp_path, phantom_settings):
    copy = tmp_path / "cohort"
    shutil.copytree(cohort_dir, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    other = replace(phantom_settings, seed=1)
    with pytest.raises(ValueError, match="other settings"):
        generate_cohort(copy, other, workers=1, progress=False)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
