"""The paper's preprocessing (section 4.2): resample to 1 x 1 x 1 mm, clamp each image to its
own 0.05 and 99.95 percentiles, min-max normalise to [0, 1].

This module holds the intensity half. The resampling half lives in ``mstt_lib.geometry``
(``isotropic_grid``, ``resample_array``): it works in world coordinates through the
affines, so LPS, RAS, oblique and sheared inputs all land where they belong, and a
prediction on the 1 mm grid maps back to the native grid.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LOW_PERCENTILE",
    "HIGH_PERCENTILE",
    "clip_percentiles",
    "minmax_normalise",
    "normalise_intensity",
]

LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95


# ---------------------------------------------------------------------------
# Intensity.


def clip_percentiles(
    image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """Clamp an image to its own ``low`` and ``high`` percentiles (in %, not fractions).

    The paper clamps at 0.05 % and 99.95 % to drop outliers before min-max.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles should satisfy 0 <= low < high <= 100, got {low}, {high}")
    lo, hi = np.percentile(image, [low, high])
    return np.clip(image, lo, hi)


def minmax_normalise(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's own minimum and maximum; a constant image gives 0."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    return (image - lo) / (hi - lo)


def normalise_intensity(
    image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """The paper's intensity pipeline: percentile clamp, then min-max to [0, 1]."""
    return minmax_normalise(clip_percentiles(image, low, high))
