"""Cohort-level tables: the paper's Table 1 and the per-case tumour statistics (Figs. 3-4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to
from tqdm import tqdm

from mstt_lib.cohort import TISSUES
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
        path = row.get(modality)
        if not path:
            stats[f"mean_{modality}"] = np.nan
            continue
        image = load_nifti(path, case_id)
        if image.shape != mask.shape or not np.allclose(image.affine, mask_image.affine, atol=1e-3):
            # Through the headers only: registration (notebook 02) corrects the patient's motion.
            image = resample_from_to(image, (mask.shape, mask_image.affine), order=1)
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
