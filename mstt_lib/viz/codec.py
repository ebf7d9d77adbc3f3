"""The static viewer: a three-plane slice viewer that works in the static HTML book with no
kernel, and the codec of what it embeds.

The viewer packs a case into greyscale sprites of its axial slices tiled in a grid:
one per image (8-bit after the paper's percentile clamp and min-max; lossless PNG, or
lossy WebP when a large volume would make the page heavy) and one holding the masks
as bits (always lossless). A small script (``viewer.js``) decodes them in the browser and
draws the axial, coronal and sagittal planes with sliders, a modality switch, mask contours
and linked crosshairs, displayed as ``mstt_lib.geometry.display_slice`` shows a plane. No
widget library renders in a kernel-less page at this size, hence our own;
``mstt_lib.viz.widget.live_viewer`` is the ipywidgets version for a session with a kernel.
"""

from __future__ import annotations

import base64
import io
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from mstt_lib.preprocess import normalise_intensity
from mstt_lib.viz.figures import largest_slice, viewer_case

__all__ = [
    "MASK_COLOURS",
    "mask_boundary",
    "eight_bit",
    "start_point",
    "encode_volume",
    "decode_volume",
    "slice_viewer",
    "viewer_payload",
    "case_viewer",
]

MASK_COLOURS = ("#00ff00", "#ff0000", "#00bfff", "#ffff00")  # ground truth green, prediction red


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside it (or at the image edge).

    This is the contour the viewer draws; the same rule runs in its script.
    """
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~inner


def start_point(masks: Sequence[np.ndarray], shape: Sequence[int]) -> list[int]:
    """Where the viewers open: the first mask's centroid in x, y and its largest axial
    slice in z (as the script picks), else the volume's centre."""
    if masks:
        first = np.asarray(masks[0]) > 0
        if first.any():
            xs, ys, _ = np.nonzero(first)
            return [int(np.floor(xs.mean() + 0.5)), int(np.floor(ys.mean() + 0.5)), largest_slice(first)]
    return [n // 2 for n in shape]


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


def eight_bit(volume: np.ndarray) -> np.ndarray:
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
    volumes = [eight_bit(v) for v in images.values()]
    uris, layout = _encode_within(volumes, list(masks.values()), max_bytes)
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
    canonical, title = viewer_case(row, extra_masks)
    title = kwargs.pop("title", title)
    return slice_viewer(canonical["images"], canonical["spacing"], canonical["masks"], title=title, **kwargs)
