"""mstt_lib.geometry on LPS, RAS and oblique grids: frames, rotations, grids, resampling, planes
and the display rule. Expected values are written out by hand or checked by round trips."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mstt_lib import geometry
from mstt_lib.geometry import (
    LPS_TO_RAS,
    PLANE_AXIS,
    PLANES,
    axis_aligned_affine,
    display_point,
    display_slice,
    euler_rotation,
    has_shear,
    isotropic_grid,
    lps_to_ras,
    misalignment_matrix,
    motion_matrix,
    nearest_rotation,
    on_grid,
    orthogonal_grid,
    resample_array,
    resample_mask,
    rotation_angle_deg,
    same_grid,
    to_display,
    to_ras,
    voxel_spacing,
)

SHAPE = (9, 8, 5)
CENTRE = (12.0, -7.0, 30.0)


def _oblique_affine() -> np.ndarray:
    """A right-handed oblique grid: 0.8 x 0.8 x 4 mm, rotated 20 degrees about x and 30 about z."""
    affine = np.eye(4)
    affine[:3, :3] = euler_rotation([20.0, 0.0, 30.0]) @ np.diag([0.8, 0.8, 4.0])
    affine[:3, 3] = CENTRE
    return affine


GRIDS = {
    "RAS": axis_aligned_affine(SHAPE, (1.0, 1.5, 3.0), "RAS", CENTRE),
    "LPS": axis_aligned_affine(SHAPE, (1.0, 1.5, 3.0), "LPS", CENTRE),
    "oblique": _oblique_affine(),
}


# ---------------------------------------------------------------------------
# Frames.


def test_lps_to_ras_negates_x_and_y_of_affines_and_points_and_is_its_own_inverse():
    lps = GRIDS["LPS"]
    ras = lps_to_ras(lps)
    np.testing.assert_allclose(ras[:3, :3], np.diag([1.0, 1.5, 3.0]))  # an LPS grid read in RAS
    np.testing.assert_allclose(ras[:3, 3], [-lps[0, 3], -lps[1, 3], lps[2, 3]])
    np.testing.assert_allclose(lps_to_ras(ras), lps)
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    np.testing.assert_allclose(lps_to_ras(points), [[-1.0, -2.0, 3.0], [4.0, -5.0, -6.0]])
    np.testing.assert_allclose(lps_to_ras(lps_to_ras(points)), points)
    # the matrix form and the points form agree
    homogeneous = np.c_[points, np.ones(2)] @ LPS_TO_RAS.T
    np.testing.assert_allclose(homogeneous[:, :3], lps_to_ras(points))
    with pytest.raises(ValueError, match="4x4"):
        lps_to_ras(np.eye(2))


def test_axis_aligned_affine_known_matrices_and_centre():
    np.testing.assert_allclose(GRIDS["RAS"][:3, :3], np.diag([1.0, 1.5, 3.0]))
    np.testing.assert_allclose(GRIDS["LPS"][:3, :3], np.diag([-1.0, -1.5, 3.0]))
    for affine in (GRIDS["RAS"], GRIDS["LPS"]):  # the middle voxel sits at the centre
        middle = (np.array(SHAPE) - 1) / 2
        np.testing.assert_allclose(affine[:3, :3] @ middle + affine[:3, 3], CENTRE)
    assert nib.aff2axcodes(GRIDS["LPS"]) == ("L", "P", "S")
    permuted = axis_aligned_affine(SHAPE, 2.0, "ASL", (0, 0, 0))  # voxel axis 0 runs anterior
    assert nib.aff2axcodes(permuted) == ("A", "S", "L")
    with pytest.raises(ValueError, match="axcodes"):
        axis_aligned_affine(SHAPE, 1.0, "RRS", CENTRE)


def test_voxel_spacing_and_shear():
    np.testing.assert_allclose(voxel_spacing(GRIDS["LPS"]), [1.0, 1.5, 3.0])
    np.testing.assert_allclose(voxel_spacing(GRIDS["oblique"]), [0.8, 0.8, 4.0])
    assert not any(has_shear(a) for a in GRIDS.values())
    sheared = GRIDS["RAS"].copy()
    sheared[0, 1] = 0.4
    assert has_shear(sheared)


# ---------------------------------------------------------------------------
# Rotations: one handedness rule.


def test_nearest_rotation_of_a_rotation_is_itself_with_det_plus_one():
    rotation = euler_rotation([10.0, -25.0, 40.0])
    np.testing.assert_allclose(nearest_rotation(rotation), rotation, atol=1e-12)
    assert np.linalg.det(nearest_rotation(rotation)) == pytest.approx(1.0)


def test_nearest_rotation_of_a_perturbed_rotation_is_orthonormal_and_close():
    rotation = euler_rotation([5.0, 15.0, -20.0])
    noisy = rotation + np.random.default_rng(0).normal(0, 0.02, (3, 3))
    nearest = nearest_rotation(noisy)
    np.testing.assert_allclose(nearest.T @ nearest, np.eye(3), atol=1e-12)
    assert np.linalg.det(nearest) == pytest.approx(1.0)
    assert rotation_angle_deg(nearest.T @ rotation) < 2.0
    # the nearest: no rotation of a grid of candidates is closer in the Frobenius norm
    for angles in np.random.default_rng(1).uniform(-3, 3, (50, 3)):
        candidate = euler_rotation(angles) @ nearest
        assert np.linalg.norm(candidate - noisy) >= np.linalg.norm(nearest - noisy) - 1e-12


def test_nearest_rotation_keeps_a_left_handed_frame_left_handed():
    # An LAS grid's direction matrix has det -1; made orthogonal it must keep its voxel order.
    las = np.diag([-1.0, 1.0, 1.0]) + np.array([[0, 0.01, 0], [0, 0, 0], [0, 0, 0]])
    nearest = nearest_rotation(las)
    assert np.linalg.det(nearest) == pytest.approx(-1.0)
    np.testing.assert_allclose(nearest, np.diag([-1.0, 1.0, 1.0]), atol=0.01)
    # and a right-handed LPS frame (det +1) stays right-handed
    assert np.linalg.det(
        nearest_rotation(GRIDS["LPS"][:3, :3] / voxel_spacing(GRIDS["LPS"]))
    ) == pytest.approx(1)


def test_rotation_angle_and_euler_rotation_by_hand():
    np.testing.assert_allclose(euler_rotation([0, 0, 90]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(euler_rotation([90, 0, 0]), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    assert rotation_angle_deg(euler_rotation([0, 0, 37.0])) == pytest.approx(37.0)
    assert rotation_angle_deg(np.eye(3)) == pytest.approx(0.0)


def test_motion_matrix_fixes_its_centre_and_shifts_it():
    centre, shift = np.array([10.0, 20.0, -5.0]), np.array([1.0, -2.0, 0.5])
    matrix = motion_matrix([3.0, -4.0, 5.0], centre, shift)
    np.testing.assert_allclose(matrix[:3, :3] @ centre + matrix[:3, 3], centre + shift)
    truth = {f"rot_{a}_deg": v for a, v in zip("xyz", (3.0, -4.0, 5.0), strict=True)}
    truth |= {f"centre_{a}_mm": v for a, v in zip("xyz", centre, strict=True)}
    truth |= {f"shift_{a}_mm": v for a, v in zip("xyz", shift, strict=True)}
    np.testing.assert_allclose(misalignment_matrix(truth), matrix)


# ---------------------------------------------------------------------------
# Grids.


@pytest.mark.parametrize("name", list(GRIDS))
def test_isotropic_grid_is_ras_ordered_right_handed_and_covers_the_field_of_view(name):
    affine = GRIDS[name]
    shape, grid = isotropic_grid(SHAPE, affine, spacing=1.0)
    directions = grid[:3, :3]
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-12)  # 1 mm, orthonormal
    assert np.linalg.det(directions) == pytest.approx(1.0)
    assert nib.aff2axcodes(grid) == ("R", "A", "S")
    corners = geometry.corners_world(SHAPE, affine)
    inside = np.linalg.solve(grid[:3, :3], (corners - grid[:3, 3]).T).T  # corners in new voxel units
    assert (inside >= -0.5 - 1e-6).all() and (inside <= np.array(shape) - 0.5 + 1e-6).all()


def test_isotropic_grid_of_an_axis_aligned_ras_grid_keeps_its_box():
    shape, grid = isotropic_grid((10, 6, 4), np.diag([1.0, 2.0, 3.0, 1.0]), spacing=1.0)
    assert shape == (10, 12, 12)
    np.testing.assert_allclose(grid[:3, :3], np.eye(3))
    np.testing.assert_allclose(grid[:3, 3], [0.0, -0.5, -1.0])  # the field of view starts half a voxel out


def test_orthogonal_grid_keeps_spacing_and_handedness():
    sheared = GRIDS["LPS"].copy()
    sheared[0, 2] = 0.3
    shape, grid = orthogonal_grid(SHAPE, sheared)
    assert not has_shear(grid)
    np.testing.assert_allclose(voxel_spacing(grid), voxel_spacing(sheared))
    assert np.sign(np.linalg.det(grid[:3, :3])) == np.sign(np.linalg.det(sheared[:3, :3]))
    assert nib.aff2axcodes(grid) == ("L", "P", "S")


def test_same_grid():
    assert same_grid(SHAPE, GRIDS["RAS"], SHAPE, GRIDS["RAS"] + 1e-5)
    assert not same_grid(SHAPE, GRIDS["RAS"], SHAPE, GRIDS["LPS"])
    assert not same_grid(SHAPE, GRIDS["RAS"], (9, 8, 6), GRIDS["RAS"])


# ---------------------------------------------------------------------------
# Resampling.


@pytest.mark.parametrize("name", list(GRIDS))
def test_resampling_onto_its_own_grid_returns_the_input(name):
    data = np.random.default_rng(2).random(SHAPE).astype(np.float32)
    for order in (0, 1):
        out = resample_array(data, GRIDS[name], SHAPE, GRIDS[name], order=order)
        np.testing.assert_allclose(out, data, atol=1e-5)


def test_lps_and_ras_copies_of_one_volume_resample_onto_each_other():
    # The same world content stored in RAS and in LPS voxel order: flipping x and y maps one to the other.
    data = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    ras = GRIDS["RAS"]
    lps = ras.copy()
    lps[:3, :3] = ras[:3, :3] @ np.diag([-1.0, -1.0, 1.0])
    lps[:3, 3] = ras[:3, :3] @ (np.array(SHAPE) - 1) * np.array([1, 1, 0]) + ras[:3, 3]
    on_lps = resample_array(data, ras, SHAPE, lps, order=0)
    np.testing.assert_allclose(on_lps, data[::-1, ::-1, :])


def test_resampling_a_linear_ramp_is_exact_inside_an_oblique_grid():
    # Trilinear interpolation reproduces a linear function of world position exactly.
    source = GRIDS["RAS"]
    ijk = np.indices(SHAPE).reshape(3, -1).T
    world = ijk @ source[:3, :3].T + source[:3, 3]
    ramp = (world @ np.array([0.5, -0.25, 0.1])).reshape(SHAPE).astype(np.float32)
    target_shape, target = (4, 4, 3), _oblique_affine()
    target[:3, :3] *= 0.5  # a small oblique grid well inside the source
    target[:3, 3] = CENTRE
    out = resample_array(ramp, source, target_shape, target, order=1)
    target_world = np.indices(target_shape).reshape(3, -1).T @ target[:3, :3].T + target[:3, 3]
    np.testing.assert_allclose(out.ravel(), target_world @ np.array([0.5, -0.25, 0.1]), atol=1e-4)


def test_mask_round_trip_through_an_oblique_grid_keeps_its_voxels():
    mask = np.zeros((20, 20, 8), bool)
    mask[6:14, 5:15, 2:6] = True
    source = np.diag([1.0, 1.0, 1.0, 1.0])
    shape, grid = isotropic_grid(mask.shape, source, 0.5)
    there = resample_mask(mask, source, shape, grid)
    back = resample_mask(there, grid, mask.shape, source)
    np.testing.assert_array_equal(back, mask)


def test_on_grid_returns_the_same_image_on_its_grid_and_resamples_otherwise():
    data = np.random.default_rng(4).random(SHAPE).astype(np.float32)
    image = nib.Nifti1Image(data, GRIDS["RAS"])
    assert on_grid(image, nib.Nifti1Image(np.zeros(SHAPE, np.uint8), GRIDS["RAS"])) is image
    moved = GRIDS["RAS"].copy()
    moved[:3, 3] += GRIDS["RAS"][:3, 0]  # the reference grid starts one voxel further along x
    shifted = on_grid(image, nib.Nifti1Image(np.zeros(SHAPE, np.uint8), moved))
    np.testing.assert_allclose(np.asarray(shifted.dataobj)[:-1], data[1:], atol=1e-6)
    np.testing.assert_allclose(shifted.affine, moved)


# ---------------------------------------------------------------------------
# Orientation and display.


def test_to_ras_reorders_an_lps_volume_and_its_spacing():
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    ras, spacing = to_ras(volume, GRIDS["LPS"])
    np.testing.assert_array_equal(ras, volume[::-1, ::-1, :])
    np.testing.assert_allclose(spacing, [1.0, 1.5, 3.0])
    permuted = axis_aligned_affine(SHAPE, (1.0, 2.0, 3.0), "ASR", CENTRE)
    ras, spacing = to_ras(volume, permuted)
    np.testing.assert_array_equal(ras, np.transpose(volume, (2, 0, 1)))
    np.testing.assert_allclose(spacing, [3.0, 1.0, 2.0])


def test_planes_and_their_axes():
    assert PLANES == ("axial", "coronal", "sagittal")
    assert PLANE_AXIS == {"sagittal": 0, "coronal": 1, "axial": 2}


def test_display_is_radiological_for_each_plane():
    """A voxel to the patient's right, anterior and superior of the volume's centre lands
    left, up (axial: anterior up; coronal and sagittal: superior up; sagittal: anterior left)."""
    shape = (7, 5, 3)
    volume = np.zeros(shape)
    x, y, z = 5, 3, 2  # right of centre (x up = right in RAS), anterior, superior
    volume[x, y, z] = 1
    expected = {  # plane: (index, (rows, columns), (row, column))
        "axial": (z, (5, 7), (5 - 1 - y, 7 - 1 - x)),
        "coronal": (y, (3, 7), (3 - 1 - z, 7 - 1 - x)),
        "sagittal": (x, (3, 5), (3 - 1 - z, 5 - 1 - y)),
    }
    for plane, (index, size, pixel) in expected.items():
        shown = display_slice(volume, plane, index)
        assert shown.shape == size, plane
        assert list(zip(*np.nonzero(shown), strict=True)) == [pixel], plane
        column, row = display_point(plane, (x, y, z), shape)
        assert (row, column) == pixel, plane
    axial = display_slice(volume, "axial", z)
    assert np.nonzero(axial)[1][0] < shape[0] / 2  # the patient's right on the screen's left
    assert np.nonzero(axial)[0][0] < shape[1] / 2  # anterior up
    with pytest.raises(ValueError, match="plane"):
        display_slice(volume, "oblique", 0)


def test_an_lps_file_displays_like_its_ras_twin_after_to_ras():
    volume = np.random.default_rng(5).random(SHAPE)
    lps_volume = volume[::-1, ::-1, :]  # the same patient stored in LPS order
    lps_affine = GRIDS["RAS"].copy()
    lps_affine[:3, :3] = GRIDS["RAS"][:3, :3] @ np.diag([-1.0, -1.0, 1.0])
    for k in range(SHAPE[2]):
        np.testing.assert_array_equal(
            display_slice(to_ras(lps_volume, lps_affine)[0], "axial", k),
            display_slice(to_ras(volume, GRIDS["RAS"])[0], "axial", k),
        )


def test_to_display_of_a_2d_slice_matches_the_volume_rule():
    volume = np.random.default_rng(6).random(SHAPE)
    np.testing.assert_array_equal(to_display(volume[:, :, 2]), display_slice(volume, "axial", 2))
    np.testing.assert_array_equal(to_display(volume[:, 4, :]), display_slice(volume, "coronal", 4))
    np.testing.assert_array_equal(to_display(volume[3]), display_slice(volume, "sagittal", 3))
