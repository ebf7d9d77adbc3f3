"""Cohort-level tables: the paper's Table 1 and the per-case tumour statistics (Figs. 3-4)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mstt_lib.cohort import TISSUES, _text
from mstt_lib.engines import map_cases
from mstt_lib.geometry import on_grid
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "site_tissue_counts",
    "tumour_statistics",
    "count_values",
    "bootstrap_ci",
    "mean_table",
    "summary_table",
    "mean_with_interval",
    "site_tissue_table",
    "trend",
    "trend_table",
    "paired_comparison",
]


def site_tissue_counts(cases: pd.DataFrame) -> pd.DataFrame:
    """Tumour site x tissue counts with totals, laid out as the paper's Table 1.

    Sites are ordered by their total (largest first, ties by name); tissues in
    the paper's order. Cases without a recorded tissue are counted as "Unknown".
    """
    tissue = cases["tissue"].fillna("Unknown")
    columns = [t for t in TISSUES if t in set(tissue)] + (["Unknown"] if "Unknown" in set(tissue) else [])
    table = pd.crosstab(cases["site"].fillna("unknown"), tissue).reindex(columns=columns, fill_value=0)
    table["Total"] = table.sum(axis=1)
    table = table.sort_values("Total", ascending=False, kind="stable")
    table = table.loc[sorted(table.index, key=lambda s: (-table.loc[s, "Total"], s))]
    table.loc["Total"] = table.sum(axis=0)
    table.index.name = "Tumour site"
    table.columns.name = "Tissue type"
    return table


def _case_statistics(row: dict) -> dict:
    case_id = row["case_id"]
    mask_image = load_nifti(row["mask"], case_id)
    mask = read_volume(mask_image, case_id) > 0
    zooms = np.asarray(mask_image.header.get_zooms()[:3], dtype=float)
    stats = {
        "case_id": case_id,
        "tumour_voxels": int(mask.sum()),
        "volume_ml": float(mask.sum() * np.prod(zooms) / 1000),
        "spacing_x_mm": zooms[0],
        "spacing_y_mm": zooms[1],
        "spacing_z_mm": zooms[2],
    }
    for modality in ("t1", "t2"):
        path = _text(row.get(modality))  # a missing path may come as NaN from the case table
        if path is None:
            stats[f"mean_{modality}"] = np.nan
            continue
        # Through the headers only: registration (notebook 02) corrects the patient's motion.
        image = on_grid(load_nifti(path, case_id), mask_image)
        data = normalise_intensity(read_volume(image, case_id))
        stats[f"mean_{modality}"] = float(data[mask].mean()) if mask.any() else np.nan
    return stats


def tumour_statistics(cases: pd.DataFrame, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Per case: tumour voxels, volume (ml), voxel spacing (mm) and mean tumour intensity.

    Intensities are the paper's normalised ones (each image clamped to its 0.05 and
    99.95 percentiles, then min-max scaled to [0, 1]), averaged over the mask; a T1
    not on the mask's grid is resampled onto it through the headers. An empty mask
    gives volume 0 and NaN means. ``workers`` processes read the cases (the order is kept).
    """
    jobs = cases.to_dict("records")
    rows = map_cases(_case_statistics, jobs, workers, progress=progress, desc="tumour statistics")
    stats = pd.DataFrame(rows)
    keep = [c for c in ("case_id", "tissue", "site", "diagnosis", "annotation_modality") if c in cases]
    return cases[keep].merge(stats, on="case_id")


# ---------------------------------------------------------------------------
# Results: the paper's Tables 2-4 and Figures 7-9, with confidence intervals.


def count_values(values) -> dict[str, int]:
    """How many values a mean can use, as MONAI's ``get_not_nans`` reports them.

    ``n_cases``: all values; ``n_scored``: the finite ones; ``n_missed``: the infinite ones (a
    distance to a tumour that the prediction missed, or to a surface predicted where there is
    none); the rest are NaN (not defined, e.g. Dice of an empty-empty pair).
    """
    data = np.asarray(values, dtype=float)
    return {
        "n_cases": int(data.size),
        "n_scored": int(np.isfinite(data).sum()),
        "n_missed": int(np.isinf(data).sum()),
    }


def bootstrap_ci(
    values,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    misses: float | None = None,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile bootstrap interval.

    NaN values (not defined) are left out. An infinite value (a missed tumour's HD95 or ASSD)
    counts as ``misses`` when that is given (a penalty such as the field of view's diagonal);
    with ``misses=None`` it is left out too, so report ``count_values`` beside the mean (as
    ``mean_table`` does): a mean over the scored cases alone flatters a model that misses
    tumours. No usable value gives NaNs.
    """
    data = np.asarray(values, dtype=float)
    if misses is not None:
        data = np.where(np.isinf(data), float(misses), data)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)


def _how_misses(n_missed: int, misses: float | None) -> str:
    if n_missed == 0:
        return "none missed"
    return "left out of the mean" if misses is None else f"counted as {misses:g}"


def _aggregate(values, metric: str, misses: float | None) -> dict:
    counts = count_values(values)
    mean, low, high = bootstrap_ci(values, misses=misses)
    if misses is not None:
        counts["n_scored"] += counts["n_missed"]  # a penalised miss is in the mean
    return {
        **counts,
        metric: mean,
        "ci_low": low,
        "ci_high": high,
        "misses": _how_misses(counts["n_missed"], misses),
    }


def mean_table(
    results: pd.DataFrame, by: list[str], metric: str = "dice", misses: float | None = None
) -> pd.DataFrame:
    """Mean and 95 % bootstrap interval of ``metric`` per group and overall (Tables 2 and 3).

    Each row says how many cases the group has (``n_cases``), how many the mean is over
    (``n_scored``) and how many had no finite value because the tumour was missed
    (``n_missed``: infinite HD95 or ASSD), and in ``misses`` how those entered the figure:
    left out (``misses=None``) or counted as the penalty ``misses``. Where no value is infinite
    (always so for Dice, which scores a missed tumour 0) those two columns are left out: they
    would say "none missed" beside tumours that Dice scored 0. The overall row ("all")
    comes only beside two groups or more: with one, it would repeat that group's row.
    """
    rows = []
    for key, group in results.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), **_aggregate(group[metric], metric, misses)})
    if len(rows) > 1:
        rows.append({**{b: "all" for b in by}, **_aggregate(results[metric], metric, misses)})
    table = pd.DataFrame(rows)
    if not np.isinf(results[metric].to_numpy(dtype=float)).any():
        table = table.drop(columns=["n_missed", "misses"])
    return table


def summary_table(results: pd.DataFrame, metrics, misses: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per metric over all ``results``: the counts, mean, interval and how misses entered.

    ``misses`` maps a metric to the value its infinite values count as (left out otherwise).
    """
    misses = misses or {}
    rows = []
    for metric in metrics:
        row = _aggregate(results[metric], "mean", misses.get(metric))
        rows.append({"metric": metric, **row})
    return pd.DataFrame(rows).set_index("metric")


def mean_with_interval(row: pd.Series, column: str = "dice") -> str:
    """One row of ``mean_table`` or ``summary_table`` (``column="mean"``) as a phrase for text:
    the mean, its 95 % interval and the cases it is over."""
    return (
        f"{row[column]:.3f} (95 % CI {row['ci_low']:.3f}-{row['ci_high']:.3f}, {int(row['n_scored'])} cases)"
    )


def site_tissue_table(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Mean ``metric`` per site x tissue, with each site's count and mean (Table 4)."""
    table = results.pivot_table(index="site", columns="tissue", values=metric, aggfunc="mean")
    table = table.reindex(columns=[t for t in TISSUES if t in table.columns])
    table["count"] = results.groupby("site").size()
    table[f"mean {metric}"] = results.groupby("site")[metric].mean()
    return table.sort_values("count", ascending=False)


def trend(x, y) -> dict[str, float]:
    """Least-squares line y = slope * x + intercept and its R^2 (the paper's Figs. 8-9)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2 or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan"), "n": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1 - (residual**2).sum() / total if total > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2), "n": int(x.size)}


def trend_table(frame: pd.DataFrame, x: str, y: str = "dice", log_x: bool = False) -> pd.DataFrame:
    """``trend`` of ``y`` against ``x`` per tissue (over log10 ``x`` with ``log_x``, as Fig. 8
    fits volume): the lines ``viz.trend_figure`` draws, as numbers, and whether Dice rises or
    falls with ``x`` in this build."""
    rows = {}
    for tissue, group in frame.groupby("tissue", sort=False):
        values = np.log10(group[x].where(group[x] > 0)) if log_x else group[x]
        rows[tissue] = trend(values, group[y])
    table = pd.DataFrame(list(rows.values()), index=list(rows), columns=["n", "slope", "intercept", "r2"])
    table["direction"] = np.select([table["slope"] > 0, table["slope"] < 0], ["rises", "falls"], "no line")
    return table.rename_axis("tissue")


def paired_comparison(results: pd.DataFrame, a: str, b: str, metric: str = "dice") -> dict[str, float]:
    """Wilcoxon signed-rank test of ``metric`` between models ``a`` and ``b`` on the same cases."""
    from scipy.stats import wilcoxon

    wide = results.pivot_table(index="case_id", columns="model", values=metric).dropna()
    if a not in wide or b not in wide:
        return {"n": 0, "median_difference": float("nan"), "statistic": float("nan"), "p_value": float("nan")}
    difference = wide[a] - wide[b]
    if len(wide) < 2 or np.allclose(difference, 0):
        return {
            "n": len(wide),
            "median_difference": float(difference.median()) if len(wide) else float("nan"),
            "statistic": float("nan"),
            "p_value": float("nan"),
        }
    test = wilcoxon(wide[a], wide[b])
    return {
        "n": len(wide),
        "median_difference": float(difference.median()),
        "statistic": float(test.statistic),
        "p_value": float(test.pvalue),
    }
