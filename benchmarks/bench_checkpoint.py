"""What a training checkpoint costs beside the epoch it follows (smoke U-Net, real-data chapter).

A checkpoint holds the model and Adam's two moments: for the smoke set's resnet18 U-Net about
170 MB. Its write (to a temporary file, then renamed, as ``train`` does) is timed against one
epoch of the real-data smoke runs (32 steps of batch 8 at 64 x 64, 3 channels, bfloat16); the
ratio is why ``train.CHECKPOINT_SECONDS`` spaces checkpoints out instead of writing one per epoch.

    .venv/bin/python benchmarks/bench_checkpoint.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from _record import record

from mstt_lib.io import atomic_path
from mstt_lib.models import build_model
from mstt_lib.train import _Loss, adam, mixed_precision


def main() -> None:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("unet", 3, "resnet18")
    optimiser = adam(model.parameters(), 1e-3, device)
    precision = mixed_precision(device)
    loss_function = _Loss("dice_bce")
    images = torch.rand(8, 3, 64, 64)
    masks = (torch.rand(8, 1, 64, 64) > 0.8).float()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
            loss = loss_function(model(images).float(), masks)
        loss.backward()
        optimiser.step()

    for _ in range(3):  # warm-up
        step()
    started = time.perf_counter()
    for _ in range(32):
        step()
    epoch = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "checkpoint.pt"
        state = {"model": model.state_dict(), "optimiser": optimiser.state_dict()}
        writes = []
        for _ in range(5):
            started = time.perf_counter()
            with atomic_path(target) as tmp:
                torch.save(state, tmp)
            writes.append(time.perf_counter() - started)
        size = target.stat().st_size / 2**20
    write = statistics.median(writes)
    record(
        "Training checkpoint against an epoch (smoke U-Net, 3 channels, 2 torch threads)",
        [
            ("checkpoint size (model + Adam state)", f"{size:.0f} MiB", ""),
            ("checkpoint write, median of 5", f"{write:.2f} s", ""),
            ("epoch of 32 steps (batch 8, 64 x 64)", f"{epoch:.2f} s", ""),
            ("one checkpoint per epoch: share of the training time", f"{write / (epoch + write):.1%}", ""),
        ],
    )


if __name__ == "__main__":
    main()
