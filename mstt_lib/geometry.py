"""Voxel grids and world space in one place: LPS and RAS, the nearest rotation, grids and
resampling onto them, the planes of a volume and how a slice is displayed.

Conventions, shared by every stage:

- World coordinates are RAS (nibabel's and NIfTI's): +x right, +y anterior, +z superior.
  DICOM and ANTs (ITK) work in LPS; ``LPS_TO_RAS`` converts either way (it is its own inverse).
- A grid is (``shape``, ``affine``): the 4x4 affine maps a voxel index (i, j, k) to its
  centre in world mm.
- The nearest rotation keeps the handedness of its input (``nearest_rotation``): an image
  whose axes form a left-handed frame (an LAS grid, say) keeps its voxel order.
- Planes are named by their slice axis in a RAS-ordered volume (``PLANE_AXIS``).
- Display is radiological (``display_slice``): the patient's right on the screen's left;
  axial slices anterior up, coronal and sagittal superior up, sagittal anterior on the left.
  It holds for a volume reordered to RAS first (``to_ras``), whatever its file's orientation.
"""

from __future__ import annotations

from collections.abc import Mapping

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "LPS_TO_RAS",
    "PLANES",
    "PLANE_AXIS",
    "lps_to_ras",
    "voxel_spacing",
    "has_shear",
    "nearest_rotation",
    "rotation_angle_deg",
    "euler_rotation",
    "motion_matrix",
    "misalignment_matrix",
    "axis_aligned_affine",
    "corners_world",
    "same_grid",
    "isotropic_grid",
    "orthogonal_grid",
    "field_of_view_overlap",
    "resample_array",
    "resample_image",
    "resample_mask",
    "remove_shear",
    "on_grid",
    "ras_transform",
    "to_ras",
    "display_slice",
    "to_display",
    "display_point",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # and RAS to LPS: x and y negated

PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the slice axis of each plane (RAS order)

AFFINE_TOLERANCE_MM = 1e-3  # two affines this close describe the same grid


# ---------------------------------------------------------------------------
# World frames and rotations.


def lps_to_ras(matrix_or_points: np.ndarray) -> np.ndarray:
    """An LPS 4x4 affine, or (n, 3) points, in RAS; the same call converts RAS to LPS."""
    array = np.asarray(matrix_or_points, dtype=float)
    if array.shape == (4, 4):
        return LPS_TO_RAS @ array
    if array.ndim >= 1 and array.shape[-1] == 3:
        return array * LPS_TO_RAS.diagonal()[:3]
    raise ValueError(f"expected a 4x4 affine or points of shape (n, 3), got shape {array.shape}")


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """The length (mm) of each voxel axis: the norms of the affine's columns."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def has_shear(affine: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Whether the voxel axes of ``affine`` are not mutually perpendicular."""
    directions = np.asarray(affine, dtype=float)[:3, :3] / voxel_spacing(affine)
    gram = directions.T @ directions
    return bool(np.abs(gram - np.eye(3)).max() > tolerance)


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The orthonormal matrix closest to ``matrix`` (its polar factor), of the same handedness.

    One rule for every caller: the determinant keeps the sign of ``matrix``'s. A proper
    rotation (a fitted rigid motion) stays proper, det +1; a left-handed voxel frame (an LAS
    grid) stays left-handed, det -1, so a grid made orthogonal keeps its voxel order. The
    polar factor ``U V^T`` of the SVD already has that sign for a non-singular matrix; the
    check guards a nearly singular one, whose smallest singular direction is then flipped.
    """
    matrix = np.asarray(matrix, dtype=float)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) * np.linalg.det(matrix) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return rotation


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """The angle (degrees) of a 3x3 rotation about its axis."""
    cosine = (np.trace(rotation) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1, 1))))


def euler_rotation(angles_deg) -> np.ndarray:
    """Rotation matrix for rotations about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def motion_matrix(angles_deg, centre, shift) -> np.ndarray:
    """4x4 world matrix of a rigid motion: ``euler_rotation(angles_deg)`` about ``centre``, then ``shift``."""
    rotation = euler_rotation(angles_deg)
    centre = np.asarray(centre, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + np.asarray(shift, dtype=float)
    return matrix


def misalignment_matrix(truth: Mapping) -> np.ndarray:
    """The recorded patient motion of a synthetic case, T2 point -> where it lies in the T1 scan.

    ``truth`` is a row of the synthetic cohort's truth table (``rot_{x,y,z}_deg``,
    ``centre_{x,y,z}_mm``, ``shift_{x,y,z}_mm``, RAS). Registering T1 (moving) onto T2
    (fixed) should recover this matrix. It lives here, not in the generator, so that the
    registration stage can check itself without importing the generator.
    """
    return motion_matrix(
        [truth[f"rot_{a}_deg"] for a in "xyz"],
        [truth[f"centre_{a}_mm"] for a in "xyz"],
        [truth[f"shift_{a}_mm"] for a in "xyz"],
    )


# ---------------------------------------------------------------------------
# Grids.


def axis_aligned_affine(shape, spacing, axcodes: str, centre) -> np.ndarray:
    """Affine of a grid along the world axes in orientation ``axcodes`` ("RAS", "LPS", ...),
    its middle voxel at ``centre``."""
    positive = axcodes.translate(str.maketrans("LPI", "RAS"))
    if sorted(positive) != ["A", "R", "S"]:
        raise ValueError(f"axcodes should name each of R/L, A/P, S/I once, got {axcodes!r}")
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, code in enumerate(axcodes):
        sign = 1.0 if code in "RAS" else -1.0
        affine["RAS".index(positive[axis]), axis] = sign * float(np.broadcast_to(spacing, 3)[axis])
    affine[:3, 3] = np.asarray(centre, dtype=float) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def corners_world(shape, affine: np.ndarray) -> np.ndarray:
    """World positions of the 8 outer corners of a grid's field of view (voxel edges)."""
    low, high = -0.5, np.asarray(shape, float) - 0.5
    corners = np.array([[x, y, z] for x in (low, high[0]) for y in (low, high[1]) for z in (low, high[2])])
    return corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = AFFINE_TOLERANCE_MM) -> bool:
    """Whether two grids coincide: same shape and affines within ``atol`` mm."""
    return tuple(shape_a)[:3] == tuple(shape_b)[:3] and bool(np.allclose(affine_a, affine_b, atol=atol))


def _covering_grid(shape, affine, rotation: np.ndarray, spacing) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid along ``rotation``'s columns, ``spacing`` mm apart, covering (shape, affine)'s view."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), 3)
    local = corners_world(shape, affine) @ rotation  # corner coordinates along the new axes
    low, high = local.min(0), local.max(0)
    new_shape = tuple(int(n) for n in np.maximum(np.ceil((high - low) / spacing - 1e-6), 1))
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation * spacing
    new_affine[:3, 3] = rotation @ (low + spacing / 2)
    return new_shape, new_affine


def isotropic_grid(shape, affine: np.ndarray, spacing: float = 1.0) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid of ``spacing`` mm covering the field of view of (``shape``, ``affine``).

    Its axes follow the input's direction cosines made orthonormal and reordered and
    flipped to the nearest of R, A, S, so the slice axis of an axial scan is axis 2.
    """
    if spacing <= 0:
        raise ValueError(f"spacing should be positive, got {spacing}")
    directions = np.asarray(affine, dtype=float)[:3, :3] / voxel_spacing(affine)
    ornt = nib.orientations.io_orientation(affine)  # voxel axis -> (world axis, flip)
    ordered = np.zeros((3, 3))
    for axis, (world_axis, flip) in enumerate(ornt.astype(int)):
        ordered[:, world_axis] = directions[:, axis] * flip
    return _covering_grid(shape, affine, nearest_rotation(ordered), spacing)


def orthogonal_grid(shape, affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """The nearest grid with perpendicular axes (same spacing, same handedness) covering the view."""
    spacing = voxel_spacing(affine)
    return _covering_grid(shape, affine, nearest_rotation(np.asarray(affine)[:3, :3] / spacing), spacing)


def field_of_view_overlap(a: nib.Nifti1Image, b: nib.Nifti1Image) -> float:
    """Fraction of the smaller field of view (axis-aligned world boxes) covered by the other."""
    boxes = []
    for image in (a, b):
        corners = corners_world(image.shape, image.affine)
        boxes.append((corners.min(0), corners.max(0)))
    (low_a, high_a), (low_b, high_b) = boxes
    overlap = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None).prod()
    smaller = min((high_a - low_a).prod(), (high_b - low_b).prod())
    return float(overlap / smaller) if smaller > 0 else 0.0


# ---------------------------------------------------------------------------
# Resampling onto a grid.


def resample_array(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape,
    target_affine: np.ndarray,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Sample ``data`` (on ``source_affine``) at the voxel centres of the target grid.

    ``order`` 1 is trilinear, 0 nearest. A voxel's value holds up to its edges, so
    target points within the source's field of view (its voxel centres plus half a
    voxel on every side) get the edge values; points farther out get ``fill``.
    """
    source_from_target = np.linalg.inv(source_affine) @ target_affine
    # One voxel of edge padding lets points up to a voxel past the outer centres take the
    # edge value; without it scipy gives `fill` half a voxel inside the field of view.
    padded = np.pad(np.asarray(data, dtype=np.float32), 1, mode="edge")
    return ndimage.affine_transform(
        padded,
        source_from_target[:3, :3],
        offset=source_from_target[:3, 3] + 1,
        output_shape=tuple(target_shape),
        order=order,
        mode="constant",
        cval=fill,
    )


def resample_image(
    image: nib.Nifti1Image, target_shape, target_affine: np.ndarray, order: int = 1
) -> np.ndarray:
    """An opened image's voxels resampled onto a target grid (float32)."""
    return resample_array(
        np.asarray(image.dataobj, dtype=np.float32), image.affine, target_shape, target_affine, order
    )


def resample_mask(
    mask: np.ndarray, source_affine: np.ndarray, target_shape, target_affine: np.ndarray
) -> np.ndarray:
    """Label-preserving resampling of a binary mask: linear interpolation, then >= 0.5.

    Smoother than nearest neighbour when 5 mm slices become 1 mm ones, and a mask
    taken there and back keeps its shape (Dice >= 0.95 in the tests).
    """
    values = resample_array(
        (np.asarray(mask) > 0).astype(np.float32), source_affine, target_shape, target_affine, 1
    )
    return values >= 0.5


def remove_shear(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The image resampled onto the nearest grid with perpendicular axes (same spacing)."""
    shape, affine = orthogonal_grid(image.shape, image.affine)
    return nib.Nifti1Image(resample_image(image, shape, affine), affine)


def on_grid(image: nib.Nifti1Image, reference: nib.Nifti1Image, order: int = 1) -> nib.Nifti1Image:
    """``image`` on ``reference``'s grid (the case's mask grid, say), through the headers' world
    coordinates; returned as it is when it already lies there.

    Through the headers only: the patient's motion between scans stays (registration
    corrects it). Linear by default; values outside ``image``'s field of view are 0.
    """
    if same_grid(image.shape, image.affine, reference.shape, reference.affine):
        return image
    data = resample_image(image, reference.shape[:3], reference.affine, order)
    return nib.Nifti1Image(data, reference.affine)


# ---------------------------------------------------------------------------
# Orientation and display.


def ras_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel's orientation transform taking a volume on ``affine`` to the nearest RAS order."""
    return nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume's axes permuted and flipped to the nearest RAS order, and its spacing (mm) in
    that order: the one layout every display starts from (no resampling)."""
    transform = ras_transform(affine)
    zooms = voxel_spacing(affine)
    spacing = np.empty(3)
    for source_axis, (target_axis, _) in enumerate(transform.astype(int)):
        spacing[target_axis] = zooms[source_axis]
    return nib.orientations.apply_orientation(np.asarray(array), transform), spacing


def display_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice of a RAS-ordered volume as shown on screen (rows, columns), radiological view.

    axial: rows anterior to posterior, the patient's right on the left;
    coronal: rows superior to inferior, the patient's right on the left;
    sagittal: rows superior to inferior, anterior on the left.
    One rule for the three: both in-plane axes reversed, then transposed.
    """
    if plane not in PLANE_AXIS:
        raise ValueError(f"plane should be one of {list(PLANES)}, got {plane!r}")
    where: list = [slice(None)] * 3
    where[PLANE_AXIS[plane]] = index
    return to_display(np.asarray(volume)[tuple(where)])


def to_display(slice_2d: np.ndarray) -> np.ndarray:
    """A slice ``[a, b]`` of a RAS-ordered volume (a < b its in-plane axes, as ``volume[:, :, k]`` or a
    2.5D sample's channel) as shown on screen: both axes reversed, then transposed (``display_slice``)."""
    return np.asarray(slice_2d)[::-1, ::-1].T


def display_point(plane: str, point, shape) -> tuple[int, int]:
    """Display (column, row) of voxel ``point`` (x, y, z) of a RAS volume in ``plane``'s slice."""
    if plane not in PLANE_AXIS:
        raise ValueError(f"plane should be one of {list(PLANES)}, got {plane!r}")
    a, b = (i for i in range(3) if i != PLANE_AXIS[plane])
    return int(shape[a] - 1 - point[a]), int(shape[b] - 1 - point[b])
