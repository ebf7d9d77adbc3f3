"""The live viewer: the static viewer's three planes as ipywidgets, for a session with a kernel.

Planes, their slice axes and their display are ``mstt_lib.geometry``'s (``PLANES``,
``PLANE_AXIS``, ``display_slice``), the conventions that ``viewer.js`` draws.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from mstt_lib.geometry import PLANE_AXIS, PLANES, display_point, display_slice
from mstt_lib.viz.codec import MASK_COLOURS, eight_bit, mask_boundary, start_point
from mstt_lib.viz.figures import viewer_case

__all__ = ["render_plane", "live_viewer", "live_case_viewer"]

_CROSSHAIR = (np.array([255.0, 255.0, 0.0]), 0.45)  # yellow at 45 %, as the script draws it


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

    The slice ``index`` of ``plane`` (``geometry.PLANES``) of the RAS volume, in grey,
    with the contour of each mask's slice (``mask_boundary``) painted in its
    colour, later masks over earlier ones, as the static viewer's script does.
    With ``point`` (x, y, z), a yellow crosshair through it is blended on top.
    """
    if volume_u8.dtype != np.uint8:
        raise ValueError(f"the rendered volume should be uint8, got {volume_u8.dtype}")
    grey = display_slice(volume_u8, plane, index)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for mask, colour in zip(masks, colours, strict=False):
        rgb[mask_boundary(display_slice(np.asarray(mask), plane, index) > 0)] = _rgb(colour)
    if point is not None:
        column, row = display_point(plane, point, volume_u8.shape)
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
    volumes = {name: eight_bit(v) for name, v in images.items()}
    shape = next(iter(volumes.values())).shape
    for array in (*volumes.values(), *masks.values()):
        if array.ndim != 3 or array.shape != shape:
            raise ValueError(f"all volumes should be 3D of one shape {shape}, got {array.shape}")
    if len(masks) > len(MASK_COLOURS):
        raise ValueError(f"at most {len(MASK_COLOURS)} masks have a colour, got {len(masks)}")
    spacing = [float(s) for s in spacing]
    colours = dict(zip(masks, MASK_COLOURS, strict=False))
    point = start_point(list(masks.values()), shape)
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
    for plane in PLANES:
        axis = PLANE_AXIS[plane]
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
    canonical, title = viewer_case(row, extra_masks)
    title = kwargs.pop("title", title)
    return live_viewer(canonical["images"], canonical["spacing"], canonical["masks"], title=title, **kwargs)
