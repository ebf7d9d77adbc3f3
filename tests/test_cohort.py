"""Tests for mstt_lib.cohort: reading, validating and exporting the case table.

Every cohort here is built by hand in ``tmp_path``: 8 x 8 x 4 volumes, a mask that
is a 3 x 3 x 2 block on the T2 grid, and a T1 on a grid of its own.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mstt_lib.cohort import (
    CASE_COLUMNS,
    CohortError,
    EmptyMaskWarning,
    load_cohort,
    read_cohort,
    read_nnunet,
    validate_cases,
    write_nnunet,
)
from mstt_lib.io import save_nifti

SHAPE = (8, 8, 4)
T2_AFFINE = np.array(  # 0.8 x 0.8 x 4 mm, LPS
    [[-0.8, 0, 0, 3.0], [0, -0.8, 0, 2.8], [0, 0, 4.0, -6.0], [0, 0, 0, 1]]
)
T1_AFFINE = np.array(  # 1 x 1 x 5 mm, RAS: another grid, as on a real scanner
    [[1.0, 0, 0, -3.5], [0, 1.0, 0, -3.5], [0, 0, 5.0, -7.5], [0, 0, 0, 1]]
)
MASK_BLOCK = (slice(2, 5), slice(3, 6), slice(1, 3))  # 18 tumour voxels


def _volume(seed: int, shape=SHAPE) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1 + 100 * seed


def _mask(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[MASK_BLOCK] = 1
    return mask


def _write_case(root: Path, case_id: str, seed: int = 0) -> dict:
    """One good case folder; returns its table row (paths relative to ``root``)."""
    folder = root / case_id
    save_nifti(_volume(seed), T1_AFFINE, folder / "t1.nii.gz")
    save_nifti(_volume(seed + 1), T2_AFFINE, folder / "t2.nii.gz")
    save_nifti(_mask(), T2_AFFINE, folder / "mask.nii.gz")
    return {
        "case_id": case_id,
        "site": "thigh",
        "diagnosis": "some diagnosis",
        "t1": f"{case_id}/t1.nii.gz",
        "t2": f"{case_id}/t2.nii.gz",
        "mask": f"{case_id}/mask.nii.gz",
    }


def _write_table(root: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)


def _path(root: Path, relative: str) -> str:
    """The absolute path the cohort table resolves a relative entry to."""
    return str((root / relative).resolve())


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, list[dict]]:
    """Three good cases: C1 Fat (annotated on T1), C2 Myxoid, C3 Nerve."""
    rows = []
    for seed, (case_id, tissue) in enumerate([("C1", "Fat"), ("C2", "Myxoid"), ("C3", "Nerve")]):
        row = _write_case(tmp_path, case_id, seed)
        row["tissue"] = tissue
        row["annotation_modality"] = "T1" if tissue == "Fat" else "T2"
        rows.append(row)
    _write_table(tmp_path, rows)
    return tmp_path, rows


def _load(root: Path, **kwargs):
    return load_cohort(root, progress=False, **kwargs)


def _cohort_error(root: Path, **kwargs) -> CohortError:
    with pytest.raises(CohortError) as info:
        _load(root, **kwargs)
    return info.value


# ---------------------------------------------------------------------------
# Reading a good cohort.


def test_good_cohort_loads_every_case_with_no_problems(cohort):
    root, _ = cohort
    table, problems = _load(root)
    assert problems == []
    assert table["case_id"].tolist() == ["C1", "C2", "C3"]
    assert table.columns.tolist()[: len(CASE_COLUMNS)] == CASE_COLUMNS
    assert table["tissue"].tolist() == ["Fat", "Myxoid", "Nerve"]
    assert table["annotation_modality"].tolist() == ["T1", "T2", "T2"]
    assert table.loc[1, "t2"] == _path(root, "C2/t2.nii.gz")
    assert all(Path(p).is_absolute() for p in table["mask"])


def test_tissue_names_are_matched_case_insensitively(cohort):
    root, rows = cohort
    for row, written in zip(rows, ["fat", "MYXOID", " nerve "], strict=True):
        row["tissue"] = written
    _write_table(root, rows)
    table, problems = _load(root)
    assert problems == []
    assert table["tissue"].tolist() == ["Fat", "Myxoid", "Nerve"]


def test_blank_tissue_is_allowed_and_read_as_none(cohort):
    root, rows = cohort
    rows[1]["tissue"] = ""
    _write_table(root, rows)
    table, problems = _load(root)
    assert problems == []
    assert pd.isna(table.loc[1, "tissue"])


def test_absolute_paths_in_the_table_are_kept(cohort):
    root, rows = cohort
    rows[0]["t2"] = str((root / "C1/t2.nii.gz").resolve())
    _write_table(root, rows)
    table, _ = read_cohort(root)
    assert table.loc[0, "t2"] == _path(root, "C1/t2.nii.gz")


def test_folder_without_a_case_table_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cohort.csv"):
        _load(tmp_path)


# ---------------------------------------------------------------------------
# Each bad input: a CohortError naming the case and the file at fault.


def test_modality_with_no_path_names_case_and_modality(cohort):
    root, rows = cohort
    rows[1]["t1"] = ""
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "case C2: missing modality T1: no path in the table" in str(error)
    assert [(p.case_id, p.path) for p in error.problems] == [("C2", None)]


def test_modality_file_not_found_names_case_and_path(cohort):
    root, rows = cohort
    (root / "C2/t2.nii.gz").unlink()
    error = _cohort_error(root)
    assert "case C2: missing modality T2: file not found" in str(error)
    assert _path(root, "C2/t2.nii.gz") in str(error)
    assert error.problems[0].path == _path(root, "C2/t2.nii.gz")


def test_mask_with_no_path_names_the_case(cohort):
    root, rows = cohort
    rows[2]["mask"] = ""
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "case C3: no mask path in the table" in str(error)


def test_unreadable_nifti_names_case_and_path(cohort):
    root, _ = cohort
    (root / "C2/t2.nii.gz").write_bytes(b"\x00garbage, not a NIfTI file\xff" * 20)
    error = _cohort_error(root)
    assert "case C2: not a readable NIfTI file" in str(error)
    assert _path(root, "C2/t2.nii.gz") in str(error)


@pytest.mark.parametrize("shape", [SHAPE, (32, 32, 16)], ids=["header-cut", "voxel-data-cut"])
def test_truncated_nifti_names_case_and_path(cohort, shape):
    root, _ = cohort
    path = root / "C1/t1.nii.gz"
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    save_nifti(data, T1_AFFINE, path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    error = _cohort_error(root)
    assert "case C1: " in str(error)
    assert _path(root, "C1/t1.nii.gz") in str(error)
    assert [p.case_id for p in error.problems] == ["C1"]


def test_mask_shape_mismatch_names_case_mask_and_both_shapes(cohort):
    root, _ = cohort
    save_nifti(np.zeros((8, 8, 3), np.uint8), T2_AFFINE, root / "C3/mask.nii.gz")
    error = _cohort_error(root)
    assert "case C3: mask shape (8, 8, 3) does not match T2 shape (8, 8, 4)" in str(error)
    assert _path(root, "C3/mask.nii.gz") in str(error)


def test_mask_affine_mismatch_names_case_mask_and_the_offset(cohort):
    root, _ = cohort
    moved = T2_AFFINE.copy()
    moved[0, 3] += 1.5  # the mask is 1.5 mm off the T2 grid
    save_nifti(_mask(), moved, root / "C3/mask.nii.gz")
    error = _cohort_error(root)
    assert "case C3: mask affine differs from the T2 affine (by up to 1.5 mm)" in str(error)
    assert _path(root, "C3/mask.nii.gz") in str(error)


def test_mask_affine_within_tolerance_is_accepted(cohort):
    root, _ = cohort
    nudged = T2_AFFINE.copy()
    nudged[0, 3] += 1e-5  # float32 header round-off, far below 1 micrometre
    save_nifti(_mask(), nudged, root / "C3/mask.nii.gz")
    _, problems = _load(root)
    assert problems == []


def test_non_binary_mask_names_case_mask_and_values(cohort):
    root, _ = cohort
    mask = _mask()
    mask[0, 0, 0] = 2
    save_nifti(mask, T2_AFFINE, root / "C2/mask.nii.gz")
    error = _cohort_error(root)
    assert "case C2: mask is not binary: values 0, 1, 2" in str(error)
    assert _path(root, "C2/mask.nii.gz") in str(error)


def test_nan_voxels_name_case_image_and_count(cohort):
    root, _ = cohort
    data = _volume(0)
    data[1, 1, 1] = data[2, 2, 2] = np.nan
    save_nifti(data, T2_AFFINE, root / "C1/t2.nii.gz")
    error = _cohort_error(root)
    assert "case C1: T2 has 2 NaN voxel(s)" in str(error)
    assert _path(root, "C1/t2.nii.gz") in str(error)


def test_header_only_check_does_not_read_voxels(cohort):
    root, _ = cohort
    data = _volume(0)
    data[1, 1, 1] = np.nan
    save_nifti(data, T2_AFFINE, root / "C1/t2.nii.gz")
    table, problems = _load(root, check_voxels=False)
    assert problems == [] and len(table) == 3


def test_duplicate_case_ids_name_the_case_and_the_table_folder(cohort):
    root, rows = cohort
    rows[2]["case_id"] = "C1"
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "case C1: duplicate case id (2 rows)" in str(error)
    assert str(root) in str(error)
    assert [p.case_id for p in error.problems] == ["C1"]


def test_unknown_tissue_names_the_case_and_the_value(cohort):
    root, rows = cohort
    rows[1]["tissue"] = "Bone"
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "case C2: unknown tissue type 'Bone'" in str(error)
    assert "Fibrous" in str(error)  # the valid choices are listed


def test_every_bad_case_is_listed_not_only_the_first(cohort):
    root, rows = cohort
    (root / "C1/t1.nii.gz").unlink()
    rows[2]["tissue"] = "Bone"
    _write_table(root, rows)
    error = _cohort_error(root)
    assert sorted(p.case_id for p in error.problems) == ["C1", "C3"]
    assert "2 bad case(s)" in str(error)
    assert "skip_bad=True" in str(error)


def test_unknown_modality_is_a_value_error(cohort):
    root, _ = cohort
    with pytest.raises(ValueError, match="unknown modalities"):
        _load(root, modalities=("T1", "PD"))


# ---------------------------------------------------------------------------
# The record of cohorts that passed.


def test_a_recorded_cohort_is_not_read_again_until_one_of_its_files_changes(cohort, monkeypatch):
    root, _ = cohort
    record = root / "work" / "checked_cohorts.json"
    first, _ = _load(root, record=record)
    with monkeypatch.context() as patch:
        patch.setattr("mstt_lib.cohort.validate_cases", lambda *a, **k: pytest.fail("read again"))
        again, problems = _load(root, record=record)
    pd.testing.assert_frame_equal(again, first)
    assert problems == []
    save_nifti(_mask((8, 8, 5)), T2_AFFINE, root / "C2/mask.nii.gz")  # a changed file: checked again
    error = _cohort_error(root, record=record)
    assert "case C2: mask shape (8, 8, 5) does not match T2 shape (8, 8, 4)" in str(error)


def test_a_cohort_that_warned_is_not_recorded_and_warns_every_time(cohort):
    root, _ = cohort
    record = root / "work" / "checked_cohorts.json"
    save_nifti(np.zeros(SHAPE, np.uint8), T2_AFFINE, root / "C2/mask.nii.gz")
    for _ in range(2):
        with pytest.warns(EmptyMaskWarning, match="C2"):
            table, _ = _load(root, record=record)
        assert table["case_id"].tolist() == ["C1", "C2", "C3"]
    assert not record.exists()


# ---------------------------------------------------------------------------
# Empty masks and skip_bad.


def test_empty_mask_warns_with_case_and_path_and_the_case_is_kept(cohort):
    root, _ = cohort
    save_nifti(np.zeros(SHAPE, np.uint8), T2_AFFINE, root / "C2/mask.nii.gz")
    with pytest.warns(EmptyMaskWarning) as record:
        table, problems = _load(root)
    assert problems == []
    assert table["case_id"].tolist() == ["C1", "C2", "C3"]
    messages = [str(w.message) for w in record if w.category is EmptyMaskWarning]
    assert len(messages) == 1
    assert "C2" in messages[0] and _path(root, "C2/mask.nii.gz") in messages[0]


def test_good_cohort_gives_no_empty_mask_warning(cohort):
    root, _ = cohort
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyMaskWarning)
        _load(root)


def test_skip_bad_drops_bad_cases_and_lists_every_one(cohort):
    root, rows = cohort
    rows.append({**_write_case(root, "C4", 4), "tissue": "Vascular"})
    rows.append({**_write_case(root, "C5", 5), "tissue": "banana"})
    (root / "C2/t2.nii.gz").write_bytes(b"garbage")
    mask = _mask()
    mask[0, 0, 0] = 3
    save_nifti(mask, T2_AFFINE, root / "C4/mask.nii.gz")
    _write_table(root, rows)

    table, problems = _load(root, skip_bad=True)
    assert table["case_id"].tolist() == ["C1", "C3"]
    assert table.index.tolist() == [0, 1]
    assert sorted(p.case_id for p in problems) == ["C2", "C4", "C5"]
    # Nothing disappears silently: every case is either kept or listed.
    assert set(table["case_id"]) | {p.case_id for p in problems} == {r["case_id"] for r in rows}
    by_case = {p.case_id: p for p in problems}
    assert by_case["C2"].path == _path(root, "C2/t2.nii.gz")
    assert by_case["C4"].path == _path(root, "C4/mask.nii.gz")
    assert str(by_case["C4"]).startswith("case C4: mask is not binary")


def test_skip_bad_drops_every_row_of_a_duplicate_id_and_lists_it_once(cohort):
    root, rows = cohort
    rows[2]["case_id"] = "C1"
    _write_table(root, rows)
    table, problems = _load(root, skip_bad=True)
    assert table["case_id"].tolist() == ["C2"]
    assert [p.case_id for p in problems] == ["C1"]


def test_skip_bad_keeps_an_empty_mask_case(cohort):
    root, _ = cohort
    save_nifti(np.zeros(SHAPE, np.uint8), T2_AFFINE, root / "C1/mask.nii.gz")
    with pytest.warns(EmptyMaskWarning):
        table, problems = _load(root, skip_bad=True)
    assert problems == [] and "C1" in table["case_id"].tolist()


def test_validate_cases_uses_table_level_problems_given_to_it(cohort):
    root, _ = cohort
    table, problems = read_cohort(root)
    assert problems == []
    good, skipped = validate_cases(table, problems, skip_bad=True, progress=False)
    assert len(good) == 3 and skipped == []


# ---------------------------------------------------------------------------
# A T1-only cohort: the mask lies on the T1 grid.


@pytest.fixture
def t1_only_cohort(tmp_path) -> Path:
    rows = []
    for case_id in ("A1", "A2"):
        save_nifti(_volume(1), T1_AFFINE, tmp_path / case_id / "t1.nii.gz")
        save_nifti(_mask(), T1_AFFINE, tmp_path / case_id / "mask.nii.gz")
        rows.append(
            {
                "case_id": case_id,
                "tissue": "Fat",
                "t1": f"{case_id}/t1.nii.gz",
                "t2": "",
                "mask": f"{case_id}/mask.nii.gz",
            }
        )
    _write_table(tmp_path, rows)
    return tmp_path


def test_t1_only_cohort_validates_with_t1_modality(t1_only_cohort):
    table, problems = _load(t1_only_cohort, modalities=("T1",))
    assert problems == []
    assert table["case_id"].tolist() == ["A1", "A2"]
    assert table["t2"].isna().all()


def test_t1_only_cohort_checks_the_mask_against_the_t1_grid(t1_only_cohort):
    save_nifti(_mask(), T2_AFFINE, t1_only_cohort / "A2/mask.nii.gz")
    error = _cohort_error(t1_only_cohort, modalities=("T1",))
    assert "case A2: mask affine differs from the T1 affine" in str(error)
    assert _path(t1_only_cohort, "A2/mask.nii.gz") in str(error)


def test_t1_only_cohort_asked_for_t2_reports_the_missing_modality(t1_only_cohort):
    error = _cohort_error(t1_only_cohort)
    assert sorted(p.case_id for p in error.problems) == ["A1", "A2"]
    assert "missing modality T2: no path in the table" in str(error)


# ---------------------------------------------------------------------------
# nnU-Net's raw layout.


def _nifti(path) -> nib.Nifti1Image:
    return nib.load(path)


def test_write_nnunet_names_files_and_channels_as_nnunet_expects(cohort, tmp_path_factory):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    dataset_file = write_nnunet(table, out, progress=False)

    assert dataset_file == out / "dataset.json"
    dataset = json.loads(dataset_file.read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T2"}
    assert dataset["labels"] == {"background": 0, "tumour": 1}
    assert dataset["numTraining"] == 3
    assert dataset["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"{c}_{k:04d}.nii.gz" for c in ("C1", "C2", "C3") for k in (0, 1)
    ]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["C1.nii.gz", "C2.nii.gz", "C3.nii.gz"]
    # _0000 is the T1 (resampled), _0001 the T2 (copied voxel for voxel).
    np.testing.assert_array_equal(_nifti(out / "imagesTr/C2_0001.nii.gz").get_fdata(), _volume(2))


def test_nnunet_round_trip_keeps_case_ids_tissues_and_mask_voxels(cohort, tmp_path_factory):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, progress=False)

    back, problems = _load(out)
    assert problems == []
    assert back["case_id"].tolist() == ["C1", "C2", "C3"]
    for column in ("tissue", "site", "diagnosis", "annotation_modality"):
        assert back[column].tolist() == table[column].tolist(), column
    for _, row in back.iterrows():
        assert row["mask"] == str(out / "labelsTr" / f"{row['case_id']}.nii.gz")
        assert row["t1"] == str(out / "imagesTr" / f"{row['case_id']}_0000.nii.gz")
        label = _nifti(row["mask"])
        np.testing.assert_array_equal(np.asarray(label.dataobj), _mask())
        np.testing.assert_allclose(label.affine, T2_AFFINE, atol=1e-5)
    # read_nnunet alone gives the same table as the layout picked by load_cohort.
    direct, _ = read_nnunet(out)
    assert direct["case_id"].tolist() == back["case_id"].tolist()


def test_write_nnunet_resamples_t1_onto_the_mask_grid(tmp_path):
    # T1: a linear ramp in world coordinates on a coarse grid (2 mm, RAS) that covers
    # the T2 grid with room to spare; linear interpolation reproduces a ramp exactly.
    t1_shape = (12, 12, 12)
    t1_affine = np.array([[2.0, 0, 0, -11.0], [0, 2.0, 0, -11.0], [0, 0, 3.0, -16.5], [0, 0, 0, 1]])

    def ramp(world):
        return 100 + world[..., 0] + 2 * world[..., 1] + 0.5 * world[..., 2]

    ijk = np.stack(np.meshgrid(*map(np.arange, t1_shape), indexing="ij"), axis=-1)
    save_nifti(
        ramp(ijk @ t1_affine[:3, :3].T + t1_affine[:3, 3]).astype(np.float32),
        t1_affine,
        tmp_path / "R1/t1.nii.gz",
    )
    save_nifti(_volume(0), T2_AFFINE, tmp_path / "R1/t2.nii.gz")
    save_nifti(_mask(), T2_AFFINE, tmp_path / "R1/mask.nii.gz")
    _write_table(
        tmp_path,
        [
            {
                "case_id": "R1",
                "tissue": "Fat",
                "t1": "R1/t1.nii.gz",
                "t2": "R1/t2.nii.gz",
                "mask": "R1/mask.nii.gz",
            }
        ],
    )
    table, _ = _load(tmp_path)
    out = tmp_path / "nnunet"
    write_nnunet(table, out, progress=False)

    exported = _nifti(out / "imagesTr/R1_0000.nii.gz")
    assert exported.shape == SHAPE
    np.testing.assert_allclose(exported.affine, T2_AFFINE, atol=1e-5)
    mask_ijk = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)
    expected = ramp(mask_ijk @ T2_AFFINE[:3, :3].T + T2_AFFINE[:3, 3])
    np.testing.assert_allclose(exported.get_fdata(), expected, atol=1e-3)


def test_t1_only_nnunet_export_reads_back_with_one_channel(t1_only_cohort, tmp_path_factory):
    table, _ = _load(t1_only_cohort, modalities=("T1",))
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, modalities=("T1",), progress=False)
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "T1"}
    back, problems = _load(out, modalities=("T1",))
    assert problems == [] and back["case_id"].tolist() == ["A1", "A2"]
    assert back["t2"].isna().all()


def test_nnunet_missing_channel_file_names_case_and_path(cohort, tmp_path_factory):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, progress=False)
    (out / "imagesTr/C2_0001.nii.gz").unlink()
    error = _cohort_error(out)
    assert "case C2: missing modality T2: file not found" in str(error)
    assert str(out / "imagesTr/C2_0001.nii.gz") in str(error)


# ---------------------------------------------------------------------------
# The IBSI/STS layout: <case>/MR_T1_image.nii.gz and <case>/MR_T1_mask.nii.gz.


def _write_ibsi_case(root: Path, case_id: str, mask: bool = True) -> None:
    save_nifti(_volume(0), T1_AFFINE, root / case_id / "MR_T1_image.nii.gz")
    if mask:
        save_nifti(_mask(), T1_AFFINE, root / case_id / "MR_T1_mask.nii.gz")


def test_ibsi_layout_reads_t1_only_cases_named_by_their_folder(tmp_path):
    from mstt_lib.cohort import is_ibsi_layout, read_ibsi

    for case_id in ("STS_002", "STS_001"):
        _write_ibsi_case(tmp_path, case_id)
    (tmp_path / "notes").mkdir()  # a folder without images is not a case
    assert is_ibsi_layout(tmp_path)
    table, problems = read_ibsi(tmp_path)
    assert problems == []
    assert list(table["case_id"]) == ["STS_001", "STS_002"]
    assert table["t2"].isna().all() and table["tissue"].isna().all()
    assert table.loc[0, "mask"] == str((tmp_path / "STS_001" / "MR_T1_mask.nii.gz").resolve())
    cases, skipped = load_cohort(tmp_path, modalities=("T1",), progress=False)
    assert len(cases) == 2 and skipped == []


def test_ibsi_case_without_its_mask_is_named_with_the_missing_file(tmp_path):
    _write_ibsi_case(tmp_path, "STS_001")
    _write_ibsi_case(tmp_path, "STS_007", mask=False)
    with pytest.raises(CohortError, match=r"STS_007: no T1 mask .*STS_007/MR_T1_mask\.nii\.gz"):
        load_cohort(tmp_path, modalities=("T1",), progress=False)
    cases, skipped = load_cohort(tmp_path, modalities=("T1",), skip_bad=True, progress=False)
    assert list(cases["case_id"]) == ["STS_001"] and [p.case_id for p in skipped] == ["STS_007"]


def test_a_folder_in_no_known_layout_says_which_layouts_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="IBSI"):
        load_cohort(tmp_path, progress=False)


# ---------------------------------------------------------------------------
# Issue 13: Inf voxels, unsafe or empty case ids, empty tables, malformed dataset.json.


@pytest.mark.parametrize(
    "value, expected", [(np.inf, "1 +Inf voxel(s)"), (-np.inf, "1 -Inf voxel(s)")], ids=["+inf", "-inf"]
)
def test_inf_voxels_are_refused_like_nan_naming_case_image_and_count(cohort, value, expected):
    root, _ = cohort
    data = _volume(0)
    data[3, 3, 3] = value
    save_nifti(data, T1_AFFINE, root / "C2/t1.nii.gz")
    error = _cohort_error(root)
    assert f"case C2: T1 has {expected}" in str(error)
    assert _path(root, "C2/t1.nii.gz") in str(error)


def test_inf_in_the_mask_is_refused_naming_the_mask(cohort):
    root, _ = cohort
    mask = _mask().astype(np.float32)
    mask[0, 0, 0] = np.inf
    save_nifti(mask, T2_AFFINE, root / "C3/mask.nii.gz")
    error = _cohort_error(root)
    assert "case C3: 1 +Inf voxel(s)" in str(error) and _path(root, "C3/mask.nii.gz") in str(error)


@pytest.mark.parametrize("case_id", ["../ESCAPED", "a/b", "/tmp/abs", "..", ".", "with space", "tab\tid"])
def test_a_case_id_that_is_not_a_plain_name_is_refused_at_reading(cohort, case_id):
    root, rows = cohort
    rows[1]["case_id"] = case_id
    _write_table(root, rows)
    error = _cohort_error(root)
    assert f"case {case_id.strip()}: case id {case_id.strip()!r} is not a plain name" in str(error)
    assert str(root / "cohort.csv") in str(error)
    table, skipped = _load(root, skip_bad=True)
    assert table["case_id"].tolist() == ["C1", "C3"] and [p.case_id for p in skipped] == [case_id.strip()]


def test_an_empty_case_id_is_refused_with_its_row(cohort):
    root, rows = cohort
    rows[2]["case_id"] = "  "
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "a row with no case id: empty case id (row 3)" in str(error)
    assert str(root / "cohort.csv") in str(error)


def test_a_zero_byte_case_table_names_the_file(cohort):
    root, _ = cohort
    (root / "cohort.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file") as info:
        _load(root)
    assert str(root / "cohort.csv") in str(info.value)


def test_a_case_table_with_only_a_header_is_an_error_not_zero_cases(cohort):
    root, _ = cohort
    (root / "cohort.csv").write_text(",".join(CASE_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="no cases") as info:
        _load(root)
    assert str(root / "cohort.csv") in str(info.value)


def test_a_case_table_that_is_not_csv_names_the_file(cohort):
    root, _ = cohort
    (root / "cohort.csv").write_bytes(b'case_id,t1\n\xff\xfe\x00bad,"unclosed\n')
    with pytest.raises(ValueError, match="not a readable CSV table") as info:
        _load(root)
    assert str(root / "cohort.csv") in str(info.value)


def test_a_path_with_a_nul_byte_is_a_problem_of_its_case(cohort):
    root, rows = cohort
    rows[0]["t1"] = "C1/t1\0.nii.gz"
    _write_table(root, rows)
    error = _cohort_error(root)
    assert "case C1: t1 path" in str(error) and "is not usable" in str(error)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"channel_names": {"0": "T1"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"channel_names": ["T1", "T2"]}', "channel_names should map"),
        ('{"channel_names": {"zero": "T1"}}', "channel_names should map"),
        ('{"file_ending": 7}', "file_ending"),
    ],
    ids=["truncated", "list", "channel-list", "channel-key", "file-ending"],
)
def test_a_malformed_nnunet_dataset_json_names_the_file(cohort, tmp_path_factory, text, expected):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, progress=False)
    (out / "dataset.json").write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        _load(out)
    assert str(out / "dataset.json") in str(info.value)


def test_an_nnunet_dataset_without_labels_is_an_error_not_zero_cases(cohort, tmp_path_factory):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, progress=False)
    for label in (out / "labelsTr").iterdir():
        label.unlink()
    with pytest.raises(ValueError, match="no cases"):
        _load(out)


def test_an_nnunet_case_file_that_is_not_a_plain_name_is_refused(cohort, tmp_path_factory):
    root, _ = cohort
    table, _ = _load(root)
    out = tmp_path_factory.mktemp("nnunet")
    write_nnunet(table, out, progress=False)
    for old, new in (
        ("labelsTr/C2.nii.gz", "labelsTr/C 2.nii.gz"),
        ("imagesTr/C2_0000.nii.gz", "imagesTr/C 2_0000.nii.gz"),
    ):
        (out / old).rename(out / new)
    error = _cohort_error(out)
    assert "case C 2: case id 'C 2' is not a plain name" in str(error)


def test_an_ibsi_case_folder_that_is_not_a_plain_name_is_refused(tmp_path):
    _write_ibsi_case(tmp_path, "STS_001")
    _write_ibsi_case(tmp_path, "STS 002")
    with pytest.raises(CohortError, match="case STS 002: case id 'STS 002' is not a plain name"):
        load_cohort(tmp_path, modalities=("T1",), progress=False)


def test_images_only_reading_takes_plain_channel_files_and_checks_their_ids(tmp_path):
    from mstt_lib.cohort import read_cases

    save_nifti(_volume(0), T1_AFFINE, tmp_path / "A1_0000.nii.gz")
    save_nifti(_volume(1), T2_AFFINE, tmp_path / "A1_0001.nii.gz")
    save_nifti(_volume(2), T2_AFFINE, tmp_path / "B2_0001.nii.gz")  # no T1: reported when validated
    table, problems = read_cases(tmp_path, masks=False)
    assert problems == [] and table["case_id"].tolist() == ["A1", "B2"]
    good, bad = validate_cases(table, problems, skip_bad=True, progress=False, masks=False)
    assert good["case_id"].tolist() == ["A1"]
    assert [str(p) for p in bad] == [
        f"case B2: missing modality T1: file not found ({(tmp_path / 'B2_0000.nii.gz').resolve()})"
    ]
    save_nifti(_volume(0), T1_AFFINE, tmp_path / "x y_0000.nii.gz")
    _, problems = read_cases(tmp_path, masks=False)
    assert [p.case_id for p in problems] == ["x y"]
    with pytest.raises(FileNotFoundError, match="holds neither"):
        read_cases(tmp_path)  # plain files have no masks: not a training cohort
