"""Training one model on one fold (paper, section 3 and Appendix A).

Binary cross-entropy on logits (the paper's eq. 1; ``loss="dice_bce"`` adds soft
Dice pooled over the batch, ``"slice_dice_bce"`` soft Dice per tumour slice), Adam, the
Appendix A augmentations, 2.5D samples from the slice cache.

The paper trains on tumour slices only, at a constant learning rate, and keeps the
last weights. Beyond it (the ``smoke`` and ``best`` recipes):

- ``foreground_fraction``: a sample is a tumour slice with this probability and
  otherwise any slice of the training cases, as nnU-Net oversamples foreground
  patches; inference sees every slice, so the model must learn to leave tumour-free
  slices empty;
- ``schedule="poly"``: nnU-Net's polynomial decay of the learning rate over the
  run's optimizer steps;
- ``keep="best"``: the weights of the epoch with the best validation Dice;
- ``train_minutes``: a wall-clock budget; the number of epochs follows from the
  measured speed of a few steps, is measured again on the whole first epoch (a few
  steps misjudged it by half either way beside another process on a 2-core machine)
  and is recorded in ``budget.json``.

A run
writes its own folder: ``params.json``, ``preprocessing.json`` (how its samples were
made, for the predictor), ``checkpoint.pt`` (with the optimiser: after the first epoch, then
after an epoch once ``CHECKPOINT_SECONDS`` have passed since the last one, and after the last),
``history.csv`` (loss and validation Dice per epoch, beside each checkpoint) and, at
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

from mstt_lib.devices import cpu_bfloat16, resolve_device
from mstt_lib.io import atomic_path
from mstt_lib.models import DECODER_CHANNELS, build_model
from mstt_lib.slices import PLANES, SliceCache

__all__ = [
    "TrainSettings",
    "augmentations",
    "SliceDataset",
    "resolve_device",
    "mixed_precision",
    "precision_name",
    "adam",
    "sample_rows",
    "describe_sampling",
    "train",
    "training_speed",
    "dice_score",
    "LOSSES",
    "weights_record",
    "CHECKPOINT_SECONDS",
]

CHECKPOINT_SECONDS = 60.0
"""Training lost to an interruption, at most (plus an epoch). A checkpoint of the smoke U-Net
with its Adam state is 164 MiB: written after each of its 5-second epochs it took 9 % of the
training time on 2 cores (``benchmarks/bench_checkpoint.py``)."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on; saved as the run's ``params.json``."""

    model: str = "unet"
    fold: int | None = 0  # None: the run on every case
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    encoder: str = "se_resnext50_32x4d"
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS  # U-Net only; their number is the depth
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
    foreground_fraction: float | None = None  # None: tumour slices only (the paper)
    schedule: str = "constant"  # "constant" (the paper) or "poly"
    keep: str = "last"  # "last" (the paper) or "best" (validation Dice)
    train_minutes: float | None = None  # a wall-clock budget that sets the epochs
    first_conv: str = "tile"  # 6-channel first convolution: "tile" ImageNet filters or "random"
    norm: str = "batch"  # the U-Net's normalisation: "batch" (smp's) or "instance" (nnU-Net's)

    def steps_per_epoch(self, n_samples: int) -> int:
        """Optimizer steps in one epoch of ``n_samples`` available training samples."""
        samples = self.samples_per_epoch or n_samples
        return max(1, -(-samples // self.batch_size))


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

    def __init__(
        self,
        cache: SliceCache,
        rows: pd.DataFrame,
        size: int,
        augment: bool,
        seed: int = 0,
        resize: bool = False,
    ):
        self.cache = cache
        # A fixed-input model (LiteMedSAM) sees each slice resized to size x size, as at
        # inference (``mstt_lib.infer``); the U-Net sees crops at the slice's own scale.
        self.resize = resize
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
        if self.resize:
            image, mask = self.cache.sample(case_id, plane, int(index), None)
            image, mask = _resized(image, mask, self.size)
            if self.transform is not None:
                self.transform.set_random_seed(
                    int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])
                )
                out = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0)), mask=mask)
                image, mask = out["image"].transpose(2, 0, 1), out["mask"]
        elif self.transform is None:
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


def _resized(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (C, H, W) sample bilinearly and its mask by nearest neighbour to (size, size)."""
    import torch.nn.functional as F

    image_t = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
        (size, size),
        mode="bilinear",
        align_corners=False,
    )[0]
    mask_t = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None], (size, size), mode="nearest"
    )[0, 0]
    return image_t.numpy(), mask_t.numpy().astype(np.uint8)


def mixed_precision(device: torch.device) -> torch.dtype | None:
    """The autocast type training uses: float16 on CUDA, bfloat16 on CPUs with native bfloat16
    (AVX512-BF16 or AMX; measured 1.8x faster for the smoke U-Net on 2 cores,
    benchmarks/results.md), else None (float32)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bfloat16():
        return torch.bfloat16
    return None


def precision_name(device: torch.device) -> str:
    """The training precision as ``run.json`` and the book's captions name it ("bfloat16", "float32")."""
    return str(mixed_precision(device) or torch.float32).removeprefix("torch.")


def adam(parameters, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam, fused into one kernel on the CPU and CUDA: the same update (to rounding), and about
    a fifth less time per step of the smoke U-Net on 2 CPU cores (``benchmarks/bench_adam.py``)
    than the default, which updates parameter by parameter."""
    return torch.optim.Adam(parameters, lr=lr, fused=device.type in ("cpu", "cuda"))


def _layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def dice_score(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(2 TP, TP + FP + TP + FN) of thresholded logits, to pool Dice over batches."""
    prediction = logits > 0
    truth = target > 0.5
    tp = (prediction & truth).sum().item()
    return 2.0 * tp, float(prediction.sum().item() + truth.sum().item())


# Each loss and how the book names it.
LOSSES = {
    "bce": "binary cross-entropy",
    "dice_bce": "batch Dice + BCE",
    "slice_dice_bce": "Dice per tumour slice + BCE",
}


class _Loss(nn.Module):
    """BCE, plus soft Dice pooled over the batch (``dice_bce``: nnU-Net's batch Dice) or
    averaged over the batch's tumour slices (``slice_dice_bce``).

    Batch Dice weighs each tumour by its voxels, so a slice of a small tumour counts little
    beside one of a large tumour, and longer training lost the small real tumours. Slice
    Dice gives every tumour slice the same weight. Tumour-free slices take no Dice term in
    either: a Dice of their own would be 0 or 1 whatever the model does; batch Dice adds
    their false positives to the pooled sum, slice Dice leaves them to BCE.
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
        self.kind = kind
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits, target):
        loss = self.bce(logits, target)
        if self.kind == "dice_bce":
            probability = torch.sigmoid(logits)
            intersection = (probability * target).sum()
            total = probability.sum() + target.sum()
            loss = loss + 1 - (2 * intersection + 1) / (total + 1)
        elif self.kind == "slice_dice_bce":
            probability = torch.sigmoid(logits)
            pixels = tuple(range(1, target.ndim))
            tumour = target.sum(pixels) > 0
            if tumour.any():
                intersection = (probability * target).sum(pixels)[tumour]
                total = (probability.sum(pixels) + target.sum(pixels))[tumour]
                loss = loss + (1 - (2 * intersection + 1) / (total + 1)).mean()
        return loss


def _settings_json(settings: TrainSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def _fold_name(fold: int | None) -> str:
    return "all cases" if fold is None else f"fold {fold}"


def _epoch_order(n: int, seed: int, epoch: int, limit: int | None) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order if limit is None else order[:limit]


def sample_rows(
    rows: pd.DataFrame,
    min_tumour_voxels: int,
    foreground_fraction: float | None,
    count: int | None,
    seed: int,
    epoch: int,
) -> pd.DataFrame:
    """The slices of one epoch, drawn reproducibly from (seed, epoch).

    ``foreground_fraction`` None keeps the paper's rule: tumour slices only (more than
    ``min_tumour_voxels``), each once per epoch in a shuffled order (``count`` of them
    when given). A fraction ``p`` draws ``count`` slices (default: as many as there are
    tumour slices), each a tumour slice with probability ``p`` and otherwise any slice.
    """
    rows = rows.reset_index(drop=True)
    tumour = np.flatnonzero(rows["tumour_voxels"].to_numpy() > min_tumour_voxels)
    if tumour.size == 0:
        raise ValueError(f"no training slices with more than {min_tumour_voxels} tumour voxels")
    if foreground_fraction is None:
        return rows.iloc[tumour[_epoch_order(tumour.size, seed, epoch, count)]].reset_index(drop=True)
    if not 0.0 <= foreground_fraction <= 1.0:
        raise ValueError(f"foreground_fraction should lie in [0, 1], got {foreground_fraction}")
    count = count or tumour.size
    rng = np.random.default_rng([seed, epoch, 1])
    from_tumour = rng.random(count) < foreground_fraction
    picks = np.where(
        from_tumour, tumour[rng.integers(0, tumour.size, count)], rng.integers(0, len(rows), count)
    )
    return rows.iloc[picks].reset_index(drop=True)


def describe_sampling(tumour_share: float, foreground_fraction: float | None) -> str:
    """What ``sample_rows`` trains on, in a sentence for chapter 3: the paper's rule (tumour
    slices only) or oversampling, with the share of tumour slices a draw gives on average,
    ``p + (1 - p) * tumour_share`` (a tumour slice with probability p, else any slice)."""
    if foreground_fraction is None:
        return (
            "This set trains on tumour slices only (the paper's rule): "
            f"{tumour_share:.0%} of all slices, every tumour-free one left out."
        )
    drawn = foreground_fraction + (1 - foreground_fraction) * tumour_share
    return (
        f"This set draws each training sample from the tumour slices with probability "
        f"{foreground_fraction:g}, else from any slice: tumour slices are {tumour_share:.0%} of "
        f"all slices and about {drawn:.0%} of the samples, tumour-free ones the other {1 - drawn:.0%}."
    )


def train(
    settings: TrainSettings,
    cache: SliceCache,
    train_cases: list[str],
    val_cases: list[str],
    run_dir: str | os.PathLike,
    progress: bool = True,
) -> pd.DataFrame:
    """Train (or resume) one run into ``run_dir``; returns the per-epoch history."""
    from mstt_lib.distributed import current_world

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Among torchrun's processes (mstt_lib.distributed): only rank 0 writes files.
    world = current_world()
    progress = progress and world.main
    device = world.place(resolve_device(settings.device))
    if settings.schedule not in ("constant", "poly"):
        raise ValueError(f"unknown schedule {settings.schedule!r}; choose 'constant' or 'poly'")
    if settings.keep not in ("last", "best"):
        raise ValueError(f"keep should be 'last' or 'best', got {settings.keep!r}")
    params_file = run_dir / "params.json"
    wanted = _settings_json(settings)
    # More epochs continue a run at a constant rate; a schedule is fixed by its length.
    free = {"epochs"} if settings.schedule == "constant" and settings.train_minutes is None else set()
    if params_file.is_file():
        previous = json.loads(params_file.read_text())
        defaults = _settings_json(TrainSettings())  # a setting newer than the run: it had the default
        different = {k for k in wanted if k not in free and previous.get(k, defaults[k]) != wanted[k]}
        if different:
            raise ValueError(
                f"{run_dir} holds a run with other parameters {sorted(different)}; use another folder"
            )
    world.barrier()  # every process has compared params.json before rank 0 rewrites it
    if world.main:
        with atomic_path(params_file) as tmp:
            tmp.write_text(json.dumps(wanted, indent=1))
        # What a predictor needs to prepare new images the way this run saw them.
        with atomic_path(run_dir / "preprocessing.json") as tmp:
            preprocessing = {**cache.manifest["settings"], "channels": cache.manifest["channels"]}
            tmp.write_text(json.dumps(preprocessing, indent=1))

    torch.manual_seed(settings.seed)
    model = build_model(
        settings.model,
        len(cache.manifest["channels"]),
        settings.encoder,
        settings.weights,
        settings.first_conv,
        settings.decoder_channels,
        settings.norm,
    )
    model.to(device)
    optimiser = adam(model.parameters(), settings.lr, device)
    precision = mixed_precision(device)
    amp = precision is not None
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    if amp:
        model.to(memory_format=torch.channels_last)
    loss_function = _Loss(settings.loss)

    planes = tuple(settings.planes)
    all_train = cache.select(train_cases, planes, None)
    val_rows = (
        sample_rows(
            cache.select(val_cases, planes, None),
            settings.min_tumour_voxels,
            settings.foreground_fraction,
            settings.val_samples,
            settings.seed,
            999_999,
        )
        if val_cases
        else all_train.iloc[:0]
    )
    resize = settings.model == "litemedsam"
    train_data = SliceDataset(cache, all_train, settings.image_size, settings.augment, settings.seed, resize)
    val_data = SliceDataset(cache, val_rows, settings.image_size, False, settings.seed, resize)
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=settings.batch_size, shuffle=False)
    n_tumour = int((all_train["tumour_voxels"] > settings.min_tumour_voxels).sum())
    if n_tumour == 0:
        raise ValueError(f"no training slices with more than {settings.min_tumour_voxels} tumour voxels")
    steps_per_epoch = settings.steps_per_epoch(n_tumour)
    position = {key: i for i, key in enumerate(train_data.rows)}

    def epoch_loader(epoch: int):
        rows = sample_rows(
            all_train,
            settings.min_tumour_voxels,
            settings.foreground_fraction,
            settings.samples_per_epoch,
            settings.seed,
            epoch,
        )
        keys = rows[["case_id", "plane", "index"]].itertuples(index=False, name=None)
        return world.loader(
            torch.utils.data.Subset(train_data, [position[k] for k in keys]),
            settings.batch_size,
            settings.loader_workers,
        )

    history: list[dict] = []
    start, best = 0, {"dice": -1.0, "epoch": 0}
    checkpoint_file = run_dir / "checkpoint.pt"
    budget_file = run_dir / "budget.json"
    if checkpoint_file.is_file():
        state = torch.load(checkpoint_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scaler.load_state_dict(state["scaler"])
        history = state["history"]
        start = state["epoch"] + 1
        best = state.get("best", best)
    epochs = settings.epochs
    if settings.train_minutes is not None:
        if budget_file.is_file():  # a resumed run keeps the length it was given
            epochs = json.loads(budget_file.read_text())["epochs"]
        else:
            step_seconds = _time_steps(
                model, optimiser, epoch_loader(0), loss_function, device, precision=precision
            )
            # Validation passes cost about a third of a training step per batch.
            epoch_seconds = step_seconds * (steps_per_epoch + len(val_loader) / 3)
            epochs = world.agree(_epochs_within(settings.train_minutes, epoch_seconds))
            _write_budget(
                budget_file,
                world,
                train_minutes=settings.train_minutes,
                step_seconds=step_seconds,
                steps_per_epoch=steps_per_epoch,
                epochs=epochs,
            )
    total_steps = epochs * steps_per_epoch
    world.barrier()  # a resumed run: every process has read the checkpoint before it is rewritten
    trained = world.wrap(model, device)  # the model itself in one process

    saved = None  # when this process last wrote a checkpoint
    epoch = start - 1
    while epoch + 1 < epochs:  # a minutes budget may change ``epochs`` after the first epoch
        epoch += 1
        started = time.perf_counter()
        train_data.set_epoch(epoch)
        model.train()
        losses = []
        bar = tqdm(
            epoch_loader(epoch),
            desc=f"{settings.model} {_fold_name(settings.fold)} epoch {epoch + 1}/{epochs}",
            disable=not progress,
            unit="batch",
        )
        for step, (images, masks) in enumerate(bar, start=epoch * steps_per_epoch):
            if settings.schedule == "poly":
                for group in optimiser.param_groups:
                    group["lr"] = settings.lr * (1 - step / total_steps) ** 0.9
            images, masks = images.to(device), masks.to(device)
            optimiser.zero_grad(set_to_none=True)
            try:
                with torch.autocast(device.type, dtype=precision, enabled=amp):
                    loss = loss_function(trained(_layout(images, amp)).float(), masks)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            except torch.OutOfMemoryError:
                raise RuntimeError(
                    f"out of memory at batch size {settings.batch_size} on {device}; try a smaller batch_size"
                ) from None
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_loss, val_dice = _validate(model, val_loader, loss_function, device, precision)
        history.append(
            {
                "epoch": epoch + 1,
                "steps": (epoch + 1) * steps_per_epoch,
                "train_loss": world.mean(float(np.mean(losses))),
                "val_loss": val_loss,
                "val_dice": val_dice,
                "seconds": time.perf_counter() - started,
            }
        )
        if epoch == 0 and settings.train_minutes is not None:
            # The whole first epoch (set-up costs included, so it errs short) is a truer
            # measure than the few steps timed before it.
            epochs = world.agree(_epochs_within(settings.train_minutes, history[-1]["seconds"]))
            total_steps = epochs * steps_per_epoch
            _write_budget(budget_file, world, first_epoch_seconds=history[-1]["seconds"], epochs=epochs)
        if settings.keep == "best" and not val_dice <= best["dice"]:  # NaN (no validation) counts as best
            best = {"dice": val_dice, "epoch": epoch + 1}
            if world.main:
                with atomic_path(run_dir / "best.pt") as tmp:
                    torch.save(model.state_dict(), tmp)
        due = saved is None or epoch == epochs - 1 or time.perf_counter() - saved >= CHECKPOINT_SECONDS
        if world.main and due:
            state = {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "history": history,
                "settings": wanted,
                "best": best,
            }
            with atomic_path(checkpoint_file) as tmp:
                torch.save(state, tmp)
            with atomic_path(run_dir / "history.csv") as tmp:
                pd.DataFrame(history).to_csv(tmp, index=False)
        if due:
            saved = time.perf_counter()
    world.barrier()  # rank 0's last files are written before the others return
    if not world.main:
        return pd.DataFrame(history)
    final = model.state_dict()
    if settings.keep == "best" and (run_dir / "best.pt").is_file():
        final = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save(final, tmp)
    _write_run_record(run_dir, settings, history, epochs, steps_per_epoch, device, best)
    if world.size > 1:
        _record_processes(run_dir, world.size)
    return pd.DataFrame(history)


def _epochs_within(minutes: float, epoch_seconds: float) -> int:
    """The whole epochs a budget of ``minutes`` holds (at least one)."""
    return max(1, int(minutes * 60 // epoch_seconds))


def _write_budget(budget_file: Path, world, **values) -> None:
    """``budget.json`` (what a minutes budget bought, read back by a resumed run), its
    earlier values kept unless ``values`` replaces them."""
    if world.main:
        earlier = json.loads(budget_file.read_text()) if budget_file.is_file() else {}
        with atomic_path(budget_file) as tmp:
            tmp.write_text(json.dumps({**earlier, **values}, indent=1))


def _record_processes(run_dir: Path, processes: int) -> None:
    """``run.json`` of a data-parallel run names its number of processes (``mstt_lib.distributed``)."""
    record = json.loads((run_dir / "run.json").read_text())
    record["processes"] = processes
    with atomic_path(run_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def _time_steps(model, optimiser, loader, loss_function, device, steps: int = 4, precision=None) -> float:
    """Seconds per training step (data loading included), measured on a copy of the model
    and optimiser so the run itself starts untouched."""
    import copy

    model_copy, optimiser_copy = copy.deepcopy(model), copy.deepcopy(optimiser)
    model_copy.train()
    times, batches = [], iter(loader)
    for _ in range(steps):
        started = time.perf_counter()
        try:
            images, masks = next(batches)
        except StopIteration:
            break
        optimiser_copy.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = model_copy(_layout(images.to(device), precision is not None)).float()
        loss_function(logits, masks.to(device)).backward()
        optimiser_copy.step()
        times.append(time.perf_counter() - started)
    later = times[1:] or times  # the first step pays one-off set-up costs
    return float(np.median(later))


def training_speed(
    model: nn.Module, channels: int, size: int, batch_size: int = 2, device: str = "cpu", steps: int = 2
) -> float:
    """Training samples per second of ``model`` on random (channels, size, size) inputs: what a
    budget buys on this machine. The model is trained on a copy, so it comes back unchanged."""
    import copy

    device = resolve_device(device)
    precision = mixed_precision(device)
    model_copy = copy.deepcopy(model).to(device).train()
    if precision is not None:
        model_copy.to(memory_format=torch.channels_last)
    images = torch.rand(batch_size, channels, size, size, device=device)
    masks = (torch.rand(batch_size, 1, size, size, device=device) > 0.9).float()
    loader = [(images, masks)] * (steps + 1)
    optimiser = adam(model_copy.parameters(), 1e-3, device)
    return batch_size / _time_steps(model_copy, optimiser, loader, _Loss("bce"), device, steps + 1, precision)


def weights_record(weights: str | None, encoder: str | None = None) -> dict:
    """What a run started from: a file with its SHA-256, or random initialisation."""
    if weights is None:
        return {"weights": "random initialisation", "weights_sha256": None}
    import hashlib

    if weights == "imagenet":
        from mstt_lib.models import imagenet_weights_file

        weights = str(imagenet_weights_file(encoder))

    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"weights": str(weights), "weights_sha256": digest.hexdigest()}


def _write_run_record(run_dir, settings, history, epochs, steps_per_epoch, device, best) -> None:
    """``run.json``: the budget a run actually had (steps, minutes, device) and its weights."""
    record = {
        "model": settings.model,
        "encoder": settings.encoder if settings.model == "unet" else None,
        **weights_record(settings.weights, settings.encoder),
        "first_conv": settings.first_conv if settings.model == "unet" else None,
        "decoder_channels": list(settings.decoder_channels) if settings.model == "unet" else None,
        "norm": settings.norm if settings.model == "unet" else None,
        "epochs": epochs,
        "steps": epochs * steps_per_epoch,
        "batch_size": settings.batch_size,
        "samples_seen": epochs * steps_per_epoch * settings.batch_size,
        "train_minutes_budget": settings.train_minutes,
        "train_minutes": round(sum(h["seconds"] for h in history) / 60, 2),
        "device": device.type if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "precision": precision_name(device),
        "kept": settings.keep if settings.keep == "last" else f"best (epoch {best['epoch']})",
        "torch": torch.__version__,
    }
    with atomic_path(Path(run_dir) / "run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


@torch.inference_mode()
def _validate(model, loader, loss_function, device, precision) -> tuple[float, float]:
    """Mean loss and Dice pooled over all validation samples (NaN when there are none)."""
    model.eval()
    losses, numerator, denominator = [], 0.0, 0.0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
            logits = model(_layout(images, precision is not None))
        losses.append(loss_function(logits.float(), masks).item())
        tp2, total = dice_score(logits, masks)
        numerator, denominator = numerator + tp2, denominator + total
    if not losses:
        return float("nan"), float("nan")
    return float(np.mean(losses)), (numerator / denominator if denominator else 1.0)
