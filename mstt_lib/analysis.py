"""Cohort-level tables: the paper's Table 1 and the per-case tumour statistics (Figs. 3-4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from mstt_lib.cohort import TISSUES, _text
from mstt_lib.geometry import on_grid
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = ["site_tissue_counts", "tumour_statistics"]


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


def _case_statistics(row: pd.Series) -> dict:
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
        path = _text(row.get(modality))  # iterrows turns a None path into NaN
        if path is None:
            stats[f"mean_{modality}"] = np.nan
            continue
        # Through the headers only: registration (notebook 02) corrects the patient's motion.
        image = on_grid(load_nifti(path, case_id), mask_image)
        data = normalise_intensity(read_volume(image, case_id))
        stats[f"mean_{modality}"] = float(data[mask].mean()) if mask.any() else np.nan
    return stats


def tumour_statistics(cases: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Per case: tumour voxels, volume (ml), voxel spacing (mm) and mean tumour intensity.

    Intensities are the paper's normalised ones (each image clamped to its 0.05 and
    99.95 percentiles, then min-max scaled to [0, 1]), averaged over the mask; a T1
    not on the mask's grid is resampled onto it through the headers. An empty mask
    gives volume 0 and NaN means.
    """
    rows = [
        _case_statistics(row)
        for _, row in tqdm(cases.iterrows(), total=len(cases), desc="tumour statistics", disable=not progress)
    ]
    stats = pd.DataFrame(rows)
    keep = [c for c in ("case_id", "tissue", "site", "diagnosis", "annotation_modality") if c in cases]
    return cases[keep].merge(stats, on="case_id")


# ---------------------------------------------------------------------------
# Results: the paper's Tables 2-4 and Figures 7-9, with confidence intervals.


def bootstrap_ci(
    values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile bootstrap interval.

    NaN values (e.g. Dice of an empty-empty pair) are left out; no value gives NaNs.
    """
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)


def mean_table(results: pd.DataFrame, by: list[str], metric: str = "dice") -> pd.DataFrame:
    """n, mean and 95 % bootstrap interval of ``metric`` per group (Tables 2 and 3)."""
    rows = []
    for key, group in results.groupby(by, sort=False, dropna=False):
        mean, low, high = bootstrap_ci(group[metric])
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {**dict(zip(by, key, strict=True)), "n": len(group), metric: mean, "ci_low": low, "ci_high": high}
        )
    overall_mean, overall_low, overall_high = bootstrap_ci(results[metric])
    table = pd.DataFrame(rows)
    table.loc[len(table)] = {
        **{b: "all" for b in by},
        "n": len(results),
        metric: overall_mean,
        "ci_low": overall_low,
        "ci_high": overall_high,
    }
    return table


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
