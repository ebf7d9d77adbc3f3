"""Post-processing of predicted masks, kept only where cross-validation shows it helps.

nnU-Net's rule: after cross-validation, remove everything but the largest connected
component of the foreground, and keep that step only if it raises the mean Dice over
the validation cases. MSTT-199 has one tumour per patient, so false-positive islands
away from the tumour are the error it removes (chapter 7 measures them). Components are
26-connected, as in ``mstt_lib.failures``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from mstt_lib.io import atomic_path

__all__ = [
    "POSTPROCESSING",
    "POSTPROCESS_FILE",
    "largest_component",
    "apply",
    "choose",
    "choose_from_results",
    "write_choice",
    "read_choice",
]

POSTPROCESSING = ("none", "largest")
POSTPROCESS_FILE = "postprocessing.json"


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected foreground component (an empty mask stays empty; ties: the first)."""
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def apply(mask: np.ndarray, kind: str | None) -> np.ndarray:
    """``mask`` post-processed by ``kind`` (``None`` or ``"none"``: unchanged)."""
    if kind in (None, "none"):
        return np.asarray(mask, dtype=bool)
    if kind == "largest":
        return largest_component(mask)
    raise ValueError(f"unknown post-processing {kind!r}; choose one of {POSTPROCESSING}")


def choose(raw_dice: pd.Series | np.ndarray, processed_dice: pd.Series | np.ndarray) -> dict:
    """nnU-Net's rule on per-case Dice of the same cases: keep the step if the mean rises.

    Returns the decision with its evidence, the form ``postprocessing.json`` stores.
    """
    raw, processed = np.asarray(raw_dice, dtype=float), np.asarray(processed_dice, dtype=float)
    if raw.shape != processed.shape or raw.size == 0:
        raise ValueError("post-processing is chosen on the Dice of the same, non-empty set of cases")
    keep = bool(processed.mean() > raw.mean())
    return {
        "postprocessing": "largest" if keep else "none",
        "rule": "largest connected component kept if it raises the mean cross-validation Dice",
        "cases": int(raw.size),
        "mean_dice_raw": float(raw.mean()),
        "mean_dice_largest": float(processed.mean()),
    }


def choose_from_results(results: pd.DataFrame) -> dict:
    """nnU-Net's rule on cross-validation predictions: each row's ``prediction`` (NIfTI) with and
    without the largest-component step, scored by Dice against its ``native_mask``."""
    from mstt_lib.io import load_nifti, read_volume
    from mstt_lib.metrics import dice

    raw, processed = [], []
    for row in results.to_dict("records"):
        case_id = row["case_id"]
        prediction = read_volume(load_nifti(row["prediction"], case_id), case_id) > 0
        truth = read_volume(load_nifti(row["native_mask"], case_id), case_id) > 0
        raw.append(dice(prediction, truth, empty=1.0))
        processed.append(dice(largest_component(prediction), truth, empty=1.0))
    return choose(raw, processed)


def write_choice(folder: str | os.PathLike, decision: dict) -> Path:
    """Store a decision of ``choose`` in ``folder`` (a run or ensemble folder)."""
    path = Path(folder) / POSTPROCESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(decision, indent=1))
    return path


def read_choice(folder: str | os.PathLike) -> str:
    """The post-processing recorded in a run or ensemble folder (``"none"`` when none is)."""
    path = Path(folder) / POSTPROCESS_FILE
    if not path.is_file():
        return "none"
    try:
        kind = json.loads(path.read_text())["postprocessing"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{path} is not a post-processing record (expected a 'postprocessing' key)"
        ) from None
    if kind not in POSTPROCESSING:
        raise ValueError(f"{path} names unknown post-processing {kind!r}; expected one of {POSTPROCESSING}")
    return kind
