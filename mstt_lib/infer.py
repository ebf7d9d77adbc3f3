"""Inference (paper, section 4.2): every 2.5D sample of a volume in the axial, coronal and
sagittal planes, test-time augmentation, plane fusion, and the prediction on the native grid.

How each model sees a slice:

- The U-Net is fully convolutional (and its BatchNorm is in evaluation mode), so every slice
  goes in at its own size, zero-padded (the value training pads with) to the encoder's stride
  and never cropped: a tumour at the edge of a wide field of view is seen like one in the
  middle. A slice smaller than the run's training crops is padded, centred, to the crop's
  side, as training padded it (nnU-Net pads an image smaller than its patch the same way): a
  U-Net trained on 96-pixel crops and shown the small real cases at their own size (40-60
  pixels) segmented nothing in 7 of 9; padded as in training, they scored 0.51 on average
  (``benchmarks/results.md``). A slice too large for one forward pass (``max_pixels``) goes
  in overlapping tiles whose outputs are blended with Gaussian weights (nnU-Net's sliding
  window).
- LiteMedSAM takes a fixed 256 x 256 input: each slice is resized to it and its logits resized
  back to the slice's grid, as the paper does.

Test-time augmentation (``tta``): ``"paper"`` (the default, as the paper's text says:
identity, horizontal flip, vertical flip, rot90), ``"all8"`` (the authors' code: every
combination of horizontal flip, vertical flip and rot90) or ``"none"``. Each output is
undone before the logits are averaged. All transforms of a batch go through the model in
one forward pass (two where rot90 turns a non-square slice: one per output shape), split
only where a pass would exceed ``max_pixels``. The planes' logit volumes are averaged; the
predictor (``mstt_lib.predictor``) resamples their probability to the case's native grid and
thresholds it there, at 0.5 (the authors' code: logit 0) unless cross-validation chose another.

Slices whose 2.5D input holds no body (every voxel of every channel below half the
volume's Otsu threshold between air and tissue, per channel) are not run through the model;
they get the background logit ``EMPTY_LOGIT``. Everything runs under
``torch.inference_mode`` and channels-last; on a GPU in mixed precision, on a CPU with native
bfloat16 (``cpu_bfloat16``) under bfloat16 autocast, elsewhere in float32; ``bfloat16`` and
``channels_last`` override this (``benchmarks/results.md`` has what each measured).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mstt_lib.devices import cpu_bfloat16
from mstt_lib.geometry import PLANE_AXIS, PLANES, resample_array
from mstt_lib.io import atomic_path, save_nifti
from mstt_lib.models import DECODER_CHANNELS, build_model
from mstt_lib.slices import CacheSettings, sample_25d

__all__ = [
    "INFERENCE_VERSION",
    "TTA_MODES",
    "EMPTY_LOGIT",
    "DEFAULT_MAX_PIXELS",
    "load_run",
    "fixed_input_size",
    "min_input_size",
    "inference_threads",
    "cpu_bfloat16",
    "set_inference_threads",
    "tta_transforms",
    "predict_batch",
    "body_levels",
    "empty_slices",
    "predict_volume",
    "to_native",
    "write_prediction",
]

INFERENCE_VERSION = 3
"""Raised when inference changes what it predicts: scores and predictions of an older one are
redone. 2 is whole slices (no crop to ``image_size``), skipped empty slices; 3 pads a slice
smaller than the run's training crops to their side."""
TTA_MODES = ("none", "paper", "all8")
EMPTY_LOGIT = -20.0
"""Logit of a slice that holds no body (and was therefore not run through the model)."""
DEFAULT_MAX_PIXELS = 16 * 256 * 256
"""Pixels per forward pass (samples x height x width): the paper's batch of 16 at 256 x 256."""
DEFAULT_STRIDE = 32
"""Padding multiple of a fully convolutional model that does not state its encoder's stride."""


def load_run(
    run_dir: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict, CacheSettings]:
    """The trained model of a run folder, its training settings (``params.json``) and its preprocessing."""
    run_dir = Path(run_dir)
    missing = [n for n in ("params.json", "preprocessing.json", "model.pt") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished training run (missing {missing})")
    training = json.loads((run_dir / "params.json").read_text())  # the run's TrainSettings
    preprocessing = json.loads((run_dir / "preprocessing.json").read_text())
    channels = preprocessing.pop("channels")
    settings = CacheSettings(**{**preprocessing, "modalities": tuple(preprocessing["modalities"])})
    decoder = tuple(training.get("decoder_channels", DECODER_CHANNELS))  # older runs: smp's default
    norm = training.get("norm", "batch")  # older runs: smp's BatchNorm
    model = build_model(
        training["model"], len(channels), training["encoder"], decoder_channels=decoder, norm=norm
    )
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    if fixed_input_size(model) is None:
        model.min_input_size = int(training["image_size"])  # its training crops' side
    return model.eval().to(device), training, settings


def fixed_input_size(model: nn.Module) -> int | None:
    """The square input side a model requires (LiteMedSAM: 256), or None for a fully convolutional one.

    A model may state it as a ``fixed_input_size`` attribute; LiteMedSAM is recognised by its class.
    """
    size = getattr(model, "fixed_input_size", None)
    if size is not None:
        return int(size)
    from mstt_lib.litemedsam import IMAGE_SIZE, LiteMedSAM

    return IMAGE_SIZE if isinstance(model, LiteMedSAM) else None


def min_input_size(model: nn.Module) -> int:
    """The side a fully convolutional model's slices are padded to at least: its training crops'
    (``load_run`` sets ``min_input_size``), or 0 for a model that does not state one."""
    return int(getattr(model, "min_input_size", 0) or 0)


def _stride(model: nn.Module) -> int:
    """What a fully convolutional model's input sides must be a multiple of (smp: the encoder's)."""
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    return int(stride) if stride else DEFAULT_STRIDE


def inference_threads() -> int:
    """CPU threads worth using: the cores this process may run on, within any cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_inference_threads() -> None:
    """No more threads than usable cores (torch counts the machine's, not a container's quota),
    and never more than the caller chose: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` are kept as
    they are, and so is a lower ``torch.set_num_threads``, so that runs placed side by side on
    one core each stay there."""
    if not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        torch.set_num_threads(min(torch.get_num_threads(), inference_threads()))


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


def _combos(mode: str) -> list[tuple[bool, bool, bool]]:
    """(flip_h, flip_v, rot90) of each transform of a TTA mode."""
    if mode == "none":
        return [(False, False, False)]
    if mode == "paper":
        return [(False, False, False), (True, False, False), (False, True, False), (False, False, True)]
    if mode == "all8":
        return list(itertools.product((False, True), repeat=3))
    raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {TTA_MODES}")


def tta_transforms(mode: str = "paper") -> list[Transform]:
    """(forward, inverse) pairs on (..., H, W) tensors; rot90 swaps H and W."""
    return [_compose(*combo) for combo in _combos(mode)]


# ---------------------------------------------------------------------------
# One model on a batch of slices.


class _Runner:
    """Runs one model under the chosen precision and memory layout, in passes of at most
    ``max_pixels`` pixels."""

    def __init__(self, model: nn.Module, device: torch.device, max_pixels: int, bfloat16, channels_last):
        self.model = model
        self.device = device
        self.max_pixels = max(1, int(max_pixels))
        cuda = device.type == "cuda"
        self.channels_last = True if channels_last is None else bool(channels_last)
        bfloat16 = cpu_bfloat16() if bfloat16 is None else bool(bfloat16)
        self.autocast = (
            dict(device_type="cuda", enabled=True)
            if cuda
            else dict(device_type="cpu", dtype=torch.bfloat16, enabled=bfloat16)
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, h, w) of (N, C, h, w) inputs, in chunks that fit ``max_pixels``."""
        per_pass = max(1, self.max_pixels // (batch.shape[-2] * batch.shape[-1]))
        outputs = []
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        for start in range(0, batch.shape[0], per_pass):
            chunk = batch[start : start + per_pass]
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            with torch.autocast(**self.autocast):
                outputs.append(self.model(chunk).float().contiguous())
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _gaussian(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """nnU-Net's tile weighting: a Gaussian with sigma 1/8 of the tile, no zeros."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2 for n in size]
    weight = torch.exp(-(axes[0][:, None] ** 2) / (2 * (size[0] / 8) ** 2))
    weight = weight * torch.exp(-(axes[1][None, :] ** 2) / (2 * (size[1] / 8) ** 2))
    weight = weight / weight.max()
    return weight.clamp_min(weight[weight > 0].min())


def _tile_starts(length: int, tile: int) -> list[int]:
    """Start positions of overlapping tiles (half a tile apart at most) covering ``length``."""
    if length <= tile:
        return [0]
    steps = math.ceil((length - tile) / (tile / 2)) + 1
    return [round(k * (length - tile) / (steps - 1)) for k in range(steps)]


def _tiled(run: _Runner, batch: torch.Tensor, stride: int) -> torch.Tensor:
    """Logits of inputs too large for one pass: overlapping Gaussian-weighted tiles."""
    side = max(stride, math.isqrt(run.max_pixels) // stride * stride)
    height, width = batch.shape[-2:]
    tile = (min(side, height), min(side, width))
    starts = [(r, c) for r in _tile_starts(height, tile[0]) for c in _tile_starts(width, tile[1])]
    weight = _gaussian(tile, batch.device)
    total = torch.zeros((batch.shape[0], 1, height, width), device=batch.device)
    norm = torch.zeros((height, width), device=batch.device)
    for r, c in starts:
        window = (..., slice(r, r + tile[0]), slice(c, c + tile[1]))
        total[window] += run(batch[window]) * weight
        norm[window[1:]] += weight
    return total / norm


def _unet_logits(run: _Runner, images: torch.Tensor, combos, stride: int, min_side: int = 0) -> torch.Tensor:
    """Summed, undone TTA logits of a fully convolutional model: each slice at its own size,
    zero-padded (centred) to a multiple of ``stride`` and to at least ``min_side``."""
    height, width = images.shape[-2:]
    least = -(-min_side // stride) * stride
    rows = max(height + -height % stride, least) - height
    columns = max(width + -width % stride, least) - width
    top, left = rows // 2, columns // 2
    padded = F.pad(images, (left, columns - left, top, rows - top)) if rows or columns else images
    total = torch.zeros((images.shape[0], 1, *padded.shape[-2:]), device=images.device)
    groups: dict[bool, list[Transform]] = {}
    square = padded.shape[-2] == padded.shape[-1]
    for flip_h, flip_v, rotate in combos:  # one pass per output shape
        groups.setdefault(rotate and not square, []).append(_compose(flip_h, flip_v, rotate))
    count = images.shape[0]
    for transforms in groups.values():
        stacked = torch.cat([forward(padded) for forward, _ in transforms])
        if stacked.shape[-2] * stacked.shape[-1] > run.max_pixels:
            logits = _tiled(run, stacked, stride)
        else:
            logits = run(stacked)
        for k, (_, inverse) in enumerate(transforms):
            total += inverse(logits[k * count : (k + 1) * count])
    return total[..., top : top + height, left : left + width]


def _fixed_size_logits(run: _Runner, images: torch.Tensor, combos, size: int) -> torch.Tensor:
    """Summed, undone TTA logits of a fixed-input model: resized to ``size`` and back (the paper)."""
    height, width = images.shape[-2:]
    resized = images
    if (height, width) != (size, size):
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    transforms = [_compose(*combo) for combo in combos]
    logits = run(torch.cat([forward(resized) for forward, _ in transforms]))
    count = images.shape[0]
    total = sum(inverse(logits[k * count : (k + 1) * count]) for k, (_, inverse) in enumerate(transforms))
    if (height, width) != (size, size):
        total = F.interpolate(total, size=(height, width), mode="bilinear", align_corners=False)
    return total


@torch.inference_mode()
def predict_batch(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    tta: str = "paper",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bfloat16: bool | None = None,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """Mean logits (B, 1, H, W) over the models (an ensemble of folds) and the TTA transforms.

    ``images`` (B, C, H, W) may have any H and W: a fully convolutional model gets them padded
    to its stride and to at least its ``min_input_size``, a fixed-input model (LiteMedSAM)
    resized to its input and back.
    ``bfloat16`` (CPU autocast; None: where the CPU has it natively) and ``channels_last`` (None:
    on) choose the arithmetic; on a GPU, mixed precision (float16 autocast) is always on.
    """
    combos = _combos(tta)
    device = images.device
    total = torch.zeros((images.shape[0], 1, *images.shape[-2:]), device=device, dtype=torch.float32)
    for model in models:
        run = _Runner(model, device, max_pixels, bfloat16, channels_last)
        size = fixed_input_size(model)
        if size is None:
            total += _unet_logits(run, images, combos, _stride(model), min_input_size(model))
        else:
            total += _fixed_size_logits(run, images, combos, size)
    return total / (len(models) * len(combos))


# ---------------------------------------------------------------------------
# A whole volume.


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of intensities (256 bins); where a range of thresholds separates the two
    classes equally well (a clean gap), the middle of that range."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1].astype(np.float64)
    above = counts.sum() - below
    if not (below > 0).any() or not (above > 0).any():
        return float(edges[0])
    moment = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = below * above * (moment[:-1] / below - (moment[-1] - moment[:-1]) / above) ** 2
    between = np.nan_to_num(between)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


BODY_LEVEL_CAP = 0.15
"""Highest intensity (of images min-max normalised to [0, 1]) that may count as air: without air in
the field of view Otsu separates tissues instead, and dim tissue must not count as empty."""


def body_levels(volume: np.ndarray) -> np.ndarray:
    """Per channel of a (C, X, Y, Z) volume, the intensity above which a voxel may be body: half
    the Otsu threshold between air and tissue (air noise lies well below it), at most
    ``BODY_LEVEL_CAP``."""
    return np.array(
        [min(_otsu(np.asarray(channel, dtype=np.float32)) / 2, BODY_LEVEL_CAP) for channel in volume]
    )


def empty_slices(volume: np.ndarray, plane: str, levels: np.ndarray | None = None) -> np.ndarray:
    """Per slice of ``plane``: True where its 2.5D sample (the slice and its two neighbours) holds
    no voxel above ``levels`` (``body_levels`` by default) in any channel."""
    levels = body_levels(volume) if levels is None else np.asarray(levels)
    axis = PLANE_AXIS[plane]
    other = tuple(a for a in range(3) if a != axis)
    occupied = np.zeros(volume.shape[axis + 1], dtype=bool)
    for channel, level in zip(volume, levels, strict=True):
        occupied |= (np.asarray(channel) > level).any(axis=other)
    neighbours = np.pad(occupied, 1, mode="edge")
    return ~(neighbours[:-2] | neighbours[1:-1] | neighbours[2:])


def predict_volume(
    models: Sequence[nn.Module],
    volume: np.ndarray,
    planes: Sequence[str] = PLANES,
    tta: str = "paper",
    size: int = 256,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    timings: dict | None = None,
    *,
    skip_empty: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    bfloat16: bool | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Fused logits (X, Y, Z) of a preprocessed (C, X, Y, Z) volume: planes averaged.

    Every slice keeps its own size (see the module's notes); ``size`` is not used any more (kept
    for callers that pass it: a fixed-input model's size is the model's own). ``batch_size``
    slices go through the model together, each with all its TTA transforms, split where a pass
    would exceed ``max_pixels``. ``skip_empty`` gives slices without body ``EMPTY_LOGIT`` without
    running the model. ``timings``, when given, receives the seconds spent per plane.
    """
    del size  # every slice at its own size; LiteMedSAM's input is its own
    unknown = set(planes) - set(PLANES)
    if unknown or not planes:
        raise ValueError(f"planes should be a non-empty subset of {PLANES}, got {list(planes)}")
    device = torch.device(device)
    for model in models:
        model.eval().to(device)
    levels = body_levels(volume) if skip_empty else None
    fused = np.zeros(volume.shape[1:], dtype=np.float32)
    for plane in planes:
        started = time.perf_counter()
        axis = PLANE_AXIS[plane]
        target = np.moveaxis(fused, axis, 0)  # a view: (slices, rows, columns), sample_25d's order
        if skip_empty:
            empty = empty_slices(volume, plane, levels)
            target[empty] += EMPTY_LOGIT
            indices = np.flatnonzero(~empty)
        else:
            indices = np.arange(volume.shape[axis + 1])
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            batch = np.stack([sample_25d(volume, plane, int(i)) for i in chosen]).astype(np.float32)
            logits = predict_batch(
                models,
                torch.from_numpy(batch).to(device),
                tta,
                max_pixels=max_pixels,
                bfloat16=bfloat16,
                channels_last=channels_last,
            )
            target[chosen] += logits[:, 0].cpu().numpy()
        if timings is not None:
            timings[plane] = time.perf_counter() - started
    return fused / len(planes)


def to_native(
    logits: np.ndarray, affine: np.ndarray, native_shape: Sequence[int], native_affine: np.ndarray
) -> np.ndarray:
    """The probability on the native grid from logits on the isotropic grid (the mask is the
    post-processing's: ``postprocess.binarize``)."""
    probability = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    native = resample_array(
        probability, np.asarray(affine), tuple(native_shape), np.asarray(native_affine), order=1
    )
    return native.astype(np.float32)


def write_prediction(
    out_dir: str | os.PathLike,
    case_id: str,
    probability: np.ndarray,
    affine: np.ndarray,
    meta: dict | None = None,
    mask: np.ndarray | None = None,
) -> Path:
    """``<case>.nii.gz`` (0/1 mask: ``mask``, by default probability >= 0.5) and
    ``<case>_probability.nii.gz`` on the given grid."""
    out_dir = Path(out_dir)
    save_nifti(probability, affine, out_dir / f"{case_id}_probability.nii.gz", dtype=np.float32)
    mask = probability >= 0.5 if mask is None else mask
    path = save_nifti(np.asarray(mask).astype(np.uint8), affine, out_dir / f"{case_id}.nii.gz")
    if meta is not None:
        with atomic_path(out_dir / f"{case_id}.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    return path
