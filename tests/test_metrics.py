"""mstt_lib.metrics: hand-computed cases, empty masks, agreement with MONAI, bad input."""

import math
import warnings

import numpy as np
import pytest

from mstt_lib.metrics import (
    average_surface_distance,
    confusion_counts,
    dice,
    evaluate_case,
    hausdorff_distance,
    surface_dice,
    volume_error,
)

EMPTY_2D = np.zeros((6, 6), dtype=bool)


def _square_2d() -> np.ndarray:
    square = np.zeros((10, 10), dtype=bool)
    square[2:7, 2:7] = True
    return square


def _bars_2d() -> tuple[np.ndarray, np.ndarray]:
    """An 8-voxel bar and a 4-voxel bar 3 rows below it, left-aligned (each bar is all boundary)."""
    long_bar, short_bar = np.zeros((8, 12), dtype=bool), np.zeros((8, 12), dtype=bool)
    long_bar[1, 2:10] = True
    short_bar[4, 2:6] = True
    return long_bar, short_bar


# --- counts and Dice --------------------------------------------------------------------------


def test_confusion_counts_of_a_hand_computed_pair():
    y_pred = np.array([[1, 1, 1, 0, 0, 0]])
    y = np.array([[0, 1, 1, 1, 1, 0]])
    assert confusion_counts(y_pred, y) == {"tp": 2, "fp": 1, "fn": 2, "tn": 1}


def test_confusion_counts_treat_any_nonzero_value_as_foreground():
    y_pred = np.array([[2.0, -1.0, 0.5, 0.0]])
    y = np.array([[True, False, True, False]])
    assert confusion_counts(y_pred, y) == {"tp": 2, "fp": 1, "fn": 0, "tn": 1}


def test_dice_is_2tp_over_2tp_plus_fp_plus_fn():
    y_pred = np.array([[1, 1, 1, 0, 0, 0]])
    y = np.array([[0, 1, 1, 1, 1, 0]])
    assert dice(y_pred, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # 4/7


def test_dice_of_identical_masks_is_one_and_of_disjoint_masks_zero():
    a = np.array([[1, 1, 0, 0]])
    assert dice(a, a) == 1.0
    assert dice(a, 1 - a) == 0.0


def test_dice_of_two_empty_masks_is_nan_by_default_and_the_empty_argument_otherwise():
    assert math.isnan(dice(EMPTY_2D, EMPTY_2D))
    assert dice(EMPTY_2D, EMPTY_2D, empty=1.0) == 1.0


def test_dice_with_one_empty_mask_is_zero_whatever_empty_says():
    square = np.zeros((6, 6), dtype=bool)
    square[1:3, 1:3] = True
    for empty in (math.nan, 1.0):
        assert dice(square, EMPTY_2D, empty=empty) == 0.0
        assert dice(EMPTY_2D, square, empty=empty) == 0.0


# --- surface distances by hand ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("axis", "hd95", "assd"),
    [
        # Shift by one voxel along axis 0 (2 mm): each 16-voxel ring has distances 8 x 0, 2 x 1 mm, 6 x 2 mm.
        (0, 2.0, (2 * 1 + 6 * 2) * 2 / 32),
        # Shift by one voxel along axis 1 (1 mm): each ring has 8 x 0 and 8 x 1 mm.
        (1, 1.0, 8 * 2 / 32),
    ],
)
def test_shifted_squares_with_anisotropic_spacing_give_hand_computed_hd95_and_assd(axis, hd95, assd):
    square = _square_2d()
    shifted = np.roll(square, 1, axis=axis)
    assert hausdorff_distance(shifted, square, spacing=(2.0, 1.0)) == pytest.approx(hd95)
    assert average_surface_distance(shifted, square, spacing=(2.0, 1.0)) == pytest.approx(assd)


def test_surface_dice_of_shifted_squares_steps_at_the_hand_computed_distances():
    square = _square_2d()
    shifted = np.roll(square, 1, axis=0)  # ring distances 8 x 0, 2 x 1 mm, 6 x 2 mm on each side
    spacing = (2.0, 1.0)
    assert surface_dice(shifted, square, spacing, tolerance_mm=0.99) == pytest.approx(16 / 32)
    assert surface_dice(shifted, square, spacing, tolerance_mm=1.0) == pytest.approx(20 / 32)
    assert surface_dice(shifted, square, spacing, tolerance_mm=1.99) == pytest.approx(20 / 32)
    assert surface_dice(shifted, square, spacing, tolerance_mm=2.0) == 1.0  # inclusive: d <= tolerance


def test_hd95_takes_the_larger_of_the_two_directed_percentiles_not_the_pooled_percentile():
    long_bar, short_bar = _bars_2d()
    # long -> short: 4 x 6 mm (3 rows of 2 mm) and sqrt(36 + k^2) for k = 1..4; short -> long: 4 x 6 mm.
    long_to_short = np.sort([6, 6, 6, 6, *np.sqrt([37, 40, 45, 52])])
    directed = long_to_short[6] + 0.65 * (long_to_short[7] - long_to_short[6])  # rank 0.95 * 7 = 6.65
    pooled = long_to_short[6] + 0.45 * (long_to_short[7] - long_to_short[6])  # rank 0.95 * 11 = 10.45
    result = hausdorff_distance(long_bar, short_bar, spacing=(2.0, 1.0))
    assert result == pytest.approx(directed)
    assert result > pooled + 0.1
    assert hausdorff_distance(long_bar, short_bar, (2.0, 1.0), percentile=None) == pytest.approx(
        math.sqrt(52)
    )
    assert hausdorff_distance(short_bar, long_bar, (2.0, 1.0)) == pytest.approx(directed)  # symmetric


def test_assd_averages_over_the_boundary_voxels_of_both_masks():
    long_bar, short_bar = _bars_2d()
    expected = (8 * 6 + np.sqrt([37, 40, 45, 52]).sum()) / 12
    assert average_surface_distance(long_bar, short_bar, (2.0, 1.0)) == pytest.approx(expected)


def test_surface_dice_counts_the_boundary_voxels_of_both_masks_within_tolerance():
    long_bar, short_bar = _bars_2d()
    assert surface_dice(long_bar, short_bar, (2.0, 1.0), tolerance_mm=5.99) == 0.0
    assert surface_dice(long_bar, short_bar, (2.0, 1.0), tolerance_mm=6.0) == pytest.approx(8 / 12)
    assert surface_dice(long_bar, short_bar, (2.0, 1.0), tolerance_mm=6.1) == pytest.approx(9 / 12)


def test_identical_masks_have_zero_distances_and_surface_dice_one():
    blob = np.zeros((9, 8, 7), dtype=bool)
    blob[2:7, 1:6, 2:5] = True
    assert hausdorff_distance(blob, blob, (0.8, 0.8, 3.0)) == 0.0
    assert average_surface_distance(blob, blob, (0.8, 0.8, 3.0)) == 0.0
    assert surface_dice(blob, blob, (0.8, 0.8, 3.0), tolerance_mm=0.0) == 1.0


def test_the_volume_edge_counts_as_background_for_the_boundary():
    full = np.ones((4, 4), dtype=bool)  # boundary: the 12 voxels along the array edge
    three_columns = full.copy()
    three_columns[:, 3] = False  # boundary: 10 voxels
    # full -> three_columns: 8 x 0, 4 x 1 (column 3); three_columns -> full: 8 x 0, 2 x 1 ((1, 2), (2, 2)).
    assert average_surface_distance(full, three_columns) == pytest.approx(6 / 22)
    assert hausdorff_distance(full, three_columns) == 1.0


def test_distances_between_far_apart_voxels_in_opposite_corners_are_exact():
    a, b = np.zeros((20, 30), dtype=bool), np.zeros((20, 30), dtype=bool)
    a[0, 0] = b[19, 29] = True
    expected = math.hypot(19 * 0.5, 29 * 2.0)
    assert hausdorff_distance(a, b, (0.5, 2.0)) == pytest.approx(expected)
    assert average_surface_distance(a, b, (0.5, 2.0)) == pytest.approx(expected)


# --- empty masks ------------------------------------------------------------------------------


def test_surface_metrics_of_two_empty_masks_are_nan():
    assert math.isnan(hausdorff_distance(EMPTY_2D, EMPTY_2D))
    assert math.isnan(hausdorff_distance(EMPTY_2D, EMPTY_2D, percentile=None))
    assert math.isnan(average_surface_distance(EMPTY_2D, EMPTY_2D))
    assert math.isnan(surface_dice(EMPTY_2D, EMPTY_2D))


@pytest.mark.parametrize("empty_side", ["y_pred", "y"])
def test_surface_metrics_with_one_empty_mask_are_inf_distances_and_zero_surface_dice(empty_side):
    square = np.zeros((6, 6), dtype=bool)
    square[1:4, 1:4] = True
    pair = (EMPTY_2D, square) if empty_side == "y_pred" else (square, EMPTY_2D)
    assert hausdorff_distance(*pair) == math.inf
    assert hausdorff_distance(*pair, percentile=None) == math.inf
    assert average_surface_distance(*pair) == math.inf
    assert surface_dice(*pair) == 0.0


def test_volume_error_in_ml_uses_the_voxel_spacing():
    y = np.zeros((12, 12, 12), dtype=bool)
    y[1:11, 1:11, 1:11] = True  # 1000 voxels of 2 mm^3 = 2 ml
    y_pred = np.zeros_like(y)
    y_pred[1:6, 1:11, 1:11] = True  # 500 voxels = 1 ml
    result = volume_error(y_pred, y, spacing=(1.0, 1.0, 2.0))
    assert result == pytest.approx(
        {"volume_pred_ml": 1.0, "volume_true_ml": 2.0, "volume_error_ml": -1.0, "relative_volume_error": -0.5}
    )


def test_relative_volume_error_is_nan_for_an_empty_reference_and_minus_one_for_an_empty_prediction():
    square = np.zeros((6, 6), dtype=bool)
    square[1:3, 1:3] = True  # 4 voxels of 1 mm^2, taken as a 1 mm slice: 0.004 ml
    empty_true = volume_error(square, EMPTY_2D)
    assert empty_true["volume_error_ml"] == pytest.approx(0.004)
    assert math.isnan(empty_true["relative_volume_error"])
    assert volume_error(EMPTY_2D, square)["relative_volume_error"] == -1.0
    both = volume_error(EMPTY_2D, EMPTY_2D)
    assert both["volume_error_ml"] == 0.0 and math.isnan(both["relative_volume_error"])


# --- evaluate_case ----------------------------------------------------------------------------


def test_evaluate_case_returns_one_flat_dict_matching_the_single_metrics():
    square = _square_2d()
    shifted = np.roll(square, 1, axis=0)
    spacing = (2.0, 1.0)
    result = evaluate_case(shifted, square, spacing, tolerance_mm=1.0)
    assert list(result) == [
        "tp", "fp", "fn", "tn", "dice", "hd95_mm", "assd_mm", "surface_dice",
        "volume_pred_ml", "volume_true_ml", "volume_error_ml", "relative_volume_error",
    ]  # fmt: skip
    assert {k: result[k] for k in ("tp", "fp", "fn", "tn")} == confusion_counts(shifted, square)
    assert result["dice"] == dice(shifted, square)
    assert result["hd95_mm"] == hausdorff_distance(shifted, square, spacing)
    assert result["assd_mm"] == average_surface_distance(shifted, square, spacing)
    assert result["surface_dice"] == surface_dice(shifted, square, spacing, tolerance_mm=1.0)
    assert {k: result[k] for k in list(result)[8:]} == volume_error(shifted, square, spacing)


def test_evaluate_case_follows_the_documented_empty_mask_rules():
    square = np.zeros((6, 6), dtype=bool)
    square[1:4, 1:4] = True
    both = evaluate_case(EMPTY_2D, EMPTY_2D)
    assert both["tn"] == 36 and both["tp"] == both["fp"] == both["fn"] == 0
    for key in ("dice", "hd95_mm", "assd_mm", "surface_dice", "relative_volume_error"):
        assert math.isnan(both[key]), key
    assert evaluate_case(EMPTY_2D, EMPTY_2D, empty=1.0)["dice"] == 1.0
    for pair in ((EMPTY_2D, square), (square, EMPTY_2D)):
        one = evaluate_case(*pair)
        assert (one["dice"], one["hd95_mm"], one["assd_mm"], one["surface_dice"]) == (
            0.0,
            math.inf,
            math.inf,
            0.0,
        )


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [confusion_counts, dice, hausdorff_distance, average_surface_distance, surface_dice, volume_error],
)
def test_shape_mismatch_raises_naming_both_shapes(metric):
    with pytest.raises(ValueError, match=r"y_pred \(3, 4\) and y \(3, 5\)"):
        metric(np.zeros((3, 4)), np.zeros((3, 5)))


def test_evaluate_case_shape_mismatch_raises_naming_both_shapes():
    with pytest.raises(ValueError, match=r"y_pred \(3, 4, 2\) and y \(3, 4, 3\)"):
        evaluate_case(np.zeros((3, 4, 2)), np.zeros((3, 4, 3)))


@pytest.mark.parametrize(
    "metric", [hausdorff_distance, average_surface_distance, surface_dice, volume_error, evaluate_case]
)
def test_spacing_of_the_wrong_length_raises_quoting_spacing_and_shape(metric):
    with pytest.raises(
        ValueError, match=r"spacing \(1\.0, 1\.0\) has 2 values but the masks have shape \(3, 4, 5\)"
    ):
        metric(np.ones((3, 4, 5)), np.ones((3, 4, 5)), (1.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.0, 0.0), (1.0, -2.0), (1.0, math.nan)])
def test_non_positive_or_nan_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing values should be finite and > 0"):
        hausdorff_distance(np.ones((3, 4)), np.ones((3, 4)), spacing)


def test_scalar_spacing_raises_asking_for_one_value_per_axis():
    with pytest.raises(ValueError, match="sequence of 2 values in mm, got 1.0"):
        surface_dice(np.ones((3, 4)), np.ones((3, 4)), 1.0)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)])
def test_masks_that_are_not_2d_or_3d_raise(shape):
    with pytest.raises(ValueError, match=rf"2D or 3D, got shape \({shape[0]},"):
        dice(np.ones(shape), np.ones(shape))


def test_out_of_range_percentile_and_tolerance_raise_quoting_the_value():
    with pytest.raises(ValueError, match="between 0 and 100.*got 120"):
        hausdorff_distance(np.ones((3, 4)), np.ones((3, 4)), percentile=120)
    with pytest.raises(ValueError, match="tolerance_mm should be finite and >= 0, got -1"):
        surface_dice(np.ones((3, 4)), np.ones((3, 4)), tolerance_mm=-1.0)


# --- agreement with MONAI ---------------------------------------------------------------------


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _blob(shape, seed) -> np.ndarray:
    """An irregular blob: smoothed noise thresholded inside an ellipsoid (may have holes and bays)."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=2.0)
    centre = [s / 2 for s in shape]
    return _ellipsoid(shape, centre, [s / 3 for s in shape]) & (noise > -0.05)


def _monai_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from scipy import ndimage

    shape = (36, 32, 20)
    ellipsoid = _ellipsoid(shape, (17, 15, 10), (10, 8, 5))
    box = np.zeros(shape, dtype=bool)
    box[8:26, 6:22, 4:15] = True
    spheres = _ellipsoid(shape, (9, 9, 9), (5, 5, 5)) | _ellipsoid(shape, (26, 22, 11), (6, 6, 6))
    blob, other_blob = _blob(shape, 0), _blob(shape, 1)
    edge = np.zeros(shape, dtype=bool)
    edge[:12, 20:, 5:20] = True  # touches three faces of the volume
    return [
        ("ellipsoid shifted", np.roll(ellipsoid, (2, -1, 1), axis=(0, 1, 2)), ellipsoid),
        ("ellipsoid eroded", ndimage.binary_erosion(ellipsoid, iterations=2), ellipsoid),
        ("box dilated", ndimage.binary_dilation(box), box),
        ("box vs ellipsoid", box, ellipsoid),
        ("two spheres vs one", spheres, _ellipsoid(shape, (9, 9, 9), (5, 5, 5))),
        ("blob shifted", np.roll(blob, (0, 3, 0), axis=(0, 1, 2)), blob),
        ("blob vs other blob", blob, other_blob),
        ("edge box vs shifted", edge, np.roll(edge, 2, axis=0)),
        ("far apart", _ellipsoid(shape, (5, 5, 4), (3, 3, 2)), _ellipsoid(shape, (30, 26, 15), (4, 4, 3))),
    ]


MONAI_CASES = _monai_cases()
MONAI_SPACINGS = [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (0.5, 1.25, 2.0)]


def _monai():
    monai_metrics = pytest.importorskip("monai.metrics", reason="MONAI is not installed (dev extra)")
    torch = pytest.importorskip("torch")
    return monai_metrics, lambda mask: torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.5+ deprecation inside its own code
@pytest.mark.parametrize("spacing", MONAI_SPACINGS, ids=str)
@pytest.mark.parametrize(("name", "y_pred", "y"), MONAI_CASES, ids=[c[0] for c in MONAI_CASES])
def test_metrics_agree_with_monai(name, y_pred, y, spacing):
    mm, tensor = _monai()
    p, t, sp = tensor(y_pred), tensor(y), list(spacing)
    assert dice(y_pred, y) == pytest.approx(mm.compute_dice(p, t, include_background=True).item(), rel=1e-6)
    monai_hd95 = mm.compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=sp)
    assert hausdorff_distance(y_pred, y, spacing) == pytest.approx(monai_hd95.item(), rel=1e-5)
    monai_hd = mm.compute_hausdorff_distance(p, t, include_background=True, spacing=sp)
    assert hausdorff_distance(y_pred, y, spacing, percentile=None) == pytest.approx(monai_hd.item(), rel=1e-5)
    monai_assd = mm.compute_average_surface_distance(
        p, t, include_background=True, symmetric=True, spacing=sp
    )
    assert average_surface_distance(y_pred, y, spacing) == pytest.approx(monai_assd.item(), rel=1e-5)
    for tolerance in (1.0, 2.0, 3.5):
        monai_nsd = mm.compute_surface_dice(p, t, [tolerance], include_background=True, spacing=sp)
        assert surface_dice(y_pred, y, spacing, tolerance) == pytest.approx(monai_nsd.item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_empty_masks_against_monai_agree_except_where_documented():
    mm, tensor = _monai()
    blob = np.zeros((8, 8, 8), dtype=bool)
    blob[2:5, 2:6, 3:6] = True
    empty = np.zeros_like(blob)
    sp = [1.0, 1.0, 2.0]

    def monai(y_pred, y):
        p, t = tensor(y_pred), tensor(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {
                "dice_ignore_empty": mm.compute_dice(p, t, include_background=True).item(),
                "dice_keep_empty": mm.compute_dice(p, t, include_background=True, ignore_empty=False).item(),
                "hd95": mm.compute_hausdorff_distance(
                    p, t, include_background=True, percentile=95, spacing=sp
                ).item(),
                "hd": mm.compute_hausdorff_distance(p, t, include_background=True, spacing=sp).item(),
                "assd": mm.compute_average_surface_distance(
                    p, t, include_background=True, symmetric=True, spacing=sp
                ).item(),
                "nsd": mm.compute_surface_dice(p, t, [2.0], include_background=True, spacing=sp).item(),
            }

    # Both empty: NaN everywhere, as MONAI; MONAI's ignore_empty=False is our empty=1.0.
    both = monai(empty, empty)
    assert all(math.isnan(both[k]) for k in ("dice_ignore_empty", "hd95", "hd", "assd", "nsd"))
    assert both["dice_keep_empty"] == dice(empty, empty, empty=1.0) == 1.0
    assert math.isnan(dice(empty, empty))

    for y_pred, y in ((empty, blob), (blob, empty)):
        one = monai(y_pred, y)
        # Agreements: maximum Hausdorff and ASSD inf, surface Dice 0, Dice 0 with ignore_empty=False.
        assert one["hd"] == hausdorff_distance(y_pred, y, sp, percentile=None) == math.inf
        assert one["assd"] == average_surface_distance(y_pred, y, sp) == math.inf
        assert one["nsd"] == surface_dice(y_pred, y, sp) == 0.0
        assert one["dice_keep_empty"] == dice(y_pred, y) == 0.0
        # Documented difference: MONAI's percentile of infinite distances is NaN; ours is inf.
        assert math.isnan(one["hd95"]) and hausdorff_distance(y_pred, y, sp) == math.inf

    # Documented difference: MONAI's default ignore_empty=True gives NaN for any empty reference,
    # even against a non-empty (false-positive) prediction; ours scores that 0.0.
    assert math.isnan(monai(blob, empty)["dice_ignore_empty"]) and dice(blob, empty) == 0.0
    assert monai(empty, blob)["dice_ignore_empty"] == 0.0
