"""The paper's preprocessing (section 4.2): resample to 1 x 1 x 1 mm, clamp each image to its
own 0.05 and 99.95 percentiles, min-max normalise to [0, 1].

Resampling works in world coordinates through the affines, so LPS, RAS, oblique and
sheared inputs all land where they belong. The 1 mm grid keeps the input's
orientation, reordered to the nearest RAS axes (so axis 2 is the slice axis of an
axial scan) and made orthonormal; its affine is kept, so a prediction on it maps
back to the native grid (``resample_array`` with the native grid as target).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "LOW_PERCENTILE",
    "HIGH_PERCENTILE",
    "clip_percentiles",
    "minmax_normalise",
    "normalise_intensity",
    "isotropic_grid",
    "resample_array",
    "resample_image",
    "resample_mask",
    "has_shear",
    "remove_shear",
    "field_of_view_overlap",
]

LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95


# ---------------------------------------------------------------------------
# Intensity.


def clip_percentiles(
    image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """Clamp an image to its own ``low`` and ``high`` percentiles (in %, not fractions).

    The paper clamps at 0.05 % and 99.95 % to drop outliers before min-max.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles should satisfy 0 <= low < high <= 100, got {low}, {high}")
    lo, hi = np.percentile(image, [low, high])
    return np.clip(image, lo, hi)


def minmax_normalise(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's own minimum and maximum; a constant image gives 0."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    return (image - lo) / (hi - lo)


def normalise_intensity(
    image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """The paper's intensity pipeline: percentile clamp, then min-max to [0, 1]."""
    return minmax_normalise(clip_percentiles(image, low, high))


# ---------------------------------------------------------------------------
# Grids and resampling.


def _columns(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def has_shear(affine: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Whether the voxel axes of ``affine`` are not mutually perpendicular."""
    directions = affine[:3, :3] / _columns(affine)
    gram = directions.T @ directions
    return bool(np.abs(gram - np.eye(3)).max() > tolerance)


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The orthonormal matrix closest to ``matrix`` (polar decomposition), same handedness."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) * np.linalg.det(matrix) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return rotation


def _corners_world(shape, affine) -> np.ndarray:
    """World positions of the 8 outer corners of a grid's field of view (voxel edges)."""
    low, high = -0.5, np.asarray(shape, float) - 0.5
    corners = np.array([[x, y, z] for x in (low, high[0]) for y in (low, high[1]) for z in (low, high[2])])
    return corners @ affine[:3, :3].T + affine[:3, 3]


def isotropic_grid(shape, affine: np.ndarray, spacing: float = 1.0) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid of ``spacing`` mm covering the field of view of (``shape``, ``affine``).

    Its axes follow the input's direction cosines made orthonormal and reordered and
    flipped to the nearest of R, A, S, so the slice axis of an axial scan is axis 2.
    """
    if spacing <= 0:
        raise ValueError(f"spacing should be positive, got {spacing}")
    directions = affine[:3, :3] / _columns(affine)
    ornt = nib.orientations.io_orientation(affine)  # voxel axis -> (world axis, flip)
    ordered = np.zeros((3, 3))
    for axis, (world_axis, flip) in enumerate(ornt.astype(int)):
        ordered[:, world_axis] = directions[:, axis] * flip
    rotation = _nearest_rotation(ordered)
    local = _corners_world(shape, affine) @ rotation  # corner coordinates along the new axes
    low, high = local.min(0), local.max(0)
    new_shape = tuple(int(n) for n in np.maximum(np.ceil((high - low) / spacing - 1e-6), 1))
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation * spacing
    new_affine[:3, 3] = rotation @ (low + spacing / 2)
    return new_shape, new_affine


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
    spacing = _columns(image.affine)
    rotation = _nearest_rotation(image.affine[:3, :3] / spacing)
    local = _corners_world(image.shape, image.affine) @ rotation
    low, high = local.min(0), local.max(0)
    shape = tuple(int(n) for n in np.maximum(np.ceil((high - low) / spacing - 1e-6), 1))
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = rotation @ (low + spacing / 2)
    return nib.Nifti1Image(resample_image(image, shape, affine), affine)


def field_of_view_overlap(a: nib.Nifti1Image, b: nib.Nifti1Image) -> float:
    """Fraction of the smaller field of view (axis-aligned world boxes) covered by the other."""
    boxes = []
    for image in (a, b):
        corners = _corners_world(image.shape, image.affine)
        boxes.append((corners.min(0), corners.max(0)))
    (low_a, high_a), (low_b, high_b) = boxes
    overlap = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None).prod()
    smaller = min((high_a - low_a).prod(), (high_b - low_b).prod())
    return float(overlap / smaller) if smaller > 0 else 0.0
