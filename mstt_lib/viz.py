"""Figures for the book: plotly output that survives the static build, galleries, and
a three-plane slice viewer that works in the static HTML book with no kernel.

The viewer packs a case into greyscale sprites of its axial slices tiled in a grid:
one per image (8-bit after the paper's percentile clamp and min-max; lossless PNG, or
lossy WebP when a large volume would make the page heavy) and one holding the masks
as bits (always lossless). A small script decodes them in the browser and draws the
axial, coronal and sagittal planes with sliders, a modality switch, mask contours and
linked crosshairs. No widget library renders in a kernel-less page at this size, hence
our own; ``live_viewer`` is the ipywidgets version for a session with a kernel.
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

from mstt_lib.cohort import TISSUES, _text
from mstt_lib.io import load_nifti, read_volume
from mstt_lib.preprocess import normalise_intensity

__all__ = [
    "show_figure",
    "tissue_gallery",
    "mask_boundary",
    "encode_volume",
    "decode_volume",
    "slice_viewer",
    "viewer_payload",
    "case_viewer",
    "render_plane",
    "live_viewer",
    "live_case_viewer",
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
        path = _text(row.get(modality.lower()))  # iterrows turns a None path into NaN
        if path is None:
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


def _sprite(volume: np.ndarray, columns: int) -> np.ndarray:
    """Slices of an (x, y, z) uint8 volume tiled row by row: tile ``k``'s row ``y``, column ``x``."""
    nx, ny, nz = volume.shape
    rows = math.ceil(nz / columns)
    sprite = np.zeros((rows * ny, columns * nx), dtype=np.uint8)
    for k in range(nz):
        r, c = divmod(k, columns)
        sprite[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx] = volume[:, :, k].T
    return sprite


def _untile(sprite: np.ndarray, shape: Sequence[int], columns: int) -> np.ndarray:
    nx, ny, nz = shape
    volume = np.zeros((nx, ny, nz), dtype=np.uint8)
    for k in range(nz):
        r, c = divmod(k, columns)
        volume[:, :, k] = sprite[r * ny : (r + 1) * ny, c * nx : (c + 1) * nx].T
    return volume


def _data_uri(sprite: np.ndarray, quality: int | None) -> str:
    buffer = io.BytesIO()
    if quality is None:
        Image.fromarray(sprite, "L").save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        Image.fromarray(sprite, "L").save(buffer, format="WEBP", quality=quality, method=6)
        mime = "image/webp"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_volume(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray] = (), quality: int | None = None
) -> tuple[list[str], dict]:
    """Pack uint8 volumes and up to eight binary masks into greyscale image data URIs.

    Volumes are (x, y, z) arrays on one grid. Each image becomes one sprite, slice
    ``k`` as tile ``k`` of a grid read row by row (within a tile, row ``y`` and column
    ``x``); the masks share one more sprite, mask ``b`` in bit ``b``. Images are 8-bit
    lossless PNG, or lossy WebP at ``quality`` (1-100) where a page must stay small;
    masks are always lossless. Returns the URIs (images first) and the layout.
    """
    if not 1 <= len(images) <= 8:
        raise ValueError(f"the viewer packs one to eight images, got {len(images)}")
    if len(masks) > 8:
        raise ValueError(f"at most 8 masks fit in the mask sprite's 8 bits, got {len(masks)}")
    shape = images[0].shape
    for array in (*images, *masks):
        if array.shape != shape:
            raise ValueError(f"all volumes should share the shape {shape}, got {array.shape}")
        if array.ndim != 3:
            raise ValueError(f"expected 3D volumes, got shape {array.shape}")
    for image in images:
        if image.dtype != np.uint8:
            raise ValueError(f"images should be uint8 (8-bit), got {image.dtype}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality should lie in 1..100, got {quality}")
    columns, _ = _tile_grid(shape[2])
    uris = [_data_uri(_sprite(image, columns), quality) for image in images]
    if masks:
        bits = np.zeros(shape, dtype=np.uint8)
        for bit, mask in enumerate(masks):
            bits |= (np.asarray(mask) > 0).astype(np.uint8) << bit
        uris.append(_data_uri(_sprite(bits, columns), None))
    layout = {
        "shape": [int(n) for n in shape],
        "columns": columns,
        "images": len(images),
        "masks": len(masks),
        "bits": 8,
        "lossy": quality,
    }
    return uris, layout


def decode_volume(uris: Sequence[str], layout: Mapping) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inverse of ``encode_volume``: the uint8 images and boolean masks."""
    volumes = []
    for uri in uris:
        data = base64.b64decode(uri.split(",", 1)[1])
        sprite = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        volumes.append(_untile(sprite, layout["shape"], layout["columns"]))
    images = volumes[: layout["images"]]
    masks = []
    if layout["masks"]:
        bits = volumes[layout["images"]]
        masks = [((bits >> bit) & 1).astype(bool) for bit in range(layout["masks"])]
    return images, masks


# ---------------------------------------------------------------------------
# The viewer.


def _eight_bit(volume: np.ndarray) -> np.ndarray:
    """A uint8 volume as it is; any other normalised as the paper does and stored at 8 bits."""
    volume = np.asarray(volume)
    if volume.dtype == np.uint8:
        return volume
    return np.round(normalise_intensity(volume) * 255).astype(np.uint8)


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


_QUALITIES = (None, 90, 80, 70, 60, 50, 40)  # lossless first, then WebP qualities


def _encode_within(
    images: list[np.ndarray], masks: list[np.ndarray], max_bytes: int
) -> tuple[list[str], dict]:
    """The first of ``_QUALITIES`` whose encoding fits ``max_bytes`` (else the last).

    Encoding a large noisy volume takes seconds per try, so every k-th slice is encoded
    first to estimate where to start; the full encoding still decides.
    """
    step = max(1, images[0].shape[2] // 8)
    sample = [v[:, :, ::step] for v in images], [m[:, :, ::step] for m in masks]
    scale = images[0].shape[2] / sample[0][0].shape[2]
    start = len(_QUALITIES) - 1
    for index, quality in enumerate(_QUALITIES):
        if sum(map(len, encode_volume(*sample, quality)[0])) * scale <= max_bytes:
            start = index
            break
    for quality in _QUALITIES[max(0, start - 1) :]:  # one step back: the estimate is rough
        uris, layout = encode_volume(images, masks, quality)
        if sum(map(len, uris)) <= max_bytes:
            break
    return uris, layout


def slice_viewer(
    images: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    masks: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    display_px: int = 200,
    max_bytes: int = 1_900_000,
):
    """A three-plane viewer of RAS-ordered volumes, as an ``IPython.display.HTML``.

    ``images`` maps a name (``"T1"``, ``"T2"``) to a float or uint8 volume; float
    volumes are normalised as the paper does (percentile clamp, min-max) and
    stored at 8 bits. ``masks`` maps a label (``"ground truth"``, ``"prediction"``)
    to a binary volume drawn as a contour (green, red, ...). ``spacing`` (mm)
    sets each plane's aspect. Click a plane to move the other two there.

    Images are stored losslessly while the embedded data stays under ``max_bytes``;
    a larger (noisy, many-slice) volume is stored as lossy WebP at the highest
    quality that fits, and the viewer says so. Masks are always exact.
    """
    from IPython.display import HTML

    masks = dict(masks or {})
    names = list(images)
    eight_bit = [_eight_bit(v) for v in images.values()]
    uris, layout = _encode_within(eight_bit, list(masks.values()), max_bytes)
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
    data = "".join(f'<img class="mstt-data" alt="" style="display:none" src="{uri}">' for uri in uris)
    html = (
        f'{_STYLE}<div class="mstt-viewer" id="{uid}" data-ready="0">{data}'
        f"</div><script>({_SCRIPT})(document.getElementById('{uid}'), {json.dumps(config)});</script>"
    )
    return HTML(html)


def viewer_payload(html: str) -> tuple[list[str], dict]:
    """The data URIs and the config that a ``slice_viewer`` page embeds (for checks)."""
    import re

    uris = re.findall(r'<img class="mstt-data" alt="" style="display:none" src="([^"]+)">', html)
    config = re.search(r"getElementById\('[^']+'\), (\{.*\})\);</script>", html, re.S)
    if config is None:
        raise ValueError("no mstt viewer in this HTML")
    return uris, json.loads(config[1])


def case_viewer(row: pd.Series, extra_masks: Mapping[str, np.ndarray] | None = None, **kwargs):
    """The slice viewer for one case of the case table (T1 resampled onto the mask's grid)."""
    case = load_case_on_reference_grid(row)
    case["masks"] = {"ground truth": case["mask"], **(extra_masks or {})}
    canonical = _canonical(case)
    title = kwargs.pop("title", f"{row['case_id']} · {row.get('tissue') or ''} · {row.get('site') or ''}")
    return slice_viewer(canonical["images"], canonical["spacing"], canonical["masks"], title=title, **kwargs)


# ---------------------------------------------------------------------------
# The live viewer: the same three planes as ipywidgets, for a session with a kernel.

# plane -> the volume axis its slider moves; the display conventions are those of viewer.js.
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}
_CROSSHAIR = (np.array([255.0, 255.0, 0.0]), 0.45)  # yellow at 45 %, as the script draws it


def _plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice of a RAS volume as displayed, radiological view.

    axial: rows anterior to posterior, patient's right on the left (``_axial``);
    coronal: rows superior to inferior, patient's right on the left;
    sagittal: rows superior to inferior, anterior on the left.
    """
    if plane == "axial":
        return volume[::-1, ::-1, index].T
    if plane == "coronal":
        return volume[::-1, index, ::-1].T
    if plane == "sagittal":
        return volume[index, ::-1, ::-1].T
    raise ValueError(f"plane should be one of {list(PLANES)}, got {plane!r}")


def _crosshair_pixel(plane: str, point: Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
    """Display column and row of the point ``(x, y, z)`` in a plane (for its crosshair)."""
    nx, ny, nz = shape
    x, y, z = point
    return {
        "axial": (nx - 1 - x, ny - 1 - y),
        "coronal": (nx - 1 - x, nz - 1 - z),
        "sagittal": (ny - 1 - y, nz - 1 - z),
    }[plane]


def _rgb(colour) -> np.ndarray:
    if isinstance(colour, str):
        return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    return np.asarray(colour, dtype=np.uint8)


def render_plane(
    volume_u8: np.ndarray,
    masks: Sequence[np.ndarray],
    plane: str,
    index: int,
    colours: Sequence = MASK_COLOURS,
    point: Sequence[int] | None = None,
) -> np.ndarray:
    """One plane of the viewer as an RGB uint8 array (rows, columns, 3).

    The slice ``index`` of ``plane`` (see ``PLANES``) of the RAS volume, in grey,
    with the contour of each mask's slice (``mask_boundary``) painted in its
    colour, later masks over earlier ones, as the static viewer's script does.
    With ``point`` (x, y, z), a yellow crosshair through it is blended on top.
    """
    if volume_u8.dtype != np.uint8:
        raise ValueError(f"the rendered volume should be uint8, got {volume_u8.dtype}")
    grey = _plane_slice(volume_u8, plane, index)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for mask, colour in zip(masks, colours, strict=False):
        rgb[mask_boundary(_plane_slice(np.asarray(mask), plane, index) > 0)] = _rgb(colour)
    if point is not None:
        column, row = _crosshair_pixel(plane, point, volume_u8.shape)
        colour, alpha = _CROSSHAIR
        out = rgb.astype(np.float64)
        out[:, column] = alpha * colour + (1 - alpha) * out[:, column]
        out[row, :] = alpha * colour + (1 - alpha) * out[row, :]
        rgb = np.round(out).astype(np.uint8)
    return rgb


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _start_point(masks: Sequence[np.ndarray], shape: Sequence[int]) -> list[int]:
    """Where the viewers open: the first mask's centroid in x, y and its largest axial
    slice in z (as the script picks), else the volume's centre."""
    if masks:
        first = np.asarray(masks[0]) > 0
        if first.any():
            xs, ys, _ = np.nonzero(first)
            return [int(np.floor(xs.mean() + 0.5)), int(np.floor(ys.mean() + 0.5)), _largest_slice(first)]
    return [n // 2 for n in shape]


def live_viewer(
    images: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    masks: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    display_px: int = 256,
):
    """The three-plane viewer as ipywidgets, for a live session (needs a kernel).

    Same conventions as ``slice_viewer``: RAS volumes, float ones normalised and
    shown at 8 bits, radiological display, mask contours (``mask_boundary``) in
    ``MASK_COLOURS``, each plane's aspect from ``spacing`` (mm). Each plane is an
    ``ipywidgets.Image`` holding a PNG of ``render_plane``; nothing is redrawn by
    matplotlib.

    Linked planes: the three sliders *are* the shared point (x, y, z): the
    sagittal slider is x, the coronal y and the axial z. Moving one slider
    changes that plane's slice and moves the crosshair in the other two, which
    are redrawn while the crosshair is on; the point is printed below the planes.
    For tests and scripts the returned box carries its parts as attributes:
    ``planes`` and ``sliders`` (dicts by plane name), ``modality``,
    ``mask_toggles`` (dict by mask label), ``crosshair``, ``point_label`` and
    ``render(plane)``, the RGB array its image shows.
    """
    import ipywidgets as widgets

    masks = {name: np.asarray(m) > 0 for name, m in (masks or {}).items()}
    if not images:
        raise ValueError("the viewer needs at least one image")
    volumes = {name: _eight_bit(v) for name, v in images.items()}
    shape = next(iter(volumes.values())).shape
    for array in (*volumes.values(), *masks.values()):
        if array.ndim != 3 or array.shape != shape:
            raise ValueError(f"all volumes should be 3D of one shape {shape}, got {array.shape}")
    if len(masks) > len(MASK_COLOURS):
        raise ValueError(f"at most {len(MASK_COLOURS)} masks have a colour, got {len(masks)}")
    spacing = [float(s) for s in spacing]
    colours = dict(zip(masks, MASK_COLOURS, strict=False))
    point = _start_point(list(masks.values()), shape)
    scale = display_px / max(n * s for n, s in zip(shape, spacing, strict=True))
    extent = {  # display width and height (mm) of each plane
        "axial": (shape[0] * spacing[0], shape[1] * spacing[1]),
        "coronal": (shape[0] * spacing[0], shape[2] * spacing[2]),
        "sagittal": (shape[1] * spacing[1], shape[2] * spacing[2]),
    }

    # Widths are set on the controls: ipywidgets' defaults (300 px each) would stack them.
    modality = widgets.ToggleButtons(
        options=list(volumes),
        description="image",
        style={"button_width": "3.5em", "description_width": "3em"},
    )
    mask_toggles = {
        name: widgets.Checkbox(value=True, description=name, indent=False, layout={"width": "auto"})
        for name in masks
    }
    crosshair = widgets.Checkbox(value=True, description="crosshair", indent=False, layout={"width": "auto"})
    sliders, planes, boxes = {}, {}, []
    for plane, axis in PLANES.items():
        width, height = (max(1, round(mm * scale)) for mm in extent[plane])
        sliders[plane] = widgets.IntSlider(
            value=point[axis],
            min=0,
            max=shape[axis] - 1,
            description=plane,
            continuous_update=True,
            style={"description_width": "4.5em"},
            layout={"width": f"{max(width, 200)}px"},
        )
        # The size also goes in the style: the widget's CSS (height: auto) would otherwise keep the
        # PNG's voxel aspect and drop the spacing, squashing coronal and sagittal planes.
        planes[plane] = widgets.Image(
            format="png",
            width=str(width),
            height=str(height),
            layout={"width": f"{width}px", "height": f"{height}px", "min_width": f"{width}px"},
        )
        boxes.append(widgets.VBox([planes[plane], sliders[plane]]).add_class(f"mstt-live-{plane}"))
    point_label = widgets.HTML()

    def current_point() -> list[int]:
        return [sliders["sagittal"].value, sliders["coronal"].value, sliders["axial"].value]

    def render(plane: str) -> np.ndarray:
        shown = [masks[name] for name, box in mask_toggles.items() if box.value]
        shown_colours = [colours[name] for name, box in mask_toggles.items() if box.value]
        return render_plane(
            volumes[modality.value],
            shown,
            plane,
            sliders[plane].value,
            shown_colours,
            current_point() if crosshair.value else None,
        )

    def redraw(names=tuple(PLANES)) -> None:
        for plane in names:
            planes[plane].value = _png_bytes(render(plane))
        x, y, z = current_point()
        mm = ", ".join(f"{c * s:.1f}" for c, s in zip((x, y, z), spacing, strict=True))
        point_label.value = f"point (x, y, z) = ({x}, {y}, {z}) voxels, ({mm}) mm from voxel (0, 0, 0)"

    def on_slider(plane):
        def handler(_change):
            redraw(tuple(PLANES) if crosshair.value else (plane,))

        return handler

    for plane, slider in sliders.items():
        slider.observe(on_slider(plane), names="value")
    for control in (modality, crosshair, *mask_toggles.values()):
        control.observe(lambda _change: redraw(), names="value")

    legend = "".join(
        f'<span style="display:inline-block;width:10px;height:10px;margin:0 3px 0 8px;'
        f'background:{colours[name]}"></span>{name}'
        for name in masks
    )
    bar = [modality, *mask_toggles.values(), crosshair, widgets.HTML(legend)]
    children = [widgets.HTML(f"<strong>{title}</strong>")] if title else []
    controls = widgets.HBox(bar, layout={"flex_flow": "row wrap", "align_items": "center", "grid_gap": "1em"})
    views = widgets.HBox(
        boxes, layout={"flex_flow": "row wrap", "align_items": "flex-start", "grid_gap": "1em"}
    )
    box = widgets.VBox([*children, controls, views, point_label])
    box.add_class("mstt-live-viewer")  # CSS hooks (and the browser test's) on the box and each plane
    box.planes, box.sliders, box.modality = planes, sliders, modality
    box.mask_toggles, box.crosshair = mask_toggles, crosshair
    box.point_label, box.render = point_label, render
    redraw()
    return box


def live_case_viewer(row: pd.Series, extra_masks: Mapping[str, np.ndarray] | None = None, **kwargs):
    """``live_viewer`` for one case of the case table, as ``case_viewer`` builds the static one."""
    case = load_case_on_reference_grid(row)
    case["masks"] = {"ground truth": case["mask"], **(extra_masks or {})}
    canonical = _canonical(case)
    title = kwargs.pop("title", f"{row['case_id']} · {row.get('tissue') or ''} · {row.get('site') or ''}")
    return live_viewer(canonical["images"], canonical["spacing"], canonical["masks"], title=title, **kwargs)
