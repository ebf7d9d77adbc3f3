"""Tests for mstt_lib.labelstudio: PNG + task export, and import of Label Studio brush annotations."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from label_studio_converter.brush import decode_rle, mask2rle
from PIL import Image

from mstt_lib.io import CaseFileError, save_nifti
from mstt_lib.labelstudio import (
    CONFIG_FILE,
    SIDECAR_FILE,
    LabelStudioError,
    export_volume,
    import_annotations,
    png_to_slice,
    slice_to_png,
)

CASE = "MSTT-007"
SHAPE = (37, 29, 11)  # no two axes alike, so a transposed or swapped axis cannot pass
AFFINE = np.array(
    [
        [-0.8, 0.1, 0.0, 40.0],
        [0.05, -0.9, 0.0, 25.0],
        [0.0, 0.0, 3.5, -60.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _volume() -> np.ndarray:
    rng = np.random.default_rng(3)
    i, j, k = np.indices(SHAPE)
    return (100 * i + 7 * j + 1000 * k + rng.normal(0, 5, SHAPE)).astype(np.float32)


def _mask() -> np.ndarray:
    i, j, k = np.indices(SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    ring = ((i - 12) ** 2 + (j - 14) ** 2 <= 49) & ((i - 12) ** 2 + (j - 14) ** 2 > 4)  # a blob with a hole
    mask |= ring & (k >= 2) & (k <= 6)
    mask |= (i >= 27) & (i <= 33) & (j >= 3) & (j <= 6) & (k >= 4) & (k <= 8)  # a second, off-centre blob
    mask[0, 28, 9] = True  # a single voxel in a corner
    mask[36, 0, 10] = True
    return mask


@pytest.fixture()
def case(tmp_path):
    image = save_nifti(_volume(), AFFINE, tmp_path / "src" / "t2.nii.gz", dtype=np.float32)
    mask = save_nifti(_mask().astype(np.uint8), AFFINE, tmp_path / "src" / "mask.nii.gz", dtype=np.uint8)
    return image, mask


def _as_labelstudio_export(tasks: list[dict]) -> list[dict]:
    """What Label Studio's 'JSON' export holds once an annotator accepted every pre-annotation."""
    exported = []
    for number, task in enumerate(tasks, start=1):
        results = [
            dict(r, id=f"r{number}-{n}", origin="prediction")
            for p in task.get("predictions", [])
            for n, r in enumerate(p["result"])
        ]
        exported.append(
            {
                "id": number,
                "data": task["data"],
                "annotations": [{"id": number, "result": results, "was_cancelled": False, "completed_by": 1}],
                "predictions": [],
            }
        )
    return exported


def _write(path, payload) -> str:
    path.write_text(json.dumps(payload))
    return str(path)


def _export(tmp_path, case, **kwargs):
    image, mask = case
    out = tmp_path / "ls" / CASE
    tasks_path = export_volume(image, out, CASE, mask_path=mask, **kwargs)
    return out, json.loads(tasks_path.read_text())


# ---------------------------------------------------------------------------
# Export


def test_export_writes_one_png_and_one_task_per_slice(tmp_path, case):
    out, tasks = _export(tmp_path, case)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == SHAPE[2] == len(tasks)
    for number, task in enumerate(tasks, start=1):
        data = task["data"]
        assert data["patient"] == CASE and data["modality"] == "T2" and data["plane"] == "axial"
        assert data["instance_number"] == number and data["slice_index"] == number - 1
        assert data["image"] == f"/data/local-files/?d={CASE}/{CASE}_T2_axial_{number:03d}.png"
        assert (out / data["image"].rsplit("/", 1)[1]).is_file()
    text = (out / "tasks.json").read_text()
    assert "src" not in text and "t2.nii" not in text  # the task carries the public case id only
    config = (out / CONFIG_FILE).read_text()
    assert "<BrushLabels" in config and 'value="Tumour"' in config and 'value="$image"' in config


def test_png_pixel_is_the_documented_voxel(tmp_path, case):
    out, tasks = _export(tmp_path, case)
    volume = _volume()
    sidecar = json.loads((out / SIDECAR_FILE).read_text())
    lo, hi = sidecar["intensity_window"]["lo"], sidecar["intensity_window"]["hi"]
    expected = np.rint((np.clip(volume, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    for k in (0, 5, SHAPE[2] - 1):
        png = np.asarray(Image.open(out / f"{CASE}_T2_axial_{k + 1:03d}.png"))
        assert png.dtype == np.uint8 and png.shape == (SHAPE[1], SHAPE[0])  # height = axis 1, width = axis 0
        for row, col in ((0, 0), (3, 30), (28, 36), (17, 2)):
            assert png[row, col] == expected[col, row, k]  # PNG row = axis 1, column = axis 0
    assert sidecar["shape"] == list(SHAPE) and np.allclose(sidecar["affine"], AFFINE)
    assert (sidecar["png_width"], sidecar["png_height"]) == (SHAPE[0], SHAPE[1])
    assert sidecar["plane"] == "axial" and sidecar["flip"] is False and len(sidecar["image_sha256"]) == 64


def test_non_finite_voxels_are_black_in_the_png_as_documented(tmp_path):
    volume = _volume()
    volume[30, 2, 0], volume[30, 3, 0], volume[30, 4, 0] = np.inf, -np.inf, np.nan
    image = save_nifti(volume, AFFINE, tmp_path / "src" / "t2.nii.gz", dtype=np.float32)
    out = tmp_path / "ls"
    export_volume(image, out, CASE)
    png = np.asarray(Image.open(out / f"{CASE}_T2_axial_001.png"))
    assert list(png[2:5, 30]) == [0, 0, 0]  # PNG row = axis 1, column = axis 0
    assert png[5, 30] > 0  # the finite neighbour keeps its grey


def test_pre_annotations_are_label_studio_rle(tmp_path, case):
    _, tasks = _export(tmp_path, case)
    mask = _mask()
    for k, task in enumerate(tasks):
        if not mask[:, :, k].any():
            assert "predictions" not in task
            continue
        (result,) = task["predictions"][0]["result"]
        assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["Tumour"]
        assert result["value"]["format"] == "rle"
        width, height = result["original_width"], result["original_height"]
        rgba = decode_rle(bytes(result["value"]["rle"])).reshape(height, width, 4)  # the package's decoder
        assert np.array_equal(rgba[:, :, 3] > 0, mask[:, :, k].T)
        assert result["value"]["rle"] == mask2rle(mask[:, :, k].T.astype(np.uint8) * 255)


# ---------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize(
    "plane,flip", [("axial", False), ("axial", True), ("coronal", False), ("sagittal", True)]
)
def test_round_trip_restores_the_mask_exactly(tmp_path, case, plane, flip):
    out, tasks = _export(tmp_path, case, plane=plane, flip=flip)
    export = _write(tmp_path / "export.json", _as_labelstudio_export(tasks))
    result = import_annotations(export, tmp_path / "masks", case[0], sidecar=out / SIDECAR_FILE)
    assert result == tmp_path / "masks" / f"{CASE}.nii.gz"
    image = nib.load(result)
    assert image.shape == SHAPE and np.allclose(image.affine, AFFINE)
    assert image.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(image.dataobj), _mask().astype(np.uint8))


def test_orientation_helpers_invert_each_other():
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    for plane, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        for flip in (False, True):
            png = slice_to_png(volume, 3, plane, flip)
            assert np.array_equal(png_to_slice(png, plane, flip), np.take(volume, 3, axis=axis))
    assert slice_to_png(volume, 4, "coronal")[2, 5] == volume[5, 4, 2]
    assert slice_to_png(volume, 4, "sagittal")[2, 5] == volume[4, 5, 2]
    assert slice_to_png(volume, 4, "axial", flip=True)[0, 0] == volume[-1, -1, 4]


def test_a_planes_png_shows_the_slice_the_cache_samples_for_that_plane():
    """An annotation drawn on plane p, slice k lands on the slice the training samples call (p, k)."""
    from mstt_lib.slices import PLANES, sample_25d

    volume = np.random.default_rng(0).random(SHAPE)
    for plane in PLANES:
        for index in (1, 3):
            centre = sample_25d(volume[None], plane, index)[1]  # the sample's middle channel
            np.testing.assert_array_equal(slice_to_png(volume, index, plane).T, centre, err_msg=plane)


def test_results_on_one_slice_are_ored_and_unannotated_slices_are_zero(tmp_path, case):
    out, tasks = _export(tmp_path, case)
    exported = _as_labelstudio_export(tasks)
    width, height = SHAPE[0], SHAPE[1]
    left = np.zeros((height, width), dtype=np.uint8)
    left[5:10, 2:6] = 255
    right = np.zeros((height, width), dtype=np.uint8)
    right[8:20, 4:30] = 255

    def brush(mask):
        value = {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Tumour"]}
        return {"type": "brushlabels", "original_width": width, "original_height": height, "value": value}

    for task in exported:
        task["annotations"] = []  # nothing drawn...
    exported[1]["annotations"] = [
        {"result": [brush(left), {"type": "choices", "value": {"choices": ["ok"]}}]},
        {"result": [brush(right)]},  # a second annotator
        {"result": [brush(np.full((height, width), 255, np.uint8))], "was_cancelled": True},
    ]
    exported[1]["predictions"] = [{"result": [brush(np.full((height, width), 255, np.uint8))]}]
    mask = nib.load(import_annotations(_write(tmp_path / "e.json", exported), tmp_path / "m.nii.gz", case[0]))
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[:, :, 1] = ((left > 0) | (right > 0)).T
    assert np.array_equal(np.asarray(mask.dataobj), expected)


# ---------------------------------------------------------------------------
# Errors name the case and the file


def _edited(tmp_path, case, edit):
    _, tasks = _export(tmp_path, case)
    exported = _as_labelstudio_export(tasks)
    edit(exported)
    return _write(tmp_path / "broken_export.json", exported)


def _first_result(exported):
    return next(t for t in exported if t["annotations"][0]["result"])["annotations"][0]["result"][0]


def _two_patients(exported):
    exported[3]["data"]["patient"] = "MSTT-008"


def _no_slice(exported):
    del exported[2]["data"]["instance_number"]
    del exported[2]["data"]["slice_index"]


def _no_patient(exported):
    del exported[0]["data"]["patient"]


def _out_of_range(exported):
    task = next(t for t in exported if t["annotations"][0]["result"])
    task["data"]["slice_index"] = SHAPE[2]
    task["data"]["instance_number"] = SHAPE[2] + 1


def _wrong_width(exported):
    _first_result(exported)["original_width"] = SHAPE[1]


def _wrong_height(exported):
    _first_result(exported)["original_height"] = SHAPE[0]


def _not_rle(exported):
    _first_result(exported)["value"]["format"] = "png"


def _polygon(exported):
    _first_result(exported)["type"] = "polygonlabels"


def _other_label(exported):
    _first_result(exported)["value"]["brushlabels"] = ["Oedema"]


@pytest.mark.parametrize(
    "edit,words",
    [
        (_two_patients, "several patients"),
        (_no_slice, "no slice information"),
        (_no_patient, "no patient"),
        (_out_of_range, "out of range"),
        (_wrong_width, "does not match the volume"),
        (_wrong_height, "does not match the volume"),
        (_not_rle, "only 'rle'"),
        (_polygon, "not supported"),
        (_other_label, "do not include 'Tumour'"),
    ],
)
def test_bad_exports_raise_with_case_and_file(tmp_path, case, edit, words):
    path = _edited(tmp_path, case, edit)
    with pytest.raises(LabelStudioError, match=words) as caught:
        import_annotations(path, tmp_path / "out", case[0], case_id=CASE)
    assert isinstance(caught.value, CaseFileError)
    assert CASE in str(caught.value) and "broken_export.json" in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_invalid_json_raises_with_case_and_file(tmp_path, case):
    path = tmp_path / "broken_export.json"
    path.write_text('[{"data": {"patient": ')
    with pytest.raises(LabelStudioError, match="not valid JSON") as caught:
        import_annotations(path, tmp_path / "out", case[0], case_id=CASE)
    assert CASE in str(caught.value) and "broken_export.json" in str(caught.value)


def test_patient_other_than_case_id_is_refused(tmp_path, case):
    _, tasks = _export(tmp_path, case)
    path = _write(tmp_path / "broken_export.json", _as_labelstudio_export(tasks))
    with pytest.raises(LabelStudioError, match=f"patient {CASE}, not MSTT-999"):
        import_annotations(path, tmp_path / "out", case[0], case_id="MSTT-999")


def test_sidecar_of_another_grid_is_refused(tmp_path, case):
    out, tasks = _export(tmp_path, case)
    path = _write(tmp_path / "export.json", _as_labelstudio_export(tasks))
    shifted = AFFINE.copy()
    shifted[:3, 3] += 5.0
    other = save_nifti(np.zeros(SHAPE, np.float32), shifted, tmp_path / "other.nii.gz")
    with pytest.raises(LabelStudioError, match="affine differs") as caught:
        import_annotations(path, tmp_path / "out", other, sidecar=out / SIDECAR_FILE)
    assert CASE in str(caught.value) and SIDECAR_FILE in str(caught.value)


def test_export_refuses_a_mask_of_another_shape(tmp_path, case):
    bad = save_nifti(np.zeros((37, 29, 10), np.uint8), AFFINE, tmp_path / "bad_mask.nii.gz")
    with pytest.raises(CaseFileError, match="mask shape") as caught:
        export_volume(case[0], tmp_path / "ls", CASE, mask_path=bad)
    assert CASE in str(caught.value) and "bad_mask.nii.gz" in str(caught.value)


def test_the_reference_image_of_another_case_is_refused_without_a_sidecar(tmp_path, case):
    _, tasks = _export(tmp_path, case)
    path = _write(tmp_path / "export.json", _as_labelstudio_export(tasks))
    other = np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] + 3), np.float32)  # same slices, more of them
    reference = save_nifti(other, AFFINE, tmp_path / "other" / "t2.nii.gz")
    with pytest.raises(
        LabelStudioError, match=f"volume of {SHAPE[2]} axial slices, the reference image has 14"
    ):
        import_annotations(path, tmp_path / "out", reference, case_id=CASE)
    assert not (tmp_path / "out").exists()


def test_an_in_plane_size_of_another_case_is_refused_without_a_sidecar(tmp_path, case):
    _, tasks = _export(tmp_path, case)
    path = _write(tmp_path / "export.json", _as_labelstudio_export(tasks))
    reference = save_nifti(
        np.zeros((SHAPE[0] + 2, SHAPE[1], SHAPE[2]), np.float32), AFFINE, tmp_path / "o.nii.gz"
    )
    with pytest.raises(LabelStudioError, match="does not match the volume"):
        import_annotations(path, tmp_path / "out", reference, case_id=CASE)


def test_a_patient_that_is_not_a_plain_name_is_refused_before_anything_is_written(tmp_path, case):
    _, tasks = _export(tmp_path, case)
    exported = _as_labelstudio_export(tasks)
    for task in exported:
        task["data"]["patient"] = "../ESCAPED"
    path = _write(tmp_path / "export.json", exported)
    with pytest.raises(LabelStudioError, match="not a plain name"):
        import_annotations(path, tmp_path / "out", case[0])
    assert not any(p.name.startswith("ESCAPED") for p in tmp_path.rglob("*"))
