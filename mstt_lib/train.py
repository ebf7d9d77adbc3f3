"""Training one model on one fold (paper, section 3 and Appendix A).

Binary cross-entropy on logits (the paper's eq. 1; ``loss="dice_bce"`` adds soft
Dice), Adam, the Appendix A augmentations, 2.5D samples from the slice cache. A run
writes its own folder: ``params.json``, ``preprocessing.json`` (how its samples were
made, for the predictor), ``checkpoint.pt`` (rewritten every epoch, with the optimiser),
``history.csv`` (loss and validation Dice per epoch) and, at
the end, ``model.pt`` (weights only). A run that is started again continues from
its last checkpoint; on the CPU it ends with the same weights as an uninterrupted
run, because each epoch's sample order and each sample's augmentation are drawn
from generators seeded by (seed, epoch, sample).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from mstt_lib.io import atomic_path
from mstt_lib.models import build_model
from mstt_lib.slices import PLANES, SliceCache

__all__ = ["TrainSettings", "augmentations", "SliceDataset", "resolve_device", "train", "dice_score"]


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on; saved as the run's ``params.json``."""

    model: str = "unet"
    fold: int = 0
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    encoder: str = "se_resnext50_32x4d"
    weights: str | None = None
    loss: str = "bce"
    image_size: int = 256
    min_tumour_voxels: int = 100
    planes: tuple[str, ...] = PLANES
    augment: bool = True
    samples_per_epoch: int | None = None  # None: every training sample once per epoch
    val_samples: int | None = None  # None: every validation sample
    seed: int = 0
    device: str = "auto"
    loader_workers: int = 0


def augmentations(size: int):
    """The Appendix A augmentations (albumentations 2, each p = 0.5; argument names checked).

    Images are float in [0, 1], as the intensity transforms expect for floats.
    """
    import albumentations as A

    return A.Compose(
        [
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=0, fill=0, fill_mask=0),
            A.RandomCrop(height=size, width=size),
            A.RandomRotate90(p=0.5),
            A.VerticalFlip(p=0.5),
            A.HorizontalFlip(p=0.5),
            A.RandomGamma(gamma_limit=(50, 200), p=0.5),
            A.RandomBrightnessContrast(p=0.5),
            A.GaussianBlur(p=0.5),
            A.MotionBlur(p=0.5),
            A.GridDistortion(num_steps=5, distort_limit=0.3, p=0.5),
            A.Normalize(mean=0, std=1, max_pixel_value=1.0),
        ],
        strict=True,
    )


class SliceDataset(torch.utils.data.Dataset):
    """2.5D samples of the slice cache as (image (C, H, W), mask (1, H, W)) float tensors."""

    def __init__(self, cache: SliceCache, rows: pd.DataFrame, size: int, augment: bool, seed: int = 0):
        self.cache = cache
        self.rows = list(rows[["case_id", "plane", "index"]].itertuples(index=False, name=None))
        self.size = size
        self.transform = augmentations(size) if augment else None
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int):
        case_id, plane, index = self.rows[i]
        if self.transform is None:
            image, mask = self.cache.sample(case_id, plane, int(index), (self.size, self.size))
        else:
            image, mask = self.cache.sample(case_id, plane, int(index), None)
            self.transform.set_random_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])
            )
            out = self.transform(
                image=np.ascontiguousarray(image.transpose(1, 2, 0)), mask=np.ascontiguousarray(mask)
            )
            image, mask = out["image"].transpose(2, 0, 1), out["mask"]
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(mask, dtype=np.float32)[None]
        )


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU. Asking for CUDA without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'"
        )
    return torch.device(device)


def dice_score(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(2 TP, TP + FP + TP + FN) of thresholded logits, to pool Dice over batches."""
    prediction = logits > 0
    truth = target > 0.5
    tp = (prediction & truth).sum().item()
    return 2.0 * tp, float(prediction.sum().item() + truth.sum().item())


class _Loss(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("bce", "dice_bce"):
            raise ValueError(f"unknown loss {kind!r}; choose 'bce' or 'dice_bce'")
        self.kind = kind
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits, target):
        loss = self.bce(logits, target)
        if self.kind == "dice_bce":
            probability = torch.sigmoid(logits)
            intersection = (probability * target).sum((1, 2, 3))
            total = probability.sum((1, 2, 3)) + target.sum((1, 2, 3))
            loss = loss + (1 - (2 * intersection + 1) / (total + 1)).mean()
        return loss


def _settings_json(settings: TrainSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def _epoch_order(n: int, seed: int, epoch: int, limit: int | None) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order if limit is None else order[:limit]


def train(
    settings: TrainSettings,
    cache: SliceCache,
    train_cases: list[str],
    val_cases: list[str],
    run_dir: str | os.PathLike,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (or resume) one run into ``run_dir``; returns the per-epoch history."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    params_file = run_dir / "params.json"
    wanted = _settings_json(settings)
    if params_file.is_file():
        previous = json.loads(params_file.read_text())
        different = {k for k in wanted if k != "epochs" and previous.get(k) != wanted[k]}
        if different:
            raise ValueError(
                f"{run_dir} holds a run with other parameters {sorted(different)}; use another folder"
            )
    with atomic_path(params_file) as tmp:
        tmp.write_text(json.dumps(wanted, indent=1))
    # What a predictor needs to prepare new images the way this run saw them.
    with atomic_path(run_dir / "preprocessing.json") as tmp:
        preprocessing = {**cache.manifest["settings"], "channels": cache.manifest["channels"]}
        tmp.write_text(json.dumps(preprocessing, indent=1))

    torch.manual_seed(settings.seed)
    model = build_model(settings.model, len(cache.manifest["channels"]), settings.encoder, settings.weights)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_function = _Loss(settings.loss)
    history: list[dict] = []
    start = 0
    checkpoint_file = run_dir / "checkpoint.pt"
    if checkpoint_file.is_file():
        state = torch.load(checkpoint_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        history = state["history"]
        start = state["epoch"] + 1

    planes = tuple(settings.planes)
    train_rows = cache.select(train_cases, planes, settings.min_tumour_voxels)
    val_rows = cache.select(val_cases, planes, settings.min_tumour_voxels)
    if settings.val_samples is not None and len(val_rows) > settings.val_samples:
        val_rows = val_rows.iloc[_epoch_order(len(val_rows), settings.seed, 999_999, settings.val_samples)]
    if train_rows.empty:
        raise ValueError(f"no training slices with more than {settings.min_tumour_voxels} tumour voxels")
    train_data = SliceDataset(cache, train_rows, settings.image_size, settings.augment, settings.seed)
    val_data = SliceDataset(cache, val_rows, settings.image_size, False, settings.seed)
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=settings.batch_size, shuffle=False)

    for epoch in range(start, settings.epochs):
        started = time.perf_counter()
        train_data.set_epoch(epoch)
        order = _epoch_order(len(train_data), settings.seed, epoch, settings.samples_per_epoch)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_data, order.tolist()),
            batch_size=settings.batch_size,
            shuffle=False,
            num_workers=settings.loader_workers,
        )
        model.train()
        losses = []
        bar = tqdm(
            loader,
            desc=f"{settings.model} fold {settings.fold} epoch {epoch + 1}/{settings.epochs}",
            disable=not progress,
            unit="batch",
        )
        for images, masks in bar:
            images, masks = images.to(device), masks.to(device)
            optimiser.zero_grad(set_to_none=True)
            try:
                with torch.autocast(device.type, enabled=amp):
                    loss = loss_function(model(images), masks)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            except torch.OutOfMemoryError:
                raise RuntimeError(
                    f"out of memory at batch size {settings.batch_size} on {device}; try a smaller batch_size"
                ) from None
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_loss, val_dice = _validate(model, val_loader, loss_function, device, amp)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_dice": val_dice,
                "seconds": time.perf_counter() - started,
            }
        )
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "history": history,
            "settings": wanted,
        }
        with atomic_path(checkpoint_file) as tmp:
            torch.save(state, tmp)
        with atomic_path(run_dir / "history.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    return pd.DataFrame(history)


@torch.inference_mode()
def _validate(model, loader, loss_function, device, amp) -> tuple[float, float]:
    """Mean loss and Dice pooled over all validation samples (NaN when there are none)."""
    model.eval()
    losses, numerator, denominator = [], 0.0, 0.0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        losses.append(loss_function(logits.float(), masks).item())
        tp2, total = dice_score(logits, masks)
        numerator, denominator = numerator + tp2, denominator + total
    if not losses:
        return float("nan"), float("nan")
    return float(np.mean(losses)), (numerator / denominator if denominator else 1.0)
