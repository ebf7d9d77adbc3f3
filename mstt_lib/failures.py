"""Failure analysis: how each prediction goes wrong, told apart by measurement.

The paper (section 4.3, Figures 6 and 10-17) describes its failures by eye: false
positives on other structures, parts of the tumour missed, small tumours. Here each is a
measurement on the case's native grid, with tumours missed entirely as a kind of their own:

* ``fp_remote_ml``: predicted volume in connected components (26-connected) that do not
  touch the ground truth, not even through one voxel of dilation: a false positive on
  a structure away from the tumour;
* ``fp_near_ml``: the rest of the false positives, an over-segmentation at the tumour (a kind
  of failure the paper does not name);
* ``fn_ml``: ground-truth volume the prediction misses; ``recall = tp / truth``;
* ``missed_entirely``: a tumour that the prediction does not touch at all.

``classify_failures`` turns them into one ``failure_kind`` per case, first match in
``FAILURE_KINDS`` order, with the thresholds as arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from mstt_lib.io import load_nifti, read_volume

__all__ = [
    "FAILURE_KINDS",
    "error_volumes",
    "measure_failures",
    "classify_failures",
    "describe_cases",
    "error_slice",
    "focus_window",
]

FAILURE_KINDS = (
    "missed entirely",
    "false positives away from the tumour",
    "missed parts of the tumour",
    "false positives at the tumour",
    "small tumour",
    "other",
)
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def error_volumes(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes (ml) of the prediction's errors, split by where they lie.

    Edge cases: an empty prediction has no false positives; an empty ground truth
    makes every predicted component remote and ``recall`` NaN.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    true_positive = int((prediction & truth).sum())
    false_positive = prediction & ~truth
    components, n_components = ndimage.label(prediction, structure=_CONNECTIVITY)
    near_truth = ndimage.binary_dilation(truth, structure=_CONNECTIVITY)
    touching = np.unique(components[near_truth & prediction])
    remote = prediction & ~np.isin(components, touching[touching > 0])
    truth_voxels = int(truth.sum())
    return {
        "truth_ml": truth_voxels * voxel_ml,
        "prediction_ml": int(prediction.sum()) * voxel_ml,
        "tp_ml": true_positive * voxel_ml,
        "fp_ml": int(false_positive.sum()) * voxel_ml,
        "fn_ml": int((truth & ~prediction).sum()) * voxel_ml,
        "fp_remote_ml": int(remote.sum()) * voxel_ml,
        "fp_near_ml": int((false_positive & ~remote).sum()) * voxel_ml,
        "predicted_components": int(n_components),
        "remote_components": int(n_components - (touching > 0).sum()),
        "recall": true_positive / truth_voxels if truth_voxels else float("nan"),
        "missed_entirely": bool(truth_voxels and not (prediction & near_truth).any()),
    }


def measure_failures(results: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """``error_volumes`` of every row of ``results`` (columns ``case_id``, ``prediction``
    and ``native_mask``: the files), joined to the row's other columns."""
    rows = []
    iterator = tqdm(results.to_dict("records"), desc="measuring errors", unit="case", disable=not progress)
    for row in iterator:
        case_id = row["case_id"]
        truth_image = load_nifti(row["native_mask"], case_id)
        prediction_image = load_nifti(row["prediction"], case_id)
        if prediction_image.shape != truth_image.shape:
            raise ValueError(
                f"case {case_id}: prediction {row['prediction']} has shape {prediction_image.shape}, "
                f"its mask {row['native_mask']} {truth_image.shape}"
            )
        spacing = tuple(float(s) for s in truth_image.header.get_zooms()[:3])
        truth = read_volume(truth_image, case_id) > 0
        prediction = read_volume(prediction_image, case_id) > 0
        rows.append({**row, **error_volumes(prediction, truth, spacing)})
    return pd.DataFrame(rows)


def classify_failures(
    table: pd.DataFrame,
    dice_threshold: float = 0.7,
    remote_share: float = 0.25,
    missed_share: float = 0.3,
    small_ml: float | None = None,
    near_share: float = 0.3,
) -> pd.DataFrame:
    """Add ``failed`` (Dice below ``dice_threshold``) and ``failure_kind`` to ``measure_failures``' table.

    A failed case is, first match wins: missed entirely; false positives away from
    the tumour (remote false-positive volume above ``remote_share`` of the tumour's);
    missed parts of the tumour (missed volume above ``missed_share`` of it); false positives
    at the tumour, an over-segmentation (near false-positive volume above ``near_share`` of
    it: not one of the paper's kinds, but what fails most small real tumours); a small
    tumour (below ``small_ml``, by default the lower quartile of the table's tumour
    volumes); else "other". Cases that did not fail get an empty kind.
    """
    table = table.copy()
    if small_ml is None:
        small_ml = float(table["truth_ml"].quantile(0.25)) if len(table) else 0.0
    truth = table["truth_ml"].to_numpy(float)
    conditions = [
        table["missed_entirely"].astype(bool).to_numpy(),
        table["fp_remote_ml"].to_numpy(float) > remote_share * truth,
        table["fn_ml"].to_numpy(float) > missed_share * truth,
        table["fp_near_ml"].to_numpy(float) > near_share * truth,
        truth < small_ml,
    ]
    kinds = np.select(conditions, FAILURE_KINDS[:-1], default=FAILURE_KINDS[-1])
    table["failed"] = table["dice"].fillna(0).to_numpy() < dice_threshold
    table["failure_kind"] = np.where(table["failed"], kinds, "")
    table.attrs["small_ml"] = small_ml
    return table


def describe_cases(table: pd.DataFrame) -> str:
    """One phrase per case of ``measure_failures``' table, worst Dice first: how much of its
    tumour it missed and how much it predicted beside and away from it. Per case, not pooled:
    a sum over the cases lets one large tumour speak for all, and hides small tumours that
    failed by over-segmentation."""
    if table.empty:
        return "No case is under the threshold."
    phrases = [
        f"{row.case_id} (Dice {row.dice:.2f}) missed {row.fn_ml:.0f} of its {row.truth_ml:.0f} ml of "
        f"tumour and predicted {row.fp_near_ml:.0f} ml beside it and {row.fp_remote_ml:.0f} ml away from it"
        for row in table.sort_values("dice").itertuples()
    ]
    return "Per case: " + "; ".join(phrases) + "."


def focus_window(*masks: np.ndarray, min_side: int = 80, scale: float = 2.5) -> tuple[slice, slice]:
    """The square of a 2D slice that a montage panel shows, so that a small tumour's contours
    are seen: centred on the masks' joint bounding box, ``scale`` times its longer side (at
    least ``min_side`` pixels, at most the slice), moved inside the slice. Masks empty on
    the slice: the whole slice. A false positive away from the tumour widens the box, so it
    stays in view."""
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    if not union.any():
        return slice(None), slice(None)
    window = []
    for axis, length in enumerate(union.shape):
        found = np.flatnonzero(union.any(axis=1 - axis))
        window.append((found[0], found[-1], length))
    extent = max(last - first + 1 for first, last, _ in window)
    side = max(min_side, int(np.ceil(scale * extent)))
    slices = []
    for first, last, length in window:
        size = min(side, length)
        start = int(round((first + last + 1) / 2 - size / 2))
        start = min(max(start, 0), length - size)
        slices.append(slice(start, start + size))
    return slices[0], slices[1]


def error_slice(prediction: np.ndarray, truth: np.ndarray, axis: int = 2) -> int:
    """The slice along ``axis`` with the most wrong voxels (most tumour when none is wrong),
    the one a montage shows to make a failure visible."""
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    others = tuple(a for a in range(3) if a != axis)
    errors = (prediction ^ truth).sum(axis=others)
    if errors.any():
        return int(errors.argmax())
    return int((prediction | truth).sum(axis=others).argmax())


def failure_montage(table: pd.DataFrame, per_tissue: int = 1, modality: str | None = None):
    """The paper's failure figures (Figs. 6, 10-17): per tissue, its ``per_tissue`` worst
    cases and, beside them for contrast, its best ones; ground truth green, prediction red.

    ``table`` holds one model's rows with ``dice``, ``tissue``, the image paths (``t1``,
    ``t2``), ``native_mask`` and ``prediction``. Each panel is the axial slice with the
    most wrong voxels (``error_slice``), in radiological view. A tissue with fewer than
    two scored cases shows what it has.
    """
    import matplotlib.pyplot as plt

    from mstt_lib.cohort import TISSUES
    from mstt_lib.geometry import display_slice
    from mstt_lib.preprocess import normalise_intensity
    from mstt_lib.viz import case_in_ras, load_case_on_reference_grid, load_mask

    tissues = [
        t for t in (*TISSUES, None) if (table["tissue"].isna() if t is None else table["tissue"] == t).any()
    ]
    figure, axes = plt.subplots(
        len(tissues),
        2 * per_tissue,
        figsize=(3.2 * 2 * per_tissue, 3.3 * len(tissues)),
        squeeze=False,
        dpi=90,
    )
    for r, tissue in enumerate(tissues):
        group = table[table["tissue"].isna() if tissue is None else table["tissue"] == tissue]
        ranked = group.sort_values("dice", na_position="first")
        worst = ranked.head(per_tissue)
        best = ranked.drop(worst.index).tail(per_tissue).iloc[::-1]
        picks = [("worst", row) for _, row in worst.iterrows()] + [
            ("best", row) for _, row in best.iterrows()
        ]
        for c in range(per_tissue):
            for column, shown in ((c, len(worst)), (per_tissue + c, len(best))):
                axes[r, column].set_xticks([])
                axes[r, column].set_yticks([])
                if c >= shown:
                    axes[r, column].axis("off")
        if best.empty:
            axis = axes[r, per_tissue]
            axis.text(0.5, 0.5, "no other case of\nthis tissue scored", ha="center", transform=axis.transAxes)
        for c, (label, row) in enumerate(picks):
            axis = axes[r, c if label == "worst" else per_tissue + c - len(worst)]
            case = load_case_on_reference_grid(pd.Series({**row, "mask": row["native_mask"]}))
            case["masks"] = {
                "truth": case["mask"],
                "prediction": load_mask(row["prediction"], row["case_id"]),
            }
            canonical = case_in_ras(case)
            truth, prediction = canonical["masks"]["truth"], canonical["masks"]["prediction"]
            k = error_slice(prediction, truth)
            name = modality or ("T2" if "T2" in canonical["images"] else next(iter(canonical["images"])))
            image = normalise_intensity(canonical["images"][name])
            planes = [display_slice(mask, "axial", k) for mask in (truth, prediction)]
            window = focus_window(*planes)
            axis.imshow(display_slice(image, "axial", k)[window], cmap="gray", vmin=0, vmax=1)
            for plane, colour in zip(planes, ("lime", "red"), strict=True):
                if plane[window].any():
                    axis.contour(plane[window].astype(float), [0.5], colors=colour, linewidths=1.2)
            kind = row.get("failure_kind")
            kind = f"\n{kind}" if isinstance(kind, str) and kind else ""
            axis.set_title(f"{label}: {row['case_id']}\nDice {row['dice']:.2f}{kind}", fontsize=8)
        axes[r, 0].set_ylabel(tissue or "no tissue recorded", fontsize=10)
    figure.suptitle(
        "Worst (left) and best (right) cases per tissue, zoomed on the masks:\n"
        "ground truth green, prediction red"
    )
    figure.tight_layout()
    return figure
