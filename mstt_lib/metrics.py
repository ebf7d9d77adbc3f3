"""Segmentation metrics for one case: counts, Dice, surface distances in mm, volumes.

Every function takes a predicted mask ``y_pred`` and a reference mask ``y`` of the same
2D or 3D shape; any nonzero value counts as foreground (threshold probabilities first).
Distances and volumes use the voxel ``spacing`` in mm, one value per axis in array order
(default 1 mm). ``evaluate_case`` returns everything as one flat dict, the raw counts
beside the metrics, as nnU-Net's summary does.

Empty masks (``NaN`` means "undefined": such cases drop out of a ``nanmean``):

- ``dice``: both empty -> the ``empty`` argument (NaN by default, as nnU-Net); one empty
  -> 0.0. MONAI's ``ignore_empty=True`` gives NaN whenever ``y`` is empty, even against
  a false-positive prediction; ``ignore_empty=False`` is ``empty=1.0`` here.
- ``hausdorff_distance``, ``average_surface_distance``: both empty -> NaN; one empty ->
  ``inf``. MONAI agrees except for a percentile Hausdorff with one mask empty, which it
  returns as NaN (the percentile of infinite distances).
- ``surface_dice``: both empty -> NaN; one empty -> 0.0 (as MONAI).
- ``relative_volume_error``: NaN when ``y`` is empty; -1.0 when only ``y_pred`` is.

Surfaces: the boundary of a mask is its foreground voxels with at least one background
face neighbour (4-neighbourhood in 2D, 6-neighbourhood in 3D); outside the array counts
as background, so a mask touching the volume edge has a boundary there. This is MONAI's
``get_mask_edges`` (``binary_erosion(mask) ^ mask``). The distance from a boundary voxel
to the other surface is the exact Euclidean distance in mm to the nearest boundary voxel
of the other mask (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``),
computed on a box around both masks only.

References: Dice, eq. 2 of the MSTT-199 paper; nnU-Net v2 ``evaluate_predictions.py``;
Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for
radiotherapy", arXiv:1809.04430 (surface Dice); MONAI ``monai.metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "average_surface_distance",
    "confusion_counts",
    "dice",
    "evaluate_case",
    "hausdorff_distance",
    "surface_dice",
    "volume_error",
]


# --- input checks -----------------------------------------------------------------------------


def _masks(y_pred, y) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(y_pred), np.asarray(y)
    if pred.shape != true.shape:
        raise ValueError(f"shape of y_pred {pred.shape} and y {true.shape} should be equal")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks should be 2D or 3D, got shape {pred.shape} ({pred.ndim}D)")
    return pred != 0, true != 0


def _spacing(spacing: Sequence[float] | None, shape: tuple[int, ...]) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * len(shape)
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as error:
        raise ValueError(
            f"spacing should be a sequence of {len(shape)} values in mm, got {spacing!r}"
        ) from error
    if len(values) != len(shape):
        raise ValueError(
            f"spacing {values} has {len(values)} values but the masks have shape {shape} "
            f"({len(shape)}D): give one spacing in mm per axis"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values should be finite and > 0 mm, got {values}")
    return values


def _prepare(y_pred, y, spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    pred, true = _masks(y_pred, y)
    return pred, true, _spacing(spacing, pred.shape)


def _check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(
            f"percentile should be between 0 and 100 (or None for the maximum), got {percentile}"
        )


def _check_tolerance(tolerance_mm: float) -> None:
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm should be finite and >= 0, got {tolerance_mm}")


# --- counts and overlap -----------------------------------------------------------------------


def _counts(pred: np.ndarray, true: np.ndarray) -> dict[str, int]:
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(true)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(pred.size) - tp - fp - fn}


def _dice(counts: dict[str, int], empty: float) -> float:
    denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    return float(empty) if denominator == 0 else 2 * counts["tp"] / denominator


def confusion_counts(y_pred, y) -> dict[str, int]:
    """Voxel counts ``tp``, ``fp``, ``fn``, ``tn`` of two binary masks of the same 2D/3D shape.

    Any nonzero value is foreground. Raises ``ValueError`` naming both shapes if they differ.

    >>> confusion_counts([[1, 1, 0, 0]], [[0, 1, 1, 0]])
    {'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    return _counts(*_masks(y_pred, y))


def dice(y_pred, y, empty: float = math.nan) -> float:
    """Dice coefficient 2TP / (2TP + FP + FN) (the paper's eq. 2).

    Args:
        y_pred, y: binary masks of the same 2D/3D shape.
        empty: the result when both masks are empty (0 / 0). NaN by default, as in
            nnU-Net, so that such cases drop out of a ``nanmean``; pass 1.0 to count an
            empty prediction of an empty reference as perfect (MONAI's
            ``ignore_empty=False``). One mask empty and the other not gives 0.0; MONAI's
            default ``ignore_empty=True`` gives NaN whenever ``y`` is empty, even for a
            false-positive prediction, which here counts as 0.0.

    >>> dice([[1, 1, 1, 0]], [[0, 1, 1, 1]])
    0.6666666666666666
    """
    return _dice(confusion_counts(y_pred, y), empty)


# --- surface distances ------------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each boundary voxel of ``pred`` to ``true``'s boundary, and back.

    Both masks must be non-empty. The work is done on the bounding box of both masks padded
    by one background voxel: every boundary voxel lies in it, so the nearest-neighbour
    distances are exact, and the padding makes the volume edge count as background.
    """
    box = ndimage.find_objects((pred | true).view(np.uint8))[0]
    pred_box, true_box = np.pad(pred[box], 1), np.pad(true[box], 1)
    pred_edge, true_edge = _boundary(pred_box), _boundary(true_box)
    to_true = ndimage.distance_transform_edt(~true_edge, sampling=spacing)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[true_edge]
    return to_true, to_pred


def _empty_rule(pred: np.ndarray, true: np.ndarray, both: float, one: float) -> float | None:
    has_pred, has_true = bool(pred.any()), bool(true.any())
    if not has_pred and not has_true:
        return both
    if not (has_pred and has_true):
        return one
    return None


def _hausdorff(to_true: np.ndarray, to_pred: np.ndarray, percentile: float | None) -> float:
    if percentile is None:
        return float(max(to_true.max(), to_pred.max()))
    return float(max(np.percentile(to_true, percentile), np.percentile(to_pred, percentile)))


def _assd(to_true: np.ndarray, to_pred: np.ndarray) -> float:
    return float((to_true.sum() + to_pred.sum()) / (to_true.size + to_pred.size))


def _surface_dice(to_true: np.ndarray, to_pred: np.ndarray, tolerance_mm: float) -> float:
    within = np.count_nonzero(to_true <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    return float(within / (to_true.size + to_pred.size))


def hausdorff_distance(
    y_pred, y, spacing: Sequence[float] | None = None, percentile: float | None = 95.0
) -> float:
    """Percentile Hausdorff distance in mm (HD95 by default; ``percentile=None``: the maximum).

    Definition (MONAI's and DeepMind's ``surface-distance``): take the ``percentile``-th
    percentile (linear interpolation, ``numpy.percentile``'s default, as ``torch.quantile``)
    of the distances from ``y_pred``'s surface to ``y``'s, and of those from ``y``'s to
    ``y_pred``'s, and return the larger of the two. This equals
    ``monai.metrics.compute_hausdorff_distance(..., percentile=95, spacing=spacing)`` so
    numbers compare directly with MONAI users'. It is not MedPy's ``hd95``, which takes
    the percentile of both sets pooled; that is never larger and can be smaller when one
    surface is much larger than the other.

    Args:
        y_pred, y: binary masks of the same 2D/3D shape.
        spacing: voxel size in mm per axis, in array order; default 1 mm.
        percentile: in [0, 100], or None for the classic (maximum) Hausdorff distance.

    Returns:
        Distance in mm. Both masks empty: NaN. One empty: ``inf`` (no surface to reach;
        MONAI returns inf for the maximum but NaN for a percentile).
    """
    _check_percentile(percentile)
    pred, true, spacing = _prepare(y_pred, y, spacing)
    special = _empty_rule(pred, true, both=math.nan, one=math.inf)
    if special is not None:
        return special
    return _hausdorff(*_surface_distances(pred, true, spacing), percentile)


def average_surface_distance(y_pred, y, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    The mean over the boundary voxels of both masks of their distance to the other mask's
    surface: (sum d(pred -> y) + sum d(y -> pred)) / (n_pred + n_y). Equals
    ``monai.metrics.compute_average_surface_distance(..., symmetric=True, spacing=spacing)``.
    Both masks empty: NaN; one empty: ``inf`` (as MONAI).
    """
    pred, true, spacing = _prepare(y_pred, y, spacing)
    special = _empty_rule(pred, true, both=math.nan, one=math.inf)
    if special is not None:
        return special
    return _assd(*_surface_distances(pred, true, spacing))


def surface_dice(y_pred, y, spacing: Sequence[float] | None = None, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice (Nikolov et al.) at ``tolerance_mm``, in [0, 1].

    The fraction of the boundary voxels of both masks that lie within ``tolerance_mm``
    (inclusive, ``<=``) of the other mask's surface. Boundary size is the number of boundary
    voxels, as ``monai.metrics.compute_surface_dice(..., class_thresholds=[tolerance_mm],
    spacing=spacing)`` with its default ``use_subvoxels=False``, which it equals.
    Both masks empty: NaN; one empty: 0.0 (as MONAI).
    """
    _check_tolerance(tolerance_mm)
    pred, true, spacing = _prepare(y_pred, y, spacing)
    special = _empty_rule(pred, true, both=math.nan, one=0.0)
    if special is not None:
        return special
    return _surface_dice(*_surface_distances(pred, true, spacing), tolerance_mm)


# --- volumes and the whole case ---------------------------------------------------------------


def _volumes(counts: dict[str, int], spacing: tuple[float, ...]) -> dict[str, float]:
    voxel_ml = math.prod(spacing) / 1000.0
    predicted = (counts["tp"] + counts["fp"]) * voxel_ml
    true = (counts["tp"] + counts["fn"]) * voxel_ml
    return {
        "volume_pred_ml": predicted,
        "volume_true_ml": true,
        "volume_error_ml": predicted - true,
        "relative_volume_error": (predicted - true) / true if true > 0 else math.nan,
    }


def volume_error(y_pred, y, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Predicted and reference volumes in ml and their difference.

    Returns ``volume_pred_ml``, ``volume_true_ml``, ``volume_error_ml`` (pred - true) and
    ``relative_volume_error`` ((pred - true) / true, NaN when ``y`` is empty). A voxel is
    ``prod(spacing)`` mm^3 = ``prod(spacing) / 1000`` ml; a 2D mask is taken as one slice
    1 mm thick.
    """
    pred, true, spacing = _prepare(y_pred, y, spacing)
    return _volumes(_counts(pred, true), spacing)


def evaluate_case(
    y_pred,
    y,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 2.0,
    empty: float = math.nan,
) -> dict[str, float]:
    """Every metric of one case as one flat dict, the raw counts first.

    Keys: ``tp``, ``fp``, ``fn``, ``tn`` (voxels), ``dice``, ``hd95_mm``, ``assd_mm``,
    ``surface_dice`` (at ``tolerance_mm``), ``volume_pred_ml``, ``volume_true_ml``,
    ``volume_error_ml``, ``relative_volume_error``. Each value is what the function of the
    same name returns (``empty`` is passed to :func:`dice`), with the same empty-mask rules;
    the surface distances are computed once for all three surface metrics.
    """
    _check_tolerance(tolerance_mm)
    pred, true, spacing = _prepare(y_pred, y, spacing)
    counts = _counts(pred, true)
    result: dict[str, float] = {**counts, "dice": _dice(counts, empty)}
    special = _empty_rule(pred, true, both=math.nan, one=math.inf)
    if special is None:
        to_true, to_pred = _surface_distances(pred, true, spacing)
        result["hd95_mm"] = _hausdorff(to_true, to_pred, 95.0)
        result["assd_mm"] = _assd(to_true, to_pred)
        result["surface_dice"] = _surface_dice(to_true, to_pred, tolerance_mm)
    else:
        result["hd95_mm"] = result["assd_mm"] = special
        result["surface_dice"] = 0.0 if math.isinf(special) else math.nan
    result.update(_volumes(counts, spacing))
    return result
