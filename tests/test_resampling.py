"""Tests for the grid half of mstt_lib.preprocess: the 1 mm grid, resampling, shear and overlap.

The intensity half is tested in test_preprocess.py. Every volume here is made by
hand on a grid whose affine we choose (LPS, RAS, permuted, oblique, sheared), so
the world position of every landmark is known; one small synthetic cohort supplies
realistic tumour masks.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mstt_lib.geometry import (
    field_of_view_overlap,
    has_shear,
    isotropic_grid,
    remove_shear,
    resample_array,
    resample_mask,
)

CENTRE = np.array([10.0, -20.0, 30.0])  # world centre (mm) of every hand-made grid
LANDMARK = CENTRE + np.array([3.3, -2.1, 4.7])  # world position (mm) of the landmark blob
BLOB_SIGMA_MM = 2.5


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


# Voxel-to-world matrices (columns: the world step of one voxel along each axis, mm) and grid shapes.
GRIDS = {
    "LPS": (np.diag([-0.8, -0.8, 4.0]), (48, 48, 12)),
    "RAS": (np.diag([0.7, 0.9, 3.5]), (56, 44, 14)),
    # voxel axis 0 runs superior, axis 1 to the left, axis 2 posterior (a permuted, flipped scan)
    "permuted": (np.array([[0, -0.8, 0], [0, 0, -0.8], [4.0, 0, 0]]), (12, 48, 48)),
    "oblique": (_rotation(0, 20) @ _rotation(1, 20) @ np.diag([0.8, 0.8, 4.0]), (48, 48, 12)),
    "sheared": (np.array([[0.8, 0.2, 0.0], [0.0, 0.8, 0.6], [0.0, 0.0, 4.0]]), (48, 48, 12)),
}


def _affine(matrix: np.ndarray, shape, centre=CENTRE) -> np.ndarray:
    """4x4 affine with voxel-to-world ``matrix`` whose middle voxel sits at ``centre``."""
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = np.asarray(centre) - matrix @ ((np.asarray(shape) - 1) / 2)
    return affine


def _world(shape, affine) -> np.ndarray:
    """World coordinates (mm) of every voxel centre, shape (*shape, 3)."""
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _to_voxels(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(affine)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def _fov_corners(shape, affine) -> np.ndarray:
    """World positions of the 8 outer corners (voxel edges) of a grid's field of view."""
    edges = [(-0.5, n - 0.5) for n in shape]
    corners = np.array([[i, j, k] for i in edges[0] for j in edges[1] for k in edges[2]])
    return corners @ affine[:3, :3].T + affine[:3, 3]


def _blob(shape, affine, centre=LANDMARK) -> np.ndarray:
    """A Gaussian blob (sigma 2.5 mm) centred on the world point ``centre``."""
    distance2 = ((_world(shape, affine) - centre) ** 2).sum(-1)
    return np.exp(-distance2 / (2 * BLOB_SIGMA_MM**2)).astype(np.float32)


def _centre_of_mass_world(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    weights = volume / volume.sum()
    return (weights[..., None] * _world(volume.shape, affine)).sum((0, 1, 2))


def _ellipsoid(shape, affine, semi_axes_mm, centre=CENTRE) -> np.ndarray:
    offset = (_world(shape, affine) - centre) / np.asarray(semi_axes_mm)
    return (offset**2).sum(-1) <= 1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _round_trip(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """native -> 1 mm -> native with resample_mask."""
    shape, iso_affine = isotropic_grid(mask.shape, affine)
    iso = resample_mask(mask, affine, shape, iso_affine)
    return resample_mask(iso, iso_affine, mask.shape, affine)


# ---------------------------------------------------------------------------
# The isotropic grid.


def test_isotropic_grid_of_an_axis_aligned_ras_grid_has_the_hand_computed_shape_and_origin():
    # 10 x 10 x 5 voxels of 0.8 x 0.8 x 4 mm from the origin: the FOV spans
    # [-0.4, 7.6] x [-0.4, 7.6] x [-2, 18] mm, so 8 x 8 x 20 voxels whose first centre is half a mm in.
    affine = np.diag([0.8, 0.8, 4.0, 1.0])
    shape, iso = isotropic_grid((10, 10, 5), affine)
    assert shape == (8, 8, 20)
    np.testing.assert_allclose(
        iso, [[1, 0, 0, 0.1], [0, 1, 0, 0.1], [0, 0, 1, -1.5], [0, 0, 0, 1]], atol=1e-9
    )


def test_isotropic_grid_of_an_lps_grid_flips_x_and_y_to_ras():
    # x = -0.8 i spans [-7.6, 0.4] mm: the RAS grid starts at -7.6 + 0.5.
    affine = np.diag([-0.8, -0.8, 4.0, 1.0])
    shape, iso = isotropic_grid((10, 10, 5), affine)
    assert shape == (8, 8, 20)
    np.testing.assert_allclose(
        iso, [[1, 0, 0, -7.1], [0, 1, 0, -7.1], [0, 0, 1, -1.5], [0, 0, 0, 1]], atol=1e-9
    )


@pytest.mark.parametrize("name", list(GRIDS))
def test_isotropic_grid_axes_are_orthonormal_1_mm_and_nearest_to_r_a_s(name):
    matrix, shape = GRIDS[name]
    _, iso = isotropic_grid(shape, _affine(matrix, shape))
    axes = iso[:3, :3]
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)  # 1 mm, perpendicular
    assert np.linalg.det(axes) == pytest.approx(1.0)  # right-handed, like RAS
    # new axis j points mostly along +R, +A, +S for j = 0, 1, 2: axis 2 is the superior direction
    np.testing.assert_array_equal(np.argmax(np.abs(axes), axis=0), [0, 1, 2])
    assert np.all(np.diag(axes) > 0.7)


def test_isotropic_grid_of_a_permuted_scan_puts_the_superior_direction_on_axis_2():
    matrix, shape = GRIDS["permuted"]  # input axis 0 is S (4 mm), axes 1 and 2 are L and P
    new_shape, iso = isotropic_grid(shape, _affine(matrix, shape))
    np.testing.assert_allclose(iso[:3, :3], np.eye(3), atol=1e-9)
    # 48 x 0.8 mm = 38.4 mm in-plane becomes 39 voxels; 12 x 4 mm = 48 mm of S becomes axis 2
    assert new_shape == (39, 39, 48)


def test_isotropic_grid_spacing_sets_the_voxel_size():
    matrix, shape = GRIDS["oblique"]
    _, iso = isotropic_grid(shape, _affine(matrix, shape), spacing=2.0)
    np.testing.assert_allclose(np.linalg.norm(iso[:3, :3], axis=0), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("spacing", [0.0, -1.0])
def test_isotropic_grid_rejects_a_non_positive_spacing(spacing):
    with pytest.raises(ValueError, match="spacing should be positive"):
        isotropic_grid((4, 4, 4), np.eye(4), spacing)


@pytest.mark.parametrize("name", list(GRIDS))
def test_isotropic_grid_covers_the_input_field_of_view_tightly(name):
    matrix, shape = GRIDS[name]
    affine = _affine(matrix, shape)
    new_shape, iso = isotropic_grid(shape, affine)
    corners = _to_voxels(_fov_corners(shape, affine), iso)  # input FOV corners, in new voxels
    low, high = -0.5, np.array(new_shape) - 0.5  # the new grid's own FOV edges
    assert np.all(corners >= low - 1e-6) and np.all(corners <= high + 1e-6)
    # tight: the first edge touches the input's FOV, the last is less than one voxel beyond it
    np.testing.assert_allclose(corners.min(0), low, atol=1e-6)
    assert np.all(corners.max(0) > high - 1)


# ---------------------------------------------------------------------------
# Resampling keeps world coordinates.


@pytest.mark.parametrize("name", list(GRIDS))
def test_resampling_reproduces_a_linear_function_of_world_coordinates(name):
    # Trilinear interpolation is exact for a function linear in the voxel index, and a function
    # linear in world coordinates is one on any affine grid: any geometric error shows as a
    # value error of 0.37 per mm of displacement.
    matrix, shape = GRIDS[name]
    affine = _affine(matrix, shape)
    gradient = np.array([0.3, -0.2, 0.1])
    values = (_world(shape, affine) @ gradient + 5.0).astype(np.float32)
    new_shape, iso = isotropic_grid(shape, affine)
    # widen the target grid by 3 voxels on every side, so part of it lies outside the source
    new_shape = tuple(n + 6 for n in new_shape)
    iso[:3, 3] -= iso[:3, :3] @ [3, 3, 3]
    out = resample_array(values, affine, new_shape, iso, order=1, fill=-1000.0)
    source = _to_voxels(_world(new_shape, iso), affine)
    inside = np.all((source >= 1e-3) & (source <= np.array(shape) - 1 - 1e-3), axis=-1)
    far_outside = np.any((source < -1) | (source > np.array(shape)), axis=-1)
    assert inside.sum() > 10_000 and far_outside.any()
    expected = _world(new_shape, iso) @ gradient + 5.0
    np.testing.assert_allclose(out[inside], expected[inside], atol=2e-3)
    assert np.all(out[far_outside] == -1000.0)  # ``fill`` outside the source


@pytest.mark.parametrize("name", list(GRIDS))
def test_landmark_lands_at_its_world_position_after_resampling_to_1_mm(name):
    matrix, shape = GRIDS[name]
    affine = _affine(matrix, shape)
    native = _blob(shape, affine)
    assert np.linalg.norm(_centre_of_mass_world(native, affine) - LANDMARK) < 0.01  # the blob is whole
    new_shape, iso = isotropic_grid(shape, affine)
    resampled = resample_array(native, affine, new_shape, iso, order=1)
    found = _centre_of_mass_world(resampled, iso)
    # 0.2 mm: well under the 0.5 mm that a half-voxel slip of the 1 mm grid would give
    assert np.linalg.norm(found - LANDMARK) < 0.2, (found, LANDMARK)


def test_landmark_returns_to_its_native_voxel_after_a_round_trip():
    matrix, shape = GRIDS["oblique"]
    affine = _affine(matrix, shape)
    native = _blob(shape, affine)
    new_shape, iso = isotropic_grid(shape, affine)
    back = resample_array(resample_array(native, affine, new_shape, iso), iso, shape, affine)
    assert np.linalg.norm(_centre_of_mass_world(back, affine) - LANDMARK) < 0.2


def test_resample_array_nearest_neighbour_keeps_the_label_values():
    labels = np.zeros((6, 6, 3), np.float32)
    labels[1:3, 1:3, :] = 2
    labels[3:5, 3:5, :] = 7
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    shape, iso = isotropic_grid(labels.shape, affine)
    out = resample_array(labels, affine, shape, iso, order=0)
    assert set(np.unique(out)) == {0.0, 2.0, 7.0}


# ---------------------------------------------------------------------------
# Masks: native -> 1 mm -> native.

ANISOTROPIC = np.diag([0.7, 0.7, 5.0])  # a typical clinical axial grid
ANISOTROPIC_SHAPE = (96, 96, 20)  # 67 x 67 x 100 mm


@pytest.mark.parametrize(
    "semi_axes_mm",
    [(10.0, 8.0, 12.0), (15.0, 12.0, 20.0), (20.0, 16.0, 18.0)],
    ids=["20mm", "30mm", "40mm"],
)
@pytest.mark.parametrize("grid", ["axial", "oblique"])
def test_mask_round_trip_native_to_1mm_to_native_keeps_dice_0_95(semi_axes_mm, grid):
    matrix = ANISOTROPIC if grid == "axial" else _rotation(0, 15) @ _rotation(2, 25) @ ANISOTROPIC
    affine = _affine(matrix, ANISOTROPIC_SHAPE)
    mask = _ellipsoid(ANISOTROPIC_SHAPE, affine, semi_axes_mm)
    back = _round_trip(mask, affine)
    assert back.dtype == bool
    assert _dice(mask, back) >= 0.95


def test_resample_mask_takes_any_nonzero_label_as_tumour():
    affine = _affine(ANISOTROPIC, ANISOTROPIC_SHAPE)
    mask = _ellipsoid(ANISOTROPIC_SHAPE, affine, (15, 12, 20))
    shape, iso = isotropic_grid(ANISOTROPIC_SHAPE, affine)
    binary = resample_mask(mask, affine, shape, iso)
    labelled = resample_mask(mask.astype(np.uint8) * 3, affine, shape, iso)  # label 3, not 1
    np.testing.assert_array_equal(binary, labelled)
    # volume is kept: about 4/3 pi abc mm^3 at 1 mm
    assert labelled.sum() == pytest.approx(4 / 3 * np.pi * 15 * 12 * 20, rel=0.05)


def test_a_constant_image_stays_constant_over_the_field_of_view_at_1_mm():
    # 4 slices of 5 mm span z in [-2.5, 17.5]: all 20 planes of the 1 mm grid lie inside the FOV.
    shape, iso = isotropic_grid((4, 4, 4), np.diag([1.0, 1.0, 5.0, 1.0]))
    assert shape == (4, 4, 20)
    out = resample_array(np.ones((4, 4, 4), np.float32), np.diag([1.0, 1.0, 5.0, 1.0]), shape, iso)
    np.testing.assert_allclose(out.mean((0, 1)), 1.0)


def test_mask_touching_the_first_and_last_slice_keeps_them_after_a_round_trip():
    # 5.44 mm slices, as in a phantom case whose Fat tumour fills the slab (Dice 0.94 there)
    affine = _affine(np.diag([0.7, 0.7, 5.44]), (20, 20, 4))
    mask = np.zeros((20, 20, 4), bool)
    mask[4:16, 3:15, :] = True  # a tumour running through the whole slab, as when it outgrows it
    back = _round_trip(mask, affine)
    assert back[..., 0].any() and back[..., -1].any()
    assert _dice(mask, back) >= 0.95


def test_phantom_tumour_masks_keep_dice_0_95_after_a_round_trip(phantom_dir):
    table = pd.read_csv(phantom_dir / "cohort.csv")
    assert sorted(table["tissue"]) == sorted(["Fibrous", "Fat", "Myxoid", "Nerve", "Vascular"])
    for case_id, relative in zip(table["case_id"], table["mask"], strict=True):
        image = nib.load(phantom_dir / relative)
        mask = np.asarray(image.dataobj) > 0
        assert mask.sum() > 100, case_id
        assert _dice(mask, _round_trip(mask, image.affine)) >= 0.95, case_id


# ---------------------------------------------------------------------------
# Shear.


@pytest.mark.parametrize("name", ["LPS", "RAS", "permuted", "oblique"])
def test_has_shear_is_false_for_perpendicular_axes_of_any_orientation(name):
    matrix, shape = GRIDS[name]
    assert not has_shear(_affine(matrix, shape))


def test_has_shear_is_true_for_a_sheared_grid_and_respects_the_tolerance():
    matrix, shape = GRIDS["sheared"]
    assert has_shear(_affine(matrix, shape))
    slight = np.diag([1.0, 1.0, 1.0, 1.0])
    slight[0, 1] = 1e-5  # cosine between axes 0 and 1 is 1e-5
    assert not has_shear(slight)
    assert has_shear(slight, tolerance=1e-6)


def test_remove_shear_gives_perpendicular_axes_of_the_same_spacing_and_keeps_a_landmark():
    matrix, shape = GRIDS["sheared"]
    affine = _affine(matrix, shape)
    image = nib.Nifti1Image(_blob(shape, affine), affine)
    fixed = remove_shear(image)
    assert not has_shear(fixed.affine)
    np.testing.assert_allclose(
        np.linalg.norm(fixed.affine[:3, :3], axis=0), np.linalg.norm(matrix, axis=0), rtol=1e-6
    )
    found = _centre_of_mass_world(np.asarray(fixed.dataobj), fixed.affine)
    assert np.linalg.norm(found - LANDMARK) < 0.2, (found, LANDMARK)
    # the new grid still covers the sheared field of view
    corners = _to_voxels(_fov_corners(shape, affine), fixed.affine)
    assert np.all(corners >= -0.5 - 1e-6) and np.all(corners <= np.array(fixed.shape) - 0.5 + 1e-6)


def test_remove_shear_of_an_unsheared_image_returns_the_same_voxels():
    affine = _affine(np.diag([-0.8, -0.8, 4.0]), (10, 12, 5))
    data = np.random.default_rng(0).random((10, 12, 5)).astype(np.float32)
    fixed = remove_shear(nib.Nifti1Image(data, affine))
    assert fixed.shape == (10, 12, 5)
    np.testing.assert_allclose(fixed.affine, affine, atol=1e-9)
    np.testing.assert_allclose(np.asarray(fixed.dataobj)[1:-1, 1:-1, 1:-1], data[1:-1, 1:-1, 1:-1], atol=1e-5)


# ---------------------------------------------------------------------------
# Field-of-view overlap.


def _box(shape, affine) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(shape, np.float32), np.asarray(affine, float))


def _shifted(shift_mm) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = shift_mm
    return affine


def test_field_of_view_overlap_of_identical_grids_is_one():
    image = _box((10, 10, 10), _shifted([0, 0, 0]))
    assert field_of_view_overlap(image, image) == pytest.approx(1.0)


def test_field_of_view_overlap_ignores_orientation_of_the_same_box():
    ras = _box((10, 10, 10), _shifted([0, 0, 0]))  # x in [-0.5, 9.5]
    lps = _box((10, 10, 10), np.diag([-1.0, -1.0, 1.0, 1.0]) @ _shifted([-9, -9, 0]))  # x = 9 - i
    assert field_of_view_overlap(ras, lps) == pytest.approx(1.0)


def test_field_of_view_overlap_of_disjoint_and_touching_boxes_is_zero():
    a = _box((10, 10, 10), _shifted([0, 0, 0]))
    assert field_of_view_overlap(a, _box((10, 10, 10), _shifted([1000, 0, 0]))) == 0.0
    assert field_of_view_overlap(a, _box((10, 10, 10), _shifted([10, 0, 0]))) == 0.0  # share a face


def test_field_of_view_overlap_of_half_shifted_boxes_is_a_half():
    a = _box((10, 10, 10), _shifted([0, 0, 0]))
    assert field_of_view_overlap(a, _box((10, 10, 10), _shifted([5, 0, 0]))) == pytest.approx(0.5)
    # a quarter along two axes: 0.75 x 0.75 of the box
    assert field_of_view_overlap(a, _box((10, 10, 10), _shifted([2.5, -2.5, 0]))) == pytest.approx(0.5625)


def test_field_of_view_overlap_is_a_fraction_of_the_smaller_box():
    large = _box((20, 20, 20), _shifted([0, 0, 0]))  # [-0.5, 19.5]^3
    inside = _box((10, 10, 10), _shifted([5, 5, 5]))  # [4.5, 14.5]^3
    half_out = _box((10, 10, 10), _shifted([15, 5, 5]))  # x in [14.5, 24.5]: half inside
    assert field_of_view_overlap(large, inside) == pytest.approx(1.0)
    assert field_of_view_overlap(inside, large) == pytest.approx(1.0)
    assert field_of_view_overlap(large, half_out) == pytest.approx(0.5)
