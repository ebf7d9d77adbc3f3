"""Tests for mstt_lib.registration: T1 onto T2 with ANTs, checked against the phantom's truth.

The first two cases of the session's synthetic cohort (``tests/conftest.py``: 128 x 128 x 16
T2 grid) are registered once for the module. Its first case is registered onto the T2 grid and
its second onto the T1 grid (the larger one each time), so both ways of writing
the pair are covered. Tests that need a broken input write it beside the cohort and
register into a folder of their own.

ANTs samples the Mattes metric at random; ``register_cohort`` runs it in fresh
processes seeded and single-threaded through ANTs' own environment variables, so the
accuracy tests are reproducible (at 128 x 128 the worst residual is about 0.5 mm).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mstt_lib import registration
from mstt_lib.cohort import read_cohort
from mstt_lib.geometry import misalignment_matrix
from mstt_lib.io import save_nifti
from mstt_lib.phantom import TRUTH_FILE
from mstt_lib.registration import (
    RESULTS_FILE,
    RegistrationSettings,
    read_transform_matrix,
    register_case,
    register_cohort,
)

REGISTERED_FILES = ("t1.nii.gz", "t2.nii.gz", "mask.nii.gz")


@pytest.fixture(scope="module")
def cohort_dir(phantom_subset) -> Path:
    return phantom_subset(2)


@pytest.fixture(scope="module")
def cases(cohort_dir) -> pd.DataFrame:
    table, problems = read_cohort(cohort_dir)
    assert not problems
    return table


@pytest.fixture(scope="module")
def truth(cohort_dir) -> pd.DataFrame:
    return pd.read_csv(cohort_dir / TRUTH_FILE)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, cases, truth) -> tuple[Path, pd.DataFrame]:
    """(output folder, quality table) of registering the cohort with the default settings."""
    out = tmp_path_factory.mktemp("registered")
    return out, register_cohort(cases, out, RegistrationSettings(), truth, workers=1, progress=False)


def _fov_corners(image: nib.Nifti1Image) -> np.ndarray:
    """World positions (mm) of the 8 outer corners (voxel edges) of an image's field of view."""
    edges = [(-0.5, n - 0.5) for n in image.shape]
    ijk = np.array([[i, j, k] for i in edges[0] for j in edges[1] for k in edges[2]])
    return ijk @ image.affine[:3, :3].T + image.affine[:3, 3]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------------
# Accuracy against the recorded misalignment.


def test_registration_recovers_the_recorded_rigid_offset_within_1_mm_and_1_degree(registered, cases):
    _, results = registered
    assert sorted(results["case_id"]) == sorted(cases["case_id"])
    for row in results.to_dict("records"):
        case_id = row["case_id"]
        assert row["status"] == "ok", case_id
        assert row["transform"] == "rigid", case_id
        assert row["residual_mm_max"] <= 1.0, case_id
        assert row["rotation_error_deg"] <= 1.0, case_id
        # there was something to recover, and most of it was recovered
        assert row["misalignment_mm_mean"] > 1.5, case_id
        assert row["residual_mm_mean"] < 0.25 * row["misalignment_mm_mean"], case_id
        assert row["mi_after"] > row["mi_before"], case_id


def test_written_transform_matches_the_recorded_misalignment_at_the_t2_fov_corners(registered, cases, truth):
    # Independent of the module's own residual: read the .mat file back and compare
    # where it sends the corners of the T2 field of view with where the truth sends them.
    out, _ = registered
    truth_rows = truth.set_index("case_id")
    for row in cases.to_dict("records"):
        corners = _fov_corners(nib.load(row["t2"]))
        found = read_transform_matrix(out / row["case_id"] / "t1_to_t2_0.mat")
        expected = misalignment_matrix(truth_rows.loc[row["case_id"]])
        error = np.linalg.norm(_apply(found, corners) - _apply(expected, corners), axis=1)
        unregistered = np.linalg.norm(corners - _apply(expected, corners), axis=1)
        assert unregistered.max() > 2.0, row["case_id"]  # the identity would fail this test
        assert error.max() <= 1.0, (row["case_id"], error.max())
        np.testing.assert_allclose(found[:3, :3].T @ found[:3, :3], np.eye(3), atol=1e-4)  # rigid


def test_quality_table_is_written_as_registration_csv(registered):
    out, results = registered
    written = pd.read_csv(out / RESULTS_FILE)
    assert written["case_id"].tolist() == results["case_id"].tolist()
    assert written["status"].tolist() == results["status"].tolist()
    np.testing.assert_allclose(written["residual_mm_max"], results["residual_mm_max"])


# ---------------------------------------------------------------------------
# The registered cohort.


def test_registered_cohort_lists_every_ok_case_with_its_clinical_columns(registered, cases):
    out, _ = registered
    table, problems = read_cohort(out)
    assert not problems
    assert table["case_id"].tolist() == cases["case_id"].tolist()
    for column in ("tissue", "site", "diagnosis", "annotation_modality"):
        assert table[column].tolist() == cases[column].tolist(), column
    for row in table.to_dict("records"):
        for column in ("t1", "t2", "mask"):
            assert row[column] == str((out / row["case_id"] / f"{column}.nii.gz").resolve())


def test_registered_t1_t2_and_mask_share_the_grid_of_the_larger_original_image(registered, cases):
    out, results = registered
    grid_of = results.set_index("case_id")["grid"]
    assert set(grid_of) == {"T1", "T2"}  # the fixture covers both ways of writing the pair
    for row in cases.to_dict("records"):
        originals = {name: nib.load(row[name.lower()]) for name in ("T1", "T2")}
        larger = max(originals, key=lambda name: np.prod(originals[name].shape))
        assert grid_of[row["case_id"]] == larger, row["case_id"]
        for name in REGISTERED_FILES:
            image = nib.load(out / row["case_id"] / name)
            assert image.shape == originals[larger].shape, (row["case_id"], name)
            np.testing.assert_allclose(image.affine, originals[larger].affine, atol=1e-4)


def test_registered_mask_keeps_the_tumour_volume(registered, cases):
    out, results = registered
    grid_of = results.set_index("case_id")["grid"]
    for row in cases.to_dict("records"):
        original = nib.load(row["mask"])
        written = nib.load(out / row["case_id"] / "mask.nii.gz")
        before, after = np.asarray(original.dataobj), np.asarray(written.dataobj)
        assert set(np.unique(after)) == {0, 1}
        if grid_of[row["case_id"]] == "T2":  # the mask's own grid: copied as is
            np.testing.assert_array_equal(after, before)
        volume_before = before.sum() * abs(np.linalg.det(original.affine[:3, :3]))  # mm^3
        volume_after = after.sum() * abs(np.linalg.det(written.affine[:3, :3]))
        assert volume_after == pytest.approx(volume_before, rel=0.1), row["case_id"]


# ---------------------------------------------------------------------------
# Resuming, and settings that do not match the folder.


def test_a_second_call_resumes_without_registering_again(registered, cases, truth, monkeypatch, capfd):
    out, results = registered
    before = _mtimes(out)
    # every case registered: read here, with no worker processes and no progress bar
    monkeypatch.setattr(registration, "map_cases", lambda *a, **k: pytest.fail("workers started"))
    capfd.readouterr()
    again = register_cohort(cases, out, RegistrationSettings(), truth=truth, workers=2)
    assert "registration" not in capfd.readouterr().err
    after = _mtimes(out)
    for case_id in cases["case_id"]:
        for name in ("result.json", "t1_to_t2_0.mat", *REGISTERED_FILES):
            key = f"{case_id}/{name}"
            assert after[key] == before[key], key
    pd.testing.assert_frame_equal(again, results)


def test_an_interrupted_run_registers_only_the_cases_it_had_left_in_their_order(
    registered, cases, truth, tmp_path, monkeypatch
):
    out, results = registered
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    left = cases["case_id"].iloc[1]
    shutil.rmtree(partial / left)
    mapped, real = [], registration.map_cases

    def recording(function, jobs, *args, **kwargs):
        mapped.extend(job[0]["case_id"] for job in jobs)
        return real(function, jobs, *args, **kwargs)  # fresh processes, seeded as always

    monkeypatch.setattr(registration, "map_cases", recording)
    again = register_cohort(cases, partial, RegistrationSettings(), truth=truth, workers=1, progress=False)
    assert mapped == [left]
    assert list(again["case_id"]) == list(results["case_id"])
    assert (again["status"] == results["status"]).all() and (partial / left / "result.json").is_file()


def test_a_case_whose_input_file_changed_is_registered_again(registered, cases, truth, tmp_path, monkeypatch):
    """Same case id, same folder, a new T1 (a corrected scan, or another cohort of that name):
    its old registration must not be reused, and the other cases are not redone."""
    out, results = registered
    rerun = tmp_path / "rerun"
    shutil.copytree(out, rerun)
    changed = cases.copy()
    case_id = changed["case_id"].iloc[0]
    new_t1 = tmp_path / "new_t1.nii.gz"
    shutil.copyfile(changed["t1"].iloc[0], new_t1)  # same voxels, a file written later
    changed.loc[0, "t1"] = str(new_t1)
    mapped, real = [], registration.map_cases

    def recording(function, jobs, *args, **kwargs):
        mapped.extend(job[0]["case_id"] for job in jobs)
        return real(function, jobs, *args, **kwargs)

    monkeypatch.setattr(registration, "map_cases", recording)
    again = register_cohort(changed, rerun, RegistrationSettings(), truth=truth, workers=1, progress=False)
    assert mapped == [case_id]
    assert list(again["case_id"]) == list(results["case_id"]) and (again["status"] == "ok").all()
    assert json.loads((rerun / case_id / "inputs.json").read_text())["t1"][1] == new_t1.stat().st_mtime_ns


def test_a_case_registered_before_inputs_were_recorded_is_kept_and_its_inputs_recorded(
    registered, cases, truth, tmp_path, monkeypatch
):
    """An existing work folder is not registered again on upgrade (that would rename the slice
    cache and retrain every run); its cases' inputs are recorded from then on."""
    out, results = registered
    older = tmp_path / "older"
    shutil.copytree(out, older)
    for case_id in cases["case_id"]:
        (older / case_id / "inputs.json").unlink()
    monkeypatch.setattr(registration, "map_cases", lambda *a, **k: pytest.fail("registered again"))
    again = register_cohort(cases, older, RegistrationSettings(), truth=truth, workers=1, progress=False)
    pd.testing.assert_frame_equal(again, results)
    assert all((older / c / "inputs.json").is_file() for c in cases["case_id"])


def test_other_settings_into_the_same_folder_are_refused(registered, cases, truth):
    out, _ = registered
    settings_before = (out / "settings.json").read_text()
    with pytest.raises(ValueError, match="other settings"):
        register_cohort(cases, out, RegistrationSettings(seed=1), truth=truth, workers=1, progress=False)
    assert (out / "settings.json").read_text() == settings_before


def test_an_unknown_transform_is_refused_with_the_choices(cases, tmp_path):
    row = pd.Series(cases.iloc[0])
    with pytest.raises(ValueError, match=r"unknown transform 'bspline'.*affine.*rigid.*syn"):
        register_case(row, tmp_path, RegistrationSettings(transform="bspline"))


# ---------------------------------------------------------------------------
# Bad input.


def test_t1_that_does_not_overlap_the_t2_is_an_error_row_and_left_out_of_the_cohort(
    registered, cases, truth, tmp_path
):
    out, _ = registered
    good, bad = cases["case_id"].tolist()
    far = nib.load(cases.loc[cases["case_id"] == bad, "t1"].item())
    moved = far.affine.copy()
    moved[0, 3] += 1000.0  # 1 m to the right: no overlap at all
    far_t1 = save_nifti(np.asarray(far.dataobj), moved, tmp_path / "far_t1.nii.gz")
    broken = cases.copy()
    broken.loc[broken["case_id"] == bad, "t1"] = str(far_t1)
    folder = tmp_path / "registered"
    # the good case is already registered: copy it in, so this run resumes it instead of redoing it
    shutil.copytree(out / good, folder / good)
    shutil.copy(out / "settings.json", folder / "settings.json")

    results = register_cohort(broken, folder, RegistrationSettings(), truth=truth, workers=1, progress=False)

    status = results.set_index("case_id")["status"]
    assert status[good] == "ok"
    assert status[bad].startswith("error:") and "do not overlap" in status[bad], status[bad]
    assert results.set_index("case_id").loc[bad, "file"] == str(far_t1)
    table, _ = read_cohort(folder)
    assert table["case_id"].tolist() == [good]
    assert not (folder / bad).exists() and not (folder / f".{bad}.partial").exists()
    assert json.loads((folder / good / "result.json").read_text())["status"] == "ok"


def test_sheared_t2_gives_a_mask_on_the_same_grid_as_the_registered_pair(cases, tmp_path):
    row = cases.iloc[0].copy()  # its T2 is the larger image
    for column in ("t2", "mask"):
        image = nib.load(row[column])
        sheared = image.affine.copy()
        sheared[0, 1] += 0.05  # the same small shear on the T2 and its mask: a valid case
        row[column] = str(save_nifti(np.asarray(image.dataobj), sheared, tmp_path / f"{column}.nii.gz"))
    register_case(row, tmp_path / "registered", RegistrationSettings())
    images = [nib.load(tmp_path / "registered" / row["case_id"] / name) for name in REGISTERED_FILES]
    for image in images[1:]:
        assert image.shape == images[0].shape
        np.testing.assert_allclose(image.affine, images[0].affine, atol=1e-4)


def test_the_same_settings_give_the_same_transform_twice(cases, tmp_path):
    matrices = []
    for run in ("first", "second"):
        settings = RegistrationSettings(seed=3)
        register_cohort(cases.iloc[:1], tmp_path / run, settings, workers=1, progress=False)
        matrices.append(read_transform_matrix(tmp_path / run / cases.iloc[0]["case_id"] / "t1_to_t2_0.mat"))
    np.testing.assert_array_equal(matrices[0], matrices[1])
