"""Quality-control figures of the registration and preprocessing chapters."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mstt_lib.geometry import display_slice, resample_image, to_display, to_ras
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "checkerboard",
    "registration_checkerboards",
    "intensity_histograms",
    "sample_gallery",
    "voxel_spacings",
    "cache_spacings",
]


def checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 16) -> np.ndarray:
    """Alternate square tiles of two same-shape 2D images: edges that break at tile
    borders show misalignment."""
    if a.shape != b.shape:
        raise ValueError(f"images should have the same shape, got {a.shape} and {b.shape}")
    rows, columns = np.indices(a.shape)
    return np.where(((rows // tile) + (columns // tile)) % 2 == 0, a, b)


def registration_checkerboards(
    original: pd.DataFrame, registered: pd.DataFrame, case_ids: Sequence[str], tile: int = 16
) -> plt.Figure:
    """T2/T1 checkerboards before (T1 placed through the headers) and after registration.

    One row per case, at the tumour's largest axial slice of the registered pair's grid,
    shown as every viewer shows it (``geometry.display_slice``: radiological, anterior up),
    whatever the orientation of the pair's grid.
    """
    figure, axes = plt.subplots(len(case_ids), 2, figsize=(6.0, 2.9 * len(case_ids)), squeeze=False, dpi=72)
    original = original.set_index("case_id")
    registered = registered.set_index("case_id")
    for r, case_id in enumerate(case_ids):
        reg = registered.loc[case_id]
        t2_image = load_nifti(reg["t2"], case_id)
        grid = (t2_image.shape, t2_image.affine)
        t2, _ = to_ras(normalise_intensity(read_volume(t2_image, case_id)), t2_image.affine)
        mask, _ = to_ras(read_volume(load_nifti(reg["mask"], case_id)) > 0, t2_image.affine)
        k = int(mask.reshape(-1, mask.shape[2]).sum(0).argmax())
        before = normalise_intensity(resample_image(load_nifti(original.loc[case_id, "t1"], case_id), *grid))
        after = normalise_intensity(read_volume(load_nifti(reg["t1"], case_id), case_id))
        for c, (t1, title) in enumerate(((before, "before"), (after, "after"))):
            axis = axes[r, c]
            t1, _ = to_ras(t1, t2_image.affine)
            board = checkerboard(display_slice(t2, "axial", k), display_slice(t1, "axial", k), tile)
            axis.imshow(board, cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(f"T2 / T1 {title}")
            if c == 0:
                axis.set_ylabel(f"{original.loc[case_id, 'tissue']}\n{case_id}")
    figure.tight_layout()
    return figure


def intensity_histograms(raw: dict[str, np.ndarray], normalised: dict[str, np.ndarray], bins: int = 80):
    """Histograms of each modality as read (zero voxels, the padding around a registered image,
    left out) and after clamp + min-max on the set's grid (plotly)."""
    titles = ("as read (zero voxels left out)", "after clamp and min-max")
    figure = make_subplots(rows=1, cols=2, subplot_titles=titles)
    palette = plotly.colors.qualitative.Plotly
    colours = {name: palette[i % len(palette)] for i, name in enumerate({**raw, **normalised})}
    for column, values in enumerate((raw, normalised), start=1):
        for name, data in values.items():
            flat = np.asarray(data, dtype=np.float32).ravel()
            counts, edges = np.histogram(flat[flat > 0] if column == 1 else flat, bins=bins)
            figure.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=counts,
                    name=name,
                    opacity=0.6,
                    # one colour and legend entry per modality in both panels (plotly gives each
                    # trace the next colour, so the second panel's would not match the legend)
                    marker_color=colours[name],
                    legendgroup=name,
                    showlegend=column == 1,
                ),
                row=1,
                col=column,
            )
    figure.update_layout(barmode="overlay", height=360, bargap=0)
    figure.update_yaxes(type="log", title_text="voxels")
    figure.update_xaxes(title_text="intensity (input units)", row=1, col=1)
    return figure.update_xaxes(title_text="normalised intensity", row=1, col=2)


def voxel_spacings(cases: pd.DataFrame, modalities: Sequence[str] = ("T1", "T2")) -> pd.DataFrame:
    """Native voxel spacing (mm) of every image, from the headers: case, modality, x, y, z."""
    rows = []
    for row in cases.to_dict("records"):
        for modality in modalities:
            path = row.get(modality.lower())
            if isinstance(path, str) and path:
                zooms = load_nifti(path, row["case_id"]).header.get_zooms()[:3]
                rows.append((row["case_id"], row.get("tissue"), modality, *map(float, zooms)))
    return pd.DataFrame(rows, columns=["case_id", "tissue", "modality", "x_mm", "y_mm", "z_mm"])


def cache_spacings(cache) -> pd.DataFrame:
    """Voxel spacing (mm) of every preprocessed case, measured from its grid in the slice cache
    (the lengths of the affine's columns, whatever its orientation): case, x, y, z."""
    rows = []
    for case_id in cache.case_ids:
        affine = np.asarray(cache.meta(case_id)["affine"], dtype=float)
        rows.append((case_id, *np.linalg.norm(affine[:3, :3], axis=0)))
    return pd.DataFrame(rows, columns=["case_id", "x_mm", "y_mm", "z_mm"])


def sample_gallery(cache, samples: pd.DataFrame, channel_names: Sequence[str], size=(256, 256)) -> plt.Figure:
    """Each row a 2.5D sample: every channel, then the centre channel of the last modality
    with the tumour mask in green, shown as the viewers show a plane (``geometry.to_display``;
    the 1 mm grid is in RAS order)."""
    n_channels = len(channel_names)
    figure, axes = plt.subplots(
        len(samples),
        n_channels + 1,
        figsize=(1.45 * (n_channels + 1), 1.55 * len(samples)),
        squeeze=False,
        dpi=72,
    )
    for r, row in enumerate(samples.itertuples()):
        image, mask = cache.sample(row.case_id, row.plane, int(row.index), size)
        for c in range(n_channels + 1):
            axis = axes[r, c]
            shown = image[c] if c < n_channels else image[n_channels - 2]
            axis.imshow(to_display(shown), cmap="gray", vmin=0, vmax=1)
            if c == n_channels:
                axis.contour(to_display(mask).astype(float), [0.5], colors="lime", linewidths=0.7)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(channel_names[c] if c < n_channels else "mask", fontsize=8)
        axes[r, 0].set_ylabel(f"{row.case_id}\n{row.plane} {int(row.index)}", fontsize=8)
    figure.tight_layout(pad=0.3)
    return figure
