"""Figures for the book: plotly output that survives the static build, galleries, and
a three-plane slice viewer that works in the static HTML book with no kernel.

The viewer packs a case into one lossless PNG: each voxel's two images (8-bit,
after the paper's percentile clamp and min-max) in the red and green channels and
the masks as bits of the blue channel, axial slices tiled in a grid. A small
script decodes it in the browser and draws the axial, coronal and sagittal planes
with sliders, a modality switch, mask contours and linked crosshairs. No widget
library renders in a kernel-less page at this size, hence our own.
"""

from __future__ import annotations

import base64
import io
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to
from PIL import Image
from scipy import ndimage

from mstt_lib.cohort import TISSUES
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "show_figure",
    "tissue_gallery",
    "mask_boundary",
    "encode_volume",
    "decode_volume",
    "slice_viewer",
    "case_viewer",
    "load_case_on_reference_grid",
    "load_mask",
    "trend_figure",
]

MASK_COLOURS = ("#00ff00", "#ff0000", "#00bfff", "#ffff00")  # ground truth green, prediction red


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


def trend_figure(frame: pd.DataFrame, x: str, y: str = "dice", title: str = "", log_x: bool = False):
    """Scatter of ``y`` against ``x`` per tissue, each with its least-squares line and R^2
    (the paper's Figs. 8-9); with ``log_x`` the line is fitted over log10(x)."""
    import plotly.graph_objects as go

    from mstt_lib.analysis import trend

    figure = go.Figure()
    for tissue, group in frame.groupby("tissue", sort=False):
        values = np.log10(group[x]) if log_x else group[x]
        fit = trend(values, group[y])
        figure.add_scatter(
            x=group[x],
            y=group[y],
            mode="markers",
            name=f"{tissue} (R² {fit['r2']:.2f})",
            text=group.get("case_id"),
            legendgroup=str(tissue),
        )
        if np.isfinite(fit["slope"]):
            line = np.linspace(values.min(), values.max(), 20)
            figure.add_scatter(
                x=10**line if log_x else line,
                y=fit["slope"] * line + fit["intercept"],
                mode="lines",
                showlegend=False,
                legendgroup=str(tissue),
                line={"dash": "dot"},
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
        path = row.get(modality.lower())
        if not path:
            continue
        image = load_nifti(path, case_id)
        if image.shape != mask_image.shape or not np.allclose(image.affine, mask_image.affine, atol=1e-3):
            image = resample_from_to(image, (mask_image.shape, mask_image.affine), order=1)
        images[modality] = read_volume(image, case_id)
    return {
        "images": images,
        "mask": read_volume(mask_image, case_id, np.uint8),
        "affine": mask_image.affine,
        "case_id": case_id,
    }


def load_mask(path, case_id: str = "?") -> np.ndarray:
    """A 0/1 mask file as a uint8 array (a prediction to overlay on its case)."""
    return (read_volume(load_nifti(path, case_id), case_id) > 0).astype(np.uint8)


def _largest_slice(mask: np.ndarray) -> int:
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
        canonical = _canonical(case)
        k = _largest_slice(canonical["mask"])
        for c, modality in enumerate(modalities):
            axis = axes[r, c]
            image = normalise_intensity(canonical["images"][modality])
            axis.imshow(_axial(image, k), cmap="gray", vmin=0, vmax=1)
            axis.contour(_axial(canonical["mask"], k).astype(float), [0.5], colors="lime", linewidths=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(f"{row.get('tissue', '')}\n{row['case_id']}", fontsize=10)
            if r == 0:
                axis.set_title(modality)
    figure.tight_layout()
    return figure


def _canonical(case: dict) -> dict:
    """Reorient arrays to RAS so that every display uses one convention."""
    affine = case["affine"]
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)

    def apply(array):
        return nib.orientations.apply_orientation(array, transform)

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    spacing = np.empty(3)
    for source_axis, (target_axis, _) in enumerate(transform.astype(int)):
        spacing[target_axis] = zooms[source_axis]
    out = {
        "images": {m: apply(v) for m, v in case["images"].items()},
        "mask": apply(case["mask"]),
        "spacing": spacing,
        "case_id": case["case_id"],
    }
    if "masks" in case:
        out["masks"] = {name: apply(m) for name, m in case["masks"].items()}
    return out


def _axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice of a RAS volume in radiological view (rows anterior to posterior)."""
    return volume[::-1, ::-1, k].T


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside it (or at the image edge).

    This is the contour the viewer draws; the same rule runs in its script.
    """
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~inner


# ---------------------------------------------------------------------------
# The viewer's packed volume.


def _tile_grid(n_slices: int) -> tuple[int, int]:
    columns = max(1, math.ceil(math.sqrt(n_slices)))
    return columns, math.ceil(n_slices / columns)


def encode_volume(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] = ()) -> tuple[str, dict]:
    """Pack up to two uint8 volumes and up to eight binary masks into a base64 PNG.

    Volumes are (x, y, z) arrays on one grid. Slice ``k`` becomes tile ``k`` of a
    grid read row by row; within a tile, row ``y`` and column ``x``. Red holds
    ``images[0]``, green ``images[1]`` and blue bit ``b`` the mask ``masks[b]``.
    Returns the PNG (base64) and the layout needed to decode it.
    """
    if not 1 <= len(images) <= 2:
        raise ValueError(f"the viewer packs one or two images, got {len(images)}")
    if len(masks) > 8:
        raise ValueError(f"at most 8 masks fit in the blue channel, got {len(masks)}")
    shape = images[0].shape
    for array in (*images, *masks):
        if array.shape != shape:
            raise ValueError(f"all volumes should share the shape {shape}, got {array.shape}")
        if array.ndim != 3:
            raise ValueError(f"expected 3D volumes, got shape {array.shape}")
    nx, ny, nz = shape
    channels = np.zeros((3, *shape), dtype=np.uint8)
    for c, image in enumerate(images):
        if image.dtype != np.uint8:
            raise ValueError(f"images should be uint8 (8-bit), got {image.dtype}")
        channels[c] = image
    for bit, mask in enumerate(masks):
        channels[2] |= (np.asarray(mask) > 0).astype(np.uint8) << bit
    columns, rows = _tile_grid(nz)
    sprite = np.zeros((rows * ny, columns * nx, 3), dtype=np.uint8)
    for k in range(nz):
        r, c = divmod(k, columns)
        sprite[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = channels[:, :, :, k].transpose(2, 1, 0)
    buffer = io.BytesIO()
    Image.fromarray(sprite, "RGB").save(buffer, format="PNG", optimize=True)
    layout = {"shape": [nx, ny, nz], "columns": columns, "images": len(images), "masks": len(masks)}
    return base64.b64encode(buffer.getvalue()).decode("ascii"), layout


def decode_volume(png_base64: str, layout: Mapping) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inverse of ``encode_volume``: the uint8 images and boolean masks."""
    sprite = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"))
    nx, ny, nz = layout["shape"]
    columns = layout["columns"]
    volume = np.zeros((3, nx, ny, nz), dtype=np.uint8)
    for k in range(nz):
        r, c = divmod(k, columns)
        volume[:, :, :, k] = sprite[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx].transpose(2, 1, 0)
    images = [volume[c] for c in range(layout["images"])]
    masks = [((volume[2] >> bit) & 1).astype(bool) for bit in range(layout["masks"])]
    return images, masks


# ---------------------------------------------------------------------------
# The viewer.

_SCRIPT = (Path(__file__).with_name("viewer.js")).read_text()
_STYLE = """
<style>
.mstt-viewer{font:13px/1.3 system-ui,sans-serif;border:1px solid #ccc;border-radius:6px;padding:8px;
 margin:8px 0;max-width:100%;background:#fafafa}
.mstt-viewer .mstt-bar{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:6px}
.mstt-viewer .mstt-planes{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.mstt-viewer figure{margin:0;display:flex;flex-direction:column;align-items:center}
.mstt-viewer canvas{background:#000;image-rendering:auto;cursor:crosshair}
.mstt-viewer input[type=range]{width:100%;min-width:140px}
.mstt-viewer .mstt-legend span{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px}
</style>
"""


def slice_viewer(
    images: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    masks: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    display_px: int = 200,
):
    """A three-plane viewer of RAS-ordered volumes, as an ``IPython.display.HTML``.

    ``images`` maps a name (``"T1"``, ``"T2"``) to a float or uint8 volume; float
    volumes are normalised as the paper does (percentile clamp, min-max) and
    stored at 8 bits. ``masks`` maps a label (``"ground truth"``, ``"prediction"``)
    to a binary volume drawn as a contour (green, red, ...). ``spacing`` (mm)
    sets each plane's aspect. Click a plane to move the other two there.
    """
    from IPython.display import HTML

    masks = dict(masks or {})
    names = list(images)
    eight_bit = [
        v if v.dtype == np.uint8 else np.round(normalise_intensity(v) * 255).astype(np.uint8)
        for v in images.values()
    ]
    png, layout = encode_volume(eight_bit, list(masks.values()))
    uid = f"mstt-{uuid.uuid4().hex[:10]}"
    config = {
        **layout,
        "names": names,
        "maskNames": list(masks),
        "colours": list(MASK_COLOURS[: len(masks)]),
        "spacing": [float(s) for s in spacing],
        "displayPx": display_px,
        "title": title,
    }
    html = (
        f'{_STYLE}<div class="mstt-viewer" id="{uid}" data-ready="0">'
        f'<img class="mstt-data" alt="" style="display:none" src="data:image/png;base64,{png}">'
        f"</div><script>({_SCRIPT})(document.getElementById('{uid}'), {json.dumps(config)});</script>"
    )
    return HTML(html)


def case_viewer(row: pd.Series, extra_masks: Mapping[str, np.ndarray] | None = None, **kwargs):
    """The slice viewer for one case of the case table (T1 resampled onto the mask's grid)."""
    case = load_case_on_reference_grid(row)
    case["masks"] = {"ground truth": case["mask"], **(extra_masks or {})}
    canonical = _canonical(case)
    title = kwargs.pop("title", f"{row['case_id']} · {row.get('tissue') or ''} · {row.get('site') or ''}")
    return slice_viewer(canonical["images"], canonical["spacing"], canonical["masks"], title=title, **kwargs)
