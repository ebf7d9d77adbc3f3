"""Figures and viewers for the book, in three parts (``from mstt_lib import viz`` gives them all):

- ``viz.figures``: plotly output that survives the static build, galleries, a case loaded
  for display;
- ``viz.codec``: the static three-plane viewer for the kernel-less HTML book, and the codec
  of the sprites it embeds;
- ``viz.widget``: the same viewer as ipywidgets, for a live session.
"""

from mstt_lib.viz.codec import (
    MASK_COLOURS,
    case_viewer,
    decode_volume,
    encode_volume,
    mask_boundary,
    slice_viewer,
    viewer_payload,
)
from mstt_lib.viz.figures import (
    case_in_ras,
    load_case_on_reference_grid,
    load_mask,
    show_figure,
    tissue_colours,
    tissue_gallery,
    trend_figure,
    wrappable,
)
from mstt_lib.viz.widget import live_case_viewer, live_viewer, render_plane

__all__ = [
    "MASK_COLOURS",
    "show_figure",
    "tissue_gallery",
    "mask_boundary",
    "encode_volume",
    "decode_volume",
    "slice_viewer",
    "viewer_payload",
    "case_viewer",
    "case_in_ras",
    "render_plane",
    "live_viewer",
    "live_case_viewer",
    "load_case_on_reference_grid",
    "load_mask",
    "trend_figure",
    "tissue_colours",
    "wrappable",
]
