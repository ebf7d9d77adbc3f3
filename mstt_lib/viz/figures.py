"""Figures for the book: plotly output that survives the static build, galleries, and a case
loaded for display (on its mask's grid, in RAS order).

The static viewer's codec is ``mstt_lib.viz.codec``, the ipywidgets viewer
``mstt_lib.viz.widget``; ``from mstt_lib import viz`` gives all three.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mstt_lib.cohort import TISSUES, _text
from mstt_lib.geometry import display_slice, on_grid, to_ras
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "show_figure",
    "trend_figure",
    "tissue_colours",
    "tissue_gallery",
    "load_case_on_reference_grid",
    "load_mask",
    "case_in_ras",
    "largest_slice",
]


# ---------------------------------------------------------------------------
# plotly in a static book.


def show_figure(figure) -> None:
    """Display a plotly figure so that it renders both live and in the built book.

    jupyter-book 1.x skips plotly's own mime type, so the figure also goes out as
    an HTML div that expects ``Plotly`` on the page: the book loads plotly.js
    once from its static files instead of inlining it into every output.
    """
    from IPython.display import display

    bundle = {
        "application/vnd.plotly.v1+json": json.loads(figure.to_json()),
        "text/html": figure.to_html(full_html=False, include_plotlyjs=False),
        "text/plain": f"<plotly figure: {figure.layout.title.text or 'untitled'}>",
    }
    display(bundle, raw=True)


def wrappable(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with spaces in place of underscores in its column names: a browser wraps a
    header only at a space, so a wide per-case table then fits the book's page instead of
    scrolling its last columns out of sight."""
    return table.rename(columns=lambda name: name.replace("_", " ") if isinstance(name, str) else name)


def tissue_colours(tissues: Sequence[str]) -> dict[str, str]:
    """A colour per tissue from plotly's default palette: the paper's five by their place in
    ``TISSUES``, so a tissue keeps its colour in every figure whichever others it shows (the
    colours plotly express gives chapters 1-2's figures, ordered by ``TISSUES``); any other
    tissue names (a user's cohort) take the palette's remaining colours in order."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly
    others = [t for t in dict.fromkeys(tissues) if t not in TISSUES]
    return {
        t: palette[(TISSUES.index(t) if t in TISSUES else len(TISSUES) + others.index(t)) % len(palette)]
        for t in dict.fromkeys(tissues)
    }


def trend_figure(frame: pd.DataFrame, x: str, y: str = "dice", title: str = "", log_x: bool = False):
    """Scatter of ``y`` against ``x`` per tissue, each with its least-squares line and R^2
    (the paper's Figs. 8-9); with ``log_x`` the line is fitted over log10(x)."""
    import plotly.graph_objects as go

    from mstt_lib.analysis import trend_table

    fits = trend_table(frame, x, y, log_x)
    figure = go.Figure()
    colours = tissue_colours(frame["tissue"].tolist())
    for tissue, group in frame.groupby("tissue", sort=False):
        values = np.log10(group[x].where(group[x] > 0)) if log_x else group[x]
        fit = fits.loc[tissue]
        colour = colours[tissue]  # the line in its points' colour (plotly gives each trace the next)
        figure.add_scatter(
            x=group[x],
            y=group[y],
            mode="markers",
            name=f"{tissue} (R² {fit['r2']:.2f})",
            text=group.get("case_id"),
            legendgroup=str(tissue),
            marker={"color": colour},
        )
        if np.isfinite(fit["slope"]):
            line = np.linspace(values.min(), values.max(), 20)
            figure.add_scatter(
                x=10**line if log_x else line,
                y=fit["slope"] * line + fit["intercept"],
                mode="lines",
                showlegend=False,
                legendgroup=str(tissue),
                line={"dash": "dot", "color": colour},
            )
    figure.update_layout(title=title, height=420, yaxis_title=y, xaxis_title=x)
    return figure.update_xaxes(type="log") if log_x else figure


# ---------------------------------------------------------------------------
# Loading a case for display.


def load_case_on_reference_grid(row: pd.Series) -> dict:
    """The case's images and mask on the mask's grid, as float arrays plus the affine.

    A T1 on another grid is resampled through the headers (linear); before
    registration this leaves the patient's motion between the scans visible.
    """
    case_id = row["case_id"]
    mask_image = load_nifti(row["mask"], case_id)
    images = {}
    for modality in ("T1", "T2"):
        path = _text(row.get(modality.lower()))  # iterrows turns a None path into NaN
        if path is None:
            continue
        images[modality] = read_volume(on_grid(load_nifti(path, case_id), mask_image), case_id)
    return {
        "images": images,
        "mask": read_volume(mask_image, case_id, np.uint8),
        "affine": mask_image.affine,
        "case_id": case_id,
    }


def load_mask(path, case_id: str = "?") -> np.ndarray:
    """A 0/1 mask file as a uint8 array (a prediction to overlay on its case)."""
    return (read_volume(load_nifti(path, case_id), case_id) > 0).astype(np.uint8)


def largest_slice(mask: np.ndarray) -> int:
    """The axial slice (axis 2) with the most mask voxels: where the viewers open."""
    area = mask.reshape(-1, mask.shape[2]).sum(0)
    return int(area.argmax())


def tissue_gallery(cases: pd.DataFrame, case_ids: Sequence[str] | None = None) -> plt.Figure:
    """One example per tissue: T1 and T2 at the tumour's largest axial slice, mask in green.

    By default the first case of each tissue (in case-id order) is shown.
    Images are in radiological view (patient's right on the left, anterior up).
    """
    if case_ids is None:
        first = cases.sort_values("case_id").groupby("tissue", sort=False).head(1)
        order = {t: i for i, t in enumerate(TISSUES)}
        case_ids = list(first.sort_values("tissue", key=lambda s: s.map(order))["case_id"])
    rows = cases.set_index("case_id").loc[list(case_ids)].reset_index()
    modalities = [
        m for m in ("T1", "T2") if rows[m.lower()].notna().any() and rows[m.lower()].astype(bool).any()
    ]
    figure, axes = plt.subplots(
        len(rows),
        len(modalities),
        figsize=(2.5 * len(modalities), 2.4 * len(rows)),
        squeeze=False,
        dpi=72,
    )
    for r, (_, row) in enumerate(rows.iterrows()):
        case = load_case_on_reference_grid(row)
        canonical = case_in_ras(case)
        k = largest_slice(canonical["mask"])
        for c, modality in enumerate(modalities):
            axis = axes[r, c]
            image = normalise_intensity(canonical["images"][modality])
            axis.imshow(display_slice(image, "axial", k), cmap="gray", vmin=0, vmax=1)
            mask = display_slice(canonical["mask"], "axial", k).astype(float)
            axis.contour(mask, [0.5], colors="lime", linewidths=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(f"{row.get('tissue', '')}\n{row['case_id']}", fontsize=10)
            if r == 0:
                axis.set_title(modality)
    figure.tight_layout()
    return figure


def case_in_ras(case: dict) -> dict:
    """A loaded case (``load_case_on_reference_grid``, optionally with ``masks``) with every array
    reordered to RAS (``geometry.to_ras``) and its ``spacing`` in that order: every display
    starts from this layout."""
    affine = case["affine"]
    images = {m: to_ras(v, affine)[0] for m, v in case["images"].items()}
    mask, spacing = to_ras(case["mask"], affine)
    out = {"images": images, "mask": mask, "spacing": spacing, "case_id": case["case_id"]}
    if "masks" in case:
        out["masks"] = {name: to_ras(m, affine)[0] for name, m in case["masks"].items()}
    return out


def viewer_case(row: pd.Series, extra_masks: Mapping[str, np.ndarray] | None = None) -> tuple[dict, str]:
    """A case-table row ready for a viewer (static or live): the case in RAS with the ground truth
    and ``extra_masks`` as its masks, and the default title (case id, tissue, site)."""
    case = load_case_on_reference_grid(row)
    case["masks"] = {"ground truth": case["mask"], **(extra_masks or {})}
    title = f"{row['case_id']} · {row.get('tissue') or ''} · {row.get('site') or ''}"
    return case_in_ras(case), title
