"""Inference (paper, section 4.2): every 2.5D sample of a volume in the axial, coronal and
sagittal planes, test-time augmentation, plane fusion, and the prediction on the native grid.

Test-time augmentation (``tta``): ``"paper"`` (the default, as the paper's text says:
identity, horizontal flip, vertical flip, rot90), ``"all8"`` (the authors' code: every
combination of horizontal flip, vertical flip and rot90) or ``"none"``. Each output is
undone before the logits are averaged. The planes' logit volumes are averaged too and
thresholded at 0 (probability 0.5), as the authors' code does. Samples go through the
model in batches under ``torch.inference_mode``; on a GPU in mixed precision and
channels-last.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mstt_lib.io import atomic_path, save_nifti
from mstt_lib.models import build_model
from mstt_lib.preprocess import resample_array
from mstt_lib.slices import PLANE_AXIS, PLANES, CacheSettings, fit_to_size, restore_size, sample_25d

__all__ = [
    "TTA_MODES",
    "load_run",
    "tta_transforms",
    "predict_batch",
    "predict_volume",
    "to_native",
    "write_prediction",
]

TTA_MODES = ("none", "paper", "all8")


def load_run(
    run_dir: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict, CacheSettings]:
    """The trained model of a run folder, its training parameters and its preprocessing."""
    run_dir = Path(run_dir)
    missing = [n for n in ("params.json", "preprocessing.json", "model.pt") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished training run (missing {missing})")
    params = json.loads((run_dir / "params.json").read_text())
    preprocessing = json.loads((run_dir / "preprocessing.json").read_text())
    channels = preprocessing.pop("channels")
    settings = CacheSettings(**{**preprocessing, "modalities": tuple(preprocessing["modalities"])})
    model = build_model(params["model"], len(channels), params["encoder"])
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return model.eval().to(device), params, settings


Transform = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _compose(flip_h: bool, flip_v: bool, rotate: bool) -> Transform:
    def forward(x):
        if flip_h:
            x = x.flip(-1)
        if flip_v:
            x = x.flip(-2)
        return torch.rot90(x, 1, (-2, -1)) if rotate else x

    def inverse(x):
        if rotate:
            x = torch.rot90(x, -1, (-2, -1))
        if flip_v:
            x = x.flip(-2)
        return x.flip(-1) if flip_h else x

    return forward, inverse


def tta_transforms(mode: str = "paper") -> list[Transform]:
    """(forward, inverse) pairs on (..., H, W) tensors; rot90 needs square samples."""
    if mode == "none":
        combos = [(False, False, False)]
    elif mode == "paper":
        combos = [(False, False, False), (True, False, False), (False, True, False), (False, False, True)]
    elif mode == "all8":
        combos = list(itertools.product((False, True), repeat=3))
    else:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {TTA_MODES}")
    return [_compose(*combo) for combo in combos]


@torch.inference_mode()
def predict_batch(models: Sequence[nn.Module], images: torch.Tensor, tta: str = "paper") -> torch.Tensor:
    """Mean logits (B, 1, H, W) over the models (an ensemble of folds) and the TTA transforms."""
    device = images.device
    amp = device.type == "cuda"
    total = torch.zeros((images.shape[0], 1, *images.shape[-2:]), device=device, dtype=torch.float32)
    transforms = tta_transforms(tta)
    for model in models:
        for forward, inverse in transforms:
            batch = forward(images)
            if amp:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                total += inverse(model(batch).float())
    return total / (len(models) * len(transforms))


def predict_volume(
    models: Sequence[nn.Module],
    volume: np.ndarray,
    planes: Sequence[str] = PLANES,
    tta: str = "paper",
    size: int = 256,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    timings: dict | None = None,
) -> np.ndarray:
    """Fused logits (X, Y, Z) of a preprocessed (C, X, Y, Z) volume: planes averaged.

    ``timings``, when given, receives the seconds spent per plane.
    """
    unknown = set(planes) - set(PLANES)
    if unknown or not planes:
        raise ValueError(f"planes should be a non-empty subset of {PLANES}, got {list(planes)}")
    device = torch.device(device)
    for model in models:
        model.eval().to(device)
    fused = np.zeros(volume.shape[1:], dtype=np.float32)
    for plane in planes:
        started = time.perf_counter()
        axis = PLANE_AXIS[plane]
        count = volume.shape[axis + 1]
        for start in range(0, count, batch_size):
            indices = range(start, min(start + batch_size, count))
            samples = [sample_25d(volume, plane, i) for i in indices]
            shape = samples[0].shape[-2:]
            batch = torch.from_numpy(
                np.stack([fit_to_size(s.astype(np.float32), (size, size)) for s in samples])
            )
            logits = predict_batch(models, batch.to(device), tta)[:, 0].cpu().numpy()
            logits = restore_size(logits, shape, fill=-20.0)  # outside the sample: background
            target = [slice(None)] * 3
            target[axis] = slice(start, start + len(samples))
            fused[tuple(target)] += np.moveaxis(logits, 0, axis)
        if timings is not None:
            timings[plane] = time.perf_counter() - started
    return fused / len(planes)


def to_native(
    logits: np.ndarray, affine: np.ndarray, native_shape: Sequence[int], native_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(probability, binary mask) on the native grid from logits on the isotropic grid."""
    probability = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    native = resample_array(
        probability, np.asarray(affine), tuple(native_shape), np.asarray(native_affine), order=1
    )
    return native.astype(np.float32), native >= 0.5


def write_prediction(
    out_dir: str | os.PathLike,
    case_id: str,
    probability: np.ndarray,
    affine: np.ndarray,
    meta: dict | None = None,
) -> Path:
    """``<case>.nii.gz`` (0/1 mask) and ``<case>_probability.nii.gz`` on the given grid."""
    out_dir = Path(out_dir)
    save_nifti(probability, affine, out_dir / f"{case_id}_probability.nii.gz", dtype=np.float32)
    path = save_nifti((probability >= 0.5).astype(np.uint8), affine, out_dir / f"{case_id}.nii.gz")
    if meta is not None:
        with atomic_path(out_dir / f"{case_id}.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    return path
