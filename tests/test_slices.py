"""Tests for mstt_lib.slices: 2.5D samples, centre padding, and the on-disk slice cache.

Samples are cut from a (C, X, Y, Z) = (2, 5, 6, 7) volume whose voxels hold their own
index (``c*1000 + x*100 + y*10 + z``), so every expected value is written down by hand.
The cache is built from two hand-made cases on 1 mm grids (so the 1 mm volumes are
known exactly): case RAS on a RAS grid, and case LPS on an LPS grid, which the cache
flips to RAS. T1 is a ramp along x and T2 one along y; the mask is a 10 x 12 x 10 block.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstt_lib.cohort import read_cohort
from mstt_lib.io import CaseFileError, save_nifti
from mstt_lib.slices import (
    PLANES,
    CacheSettings,
    SliceCache,
    build_cache,
    fit_to_size,
    restore_size,
    sample_25d,
)

C, X, Y, Z = 2, 5, 6, 7


def _indexed_volume(shape=(C, X, Y, Z)) -> np.ndarray:
    c, x, y, z = np.meshgrid(*map(np.arange, shape), indexing="ij")
    return (c * 1000 + x * 100 + y * 10 + z).astype(np.int32)


def _code(c: int, x: int, y: int, z: int) -> int:
    return c * 1000 + x * 100 + y * 10 + z


# ---------------------------------------------------------------------------
# sample_25d.


def _expected_sample(plane: str, index: int) -> np.ndarray:
    """The sample written out voxel by voxel from the module docstring's convention."""
    length = {"sagittal": X, "coronal": Y, "axial": Z}[plane]
    rows, columns = {"sagittal": (Y, Z), "coronal": (X, Z), "axial": (X, Y)}[plane]
    out = np.zeros((3 * C, rows, columns), np.int32)
    for c in range(C):
        for j, neighbour in enumerate((index - 1, index, index + 1)):
            n = min(max(neighbour, 0), length - 1)  # clipped at the edges
            for r in range(rows):
                for k in range(columns):
                    xyz = {"sagittal": (n, r, k), "coronal": (r, n, k), "axial": (r, k, n)}[plane]
                    out[3 * c + j, r, k] = _code(c, *xyz)
    return out


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_sample_25d_takes_neighbouring_slices_modality_major_in_every_plane(plane, where):
    length = {"sagittal": X, "coronal": Y, "axial": Z}[plane]
    index = {"first": 0, "middle": length // 2, "last": length - 1}[where]
    sample = sample_25d(_indexed_volume(), plane, index)
    np.testing.assert_array_equal(sample, _expected_sample(plane, index))


def test_sample_25d_axial_first_slice_by_hand():
    sample = sample_25d(_indexed_volume(), "axial", 0)
    assert sample.shape == (6, X, Y)  # rows = x, columns = y
    # T1[z-1] clipped to z=0, T1[z=0], T1[z=1], then the same for channel 1
    np.testing.assert_array_equal(sample[:, 0, 0], [0, 0, 1, 1000, 1000, 1001])
    np.testing.assert_array_equal(sample[0, 2, 3], _code(0, 2, 3, 0))


def test_sample_25d_sagittal_last_slice_by_hand():
    sample = sample_25d(_indexed_volume(), "sagittal", X - 1)
    assert sample.shape == (6, Y, Z)  # rows = y, columns = z
    np.testing.assert_array_equal(sample[:, 0, 0], [300, 400, 400, 1300, 1400, 1400])
    np.testing.assert_array_equal(sample[4, 5, 6], _code(1, 4, 5, 6))


def test_sample_25d_coronal_middle_slice_by_hand():
    sample = sample_25d(_indexed_volume(), "coronal", 3)
    assert sample.shape == (6, X, Z)  # rows = x, columns = z
    np.testing.assert_array_equal(sample[:, 1, 2], [122, 132, 142, 1122, 1132, 1142])


def test_sample_25d_of_a_single_slice_axis_repeats_it_three_times():
    volume = _indexed_volume((1, 3, 4, 1))
    sample = sample_25d(volume, "axial", 0)
    assert sample.shape == (3, 3, 4)
    for channel in sample:
        np.testing.assert_array_equal(channel, volume[0, :, :, 0])


def test_sample_25d_rejects_an_unknown_plane_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown plane 'transverse'.*axial.*coronal.*sagittal"):
        sample_25d(_indexed_volume(), "transverse", 0)


@pytest.mark.parametrize(("plane", "index"), [("axial", -1), ("axial", Z), ("sagittal", X), ("coronal", 99)])
def test_sample_25d_rejects_an_index_outside_the_volume(plane, index):
    with pytest.raises(IndexError, match=rf"{plane} slice {index} is outside"):
        sample_25d(_indexed_volume(), plane, index)


@pytest.mark.parametrize("shape", [(X, Y, Z), (1, C, X, Y, Z)])
def test_sample_25d_rejects_a_volume_that_is_not_4d(shape):
    with pytest.raises(ValueError, match=r"expected a \(channels, x, y, z\) volume"):
        sample_25d(np.zeros(shape), "axial", 0)


# ---------------------------------------------------------------------------
# fit_to_size and restore_size.


@pytest.mark.parametrize(
    ("shape", "size", "placed_at"),
    [
        ((4, 6), (8, 8), (slice(2, 6), slice(1, 7))),  # even differences: 2 + 2 and 1 + 1
        ((3, 5), (8, 8), (slice(2, 5), slice(1, 6))),  # odd differences: 2 + 3 and 1 + 2
    ],
    ids=["even", "odd"],
)
def test_fit_to_size_pads_in_the_centre_and_restore_size_undoes_it(shape, size, placed_at):
    array = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    fitted = fit_to_size(array, size, fill=-1)
    assert fitted.shape == size and fitted.dtype == array.dtype
    np.testing.assert_array_equal(fitted[placed_at], array)
    outside = np.ones(size, bool)
    outside[placed_at] = False
    assert np.all(fitted[outside] == -1)
    np.testing.assert_array_equal(restore_size(fitted, shape), array)


@pytest.mark.parametrize(
    ("shape", "size", "kept"),
    [
        ((10, 12), (6, 8), (slice(2, 8), slice(2, 10))),  # even differences: 2 + 2 on each side
        ((9, 11), (6, 8), (slice(1, 7), slice(1, 9))),  # odd differences: 1 + 2
    ],
    ids=["even", "odd"],
)
def test_fit_to_size_crops_the_centre_and_restore_size_returns_the_kept_centre(shape, size, kept):
    array = np.arange(1, np.prod(shape) + 1, dtype=np.int32).reshape(shape)
    fitted = fit_to_size(array, size)
    np.testing.assert_array_equal(fitted, array[kept])
    restored = restore_size(fitted, shape, fill=0)
    expected = np.zeros(shape, np.int32)
    expected[kept] = array[kept]
    np.testing.assert_array_equal(restored, expected)


def test_fit_to_size_pads_one_axis_and_crops_the_other_keeping_leading_axes():
    array = _indexed_volume((2, 3, 4, 10))[:, 0]  # (2, 4, 10): channels, rows, columns
    fitted = fit_to_size(array, (8, 6))
    assert fitted.shape == (2, 8, 6)
    np.testing.assert_array_equal(fitted[:, 2:6, :], array[:, :, 2:8])
    assert not fitted[:, :2].any() and not fitted[:, 6:].any()
    restored = restore_size(fitted, (4, 10))
    np.testing.assert_array_equal(restored[..., 2:8], array[..., 2:8])
    assert not restored[..., :2].any() and not restored[..., 8:].any()


def test_fit_to_size_of_the_same_size_is_a_copy():
    array = np.arange(12.0).reshape(3, 4)
    fitted = fit_to_size(array, (3, 4))
    np.testing.assert_array_equal(fitted, array)
    assert fitted is not array


# ---------------------------------------------------------------------------
# The cache: hand-made cases.

SHAPE = (24, 28, 20)  # X + Y + Z = 72 slices per case
BLOCK = (slice(6, 16), slice(8, 20), slice(5, 15))  # 10 x 12 x 10 tumour voxels
# Tumour voxels per slice: sagittal 12 * 10 = 120 (10 slices), coronal 10 * 10 = 100 (12 slices,
# not more than 100), axial 10 * 12 = 120 (10 slices).
RAS = np.array([[1.0, 0, 0, -12], [0, 1.0, 0, -14], [0, 0, 1.0, -10], [0, 0, 0, 1]])
LPS = np.array([[-1.0, 0, 0, 12], [0, -1.0, 0, 14], [0, 0, 1.0, -10], [0, 0, 0, 1]])  # same box


def _ramps() -> tuple[np.ndarray, np.ndarray]:
    x, y, _ = np.meshgrid(*map(np.arange, SHAPE), indexing="ij")
    return (100 + 10 * x).astype(np.int16), (50 + 5 * y).astype(np.int16)


def _write_case(root: Path, case_id: str, affine: np.ndarray, mask: np.ndarray | None = None) -> dict:
    if mask is None:
        mask = np.zeros(SHAPE, np.uint8)
        mask[BLOCK] = 1
    t1, t2 = _ramps()
    for name, data in (("t1", t1), ("t2", t2), ("mask", mask)):
        save_nifti(data, affine, root / case_id / f"{name}.nii.gz")
    return {"case_id": case_id, **{n: f"{case_id}/{n}.nii.gz" for n in ("t1", "t2", "mask")}}


def _cases(root: Path, rows: list[dict]) -> pd.DataFrame:
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    table, problems = read_cohort(root)
    assert not problems
    return table


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    _cases(root, [_write_case(root, "RAS", RAS), _write_case(root, "LPS", LPS)])
    return root


@pytest.fixture(scope="module")
def cases(project) -> pd.DataFrame:
    return read_cohort(project)[0]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cache(cases, cache_root) -> SliceCache:
    return SliceCache(build_cache(cases, cache_root, CacheSettings(), workers=1, progress=False))


def test_cache_holds_the_known_1mm_volumes_in_ras_order(cache):
    assert cache.case_ids == ["RAS", "LPS"]
    t1 = np.arange(SHAPE[0])[:, None, None] / (SHAPE[0] - 1)  # the ramps, min-max normalised
    t2 = np.arange(SHAPE[1])[None, :, None] / (SHAPE[1] - 1)
    block = np.zeros(SHAPE, bool)
    block[BLOCK] = True
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))  # LPS -> RAS: x and y reversed
    for case_id, order in (("RAS", (slice(None),) * 3), ("LPS", flip)):
        image, mask = cache.volumes(case_id)
        assert image.shape == (2, *SHAPE) and image.dtype == np.float16
        np.testing.assert_allclose(image[0], np.broadcast_to(t1, SHAPE)[order], atol=1e-3)
        np.testing.assert_allclose(image[1], np.broadcast_to(t2, SHAPE)[order], atol=1e-3)
        np.testing.assert_array_equal(mask, block[order])
        meta = cache.meta(case_id)
        assert meta["native_shape"] == list(SHAPE) and meta["native_spacing"] == [1.0, 1.0, 1.0]
    assert cache.manifest["channels"] == [
        "T1[index-1]",
        "T1[index]",
        "T1[index+1]",
        "T2[index-1]",
        "T2[index]",
        "T2[index+1]",
    ]


def test_cache_volumes_are_memory_mapped(cache):
    image, mask = cache.volumes("RAS")
    assert isinstance(image, np.memmap) and isinstance(mask, np.memmap)


AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the axis each plane fixes (module docstring)


@pytest.mark.parametrize("plane", PLANES)
def test_cached_samples_are_6_x_256_x_256_in_unit_range_and_cut_from_the_volumes(cache, plane):
    image, mask = cache.volumes("RAS")
    for index in (0, 7, SHAPE[AXIS[plane]] - 1):
        x, y = cache.sample("RAS", plane, index)
        assert x.shape == (6, 256, 256) and x.dtype == np.float32
        assert y.shape == (256, 256) and y.dtype == np.uint8
        assert x.min() >= 0 and x.max() <= 1
        expected = fit_to_size(sample_25d(np.asarray(image), plane, index).astype(np.float32))
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y, fit_to_size(np.take(np.asarray(mask), index, axis=AXIS[plane])))


def test_axial_sample_channels_0_to_2_are_t1_and_3_to_5_are_t2(cache):
    x, _ = cache.sample("RAS", "axial", 10, size=None)
    assert x.shape == (6, SHAPE[0], SHAPE[1])  # rows = x, columns = y
    t1 = np.broadcast_to(np.arange(SHAPE[0])[:, None] / (SHAPE[0] - 1), x.shape[1:])  # down the rows
    t2 = np.broadcast_to(np.arange(SHAPE[1])[None, :] / (SHAPE[1] - 1), x.shape[1:])  # across the columns
    for channel in range(3):
        np.testing.assert_allclose(x[channel], t1, atol=1e-3)
        np.testing.assert_allclose(x[channel + 3], t2, atol=1e-3)


def test_t1_only_cache_gives_three_channel_samples(cases, cache_root, cache):
    folder = build_cache(cases, cache_root, CacheSettings(modalities=("T1",)), workers=1, progress=False)
    assert folder != cache.folder
    t1_only = SliceCache(folder)
    assert t1_only.settings.modalities == ("T1",)
    x, _ = t1_only.sample("LPS", "coronal", 5)
    assert x.shape == (3, 256, 256)
    np.testing.assert_array_equal(x, cache.sample("LPS", "coronal", 5)[0][:3])


def test_slice_index_counts_equal_the_mask_sums(cache):
    for case_id in cache.case_ids:
        _, mask = cache.volumes(case_id)
        for plane in PLANES:
            axis = AXIS[plane]
            rows = cache.slices[(cache.slices["case_id"] == case_id) & (cache.slices["plane"] == plane)]
            assert rows["index"].tolist() == list(range(mask.shape[axis]))
            sums = np.asarray(mask).sum(axis=tuple(a for a in range(3) if a != axis))
            np.testing.assert_array_equal(rows["tumour_voxels"], sums)


def test_select_keeps_slices_with_more_than_100_tumour_voxels(cache):
    rows = cache.select(min_tumour_voxels=100)
    assert (rows["tumour_voxels"] > 100).all()
    # per case: 10 sagittal and 10 axial slices of 120 voxels; the 12 coronal ones have exactly 100
    assert rows.groupby(["case_id", "plane"]).size().to_dict() == {
        ("LPS", "axial"): 10,
        ("LPS", "sagittal"): 10,
        ("RAS", "axial"): 10,
        ("RAS", "sagittal"): 10,
    }
    assert len(cache.select(min_tumour_voxels=99)) == 2 * (10 + 12 + 10)


def test_select_none_keeps_every_slice_of_every_case(cache):
    rows = cache.select(min_tumour_voxels=None)
    assert len(rows) == 2 * sum(SHAPE)
    assert (rows["tumour_voxels"] == 0).sum() == 2 * (sum(SHAPE) - 10 - 12 - 10)


def test_select_by_case_and_plane(cache):
    rows = cache.select(case_ids=["LPS"], planes=("axial",), min_tumour_voxels=None)
    assert set(rows["case_id"]) == {"LPS"} and set(rows["plane"]) == {"axial"}
    assert rows["index"].tolist() == list(range(SHAPE[2]))


# ---------------------------------------------------------------------------
# The cache folder: reuse, invalidation, half-written caches, bad cases.


def test_second_build_returns_the_same_folder_without_recomputing(cases, cache_root, cache):
    before = _mtimes(cache.folder)
    folder = build_cache(cases, cache_root, CacheSettings(), workers=1, progress=False)
    assert folder == cache.folder
    assert _mtimes(folder) == before


@pytest.mark.parametrize(
    "settings",
    [
        CacheSettings(spacing_mm=2.0),
        CacheSettings(high_percentile=99.0),
        CacheSettings(modalities=("T2", "T1")),
    ],
    ids=["spacing", "percentile", "modality-order"],
)
def test_a_changed_setting_builds_another_folder(cases, tmp_path, cache, settings):
    folder = build_cache(cases, tmp_path, settings, workers=1, progress=False)
    assert folder.name != cache.folder.name
    assert SliceCache(folder).settings == settings


def test_touching_or_rewriting_an_input_file_builds_another_folder(project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(project, root)
    cases = read_cohort(root)[0]
    first = build_cache(cases, tmp_path / "cache", workers=1, progress=False)

    mask = root / "RAS" / "mask.nii.gz"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched, same content
    touched = build_cache(cases, tmp_path / "cache", workers=1, progress=False)
    assert touched != first

    changed = np.zeros(SHAPE, np.uint8)
    changed[2:20, 2:20, 2:18] = 1
    save_nifti(changed, RAS, mask)  # rewritten with another tumour
    rewritten = build_cache(cases, tmp_path / "cache", workers=1, progress=False)
    assert rewritten not in (first, touched)
    assert int(SliceCache(rewritten).volumes("RAS")[1].sum()) == 18 * 18 * 16


def test_a_cache_without_its_manifest_is_refused_and_the_next_build_completes_it(cases, cache, tmp_path):
    half = tmp_path / cache.folder.name
    shutil.copytree(cache.folder, half)
    (half / "manifest.json").unlink()  # as if the build stopped before its last step
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        SliceCache(half)
    volumes = {name: mtime for name, mtime in _mtimes(half).items() if name.endswith((".npy", ".json"))}
    assert build_cache(cases, tmp_path, CacheSettings(), workers=1, progress=False) == half
    after = _mtimes(half)
    assert all(after[name] == mtime for name, mtime in volumes.items())  # finished cases reused
    assert SliceCache(half).case_ids == ["RAS", "LPS"]


def _one_voxel() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[11, 13, 9] = 1
    return mask


HALF_MM = np.diag([0.5, 0.5, 0.5, 1.0])  # every 1 mm voxel centre falls halfway between two native ones

BAD_CASES = {
    "EMPTY": (RAS, np.zeros(SHAPE, np.uint8), "0 voxel(s)"),  # no tumour voxel at all
    # one 0.5 mm voxel: each 1 mm centre gets 1/8 of it by trilinear interpolation, below the 0.5 threshold
    "TINY": (HALF_MM, _one_voxel(), "1 voxel(s)"),
}


@pytest.fixture(params=list(BAD_CASES))
def with_bad_case(request, project, tmp_path) -> tuple[pd.DataFrame, str, str]:
    """(the two good cases and a bad one, its id, its native voxel count as the message gives it)."""
    case_id = request.param
    affine, mask, native = BAD_CASES[case_id]
    root = tmp_path / "project"
    shutil.copytree(project, root)
    table = pd.read_csv(root / "cohort.csv")
    rows = [*table.to_dict("records"), _write_case(root, case_id, affine, mask=mask)]
    return _cases(root, rows), case_id, native


def test_a_case_whose_mask_is_empty_at_1mm_stops_the_build_naming_the_case(with_bad_case, tmp_path):
    cases, case_id, native = with_bad_case
    with pytest.raises(
        CaseFileError, match=rf"case {case_id}: mask is empty after resampling to 1.0 mm"
    ) as error:
        build_cache(cases, tmp_path / "cache", workers=1, progress=False)
    assert error.value.case_id == case_id
    assert "1 case(s)" in str(error.value) and native in str(error.value)


def test_skip_bad_leaves_a_case_whose_mask_is_empty_at_1mm_out_and_lists_it(with_bad_case, tmp_path):
    cases, case_id, native = with_bad_case
    folder = build_cache(cases, tmp_path / "cache", workers=1, progress=False, skip_bad=True)
    cache = SliceCache(folder)
    assert cache.case_ids == ["RAS", "LPS"]
    skipped = cache.manifest["skipped"]
    assert (
        len(skipped) == 1 and skipped[0].startswith(f"case {case_id}: mask is empty") and native in skipped[0]
    )
    assert set(cache.slices["case_id"]) == {"RAS", "LPS"}
    assert not (folder / f"{case_id}.image.npy").exists()
