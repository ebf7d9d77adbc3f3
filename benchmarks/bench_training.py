"""Training throughput and peak memory of both models on this machine, and the data loader's
throughput beside what the model consumes (target: at least 3 times).

CPU at batch 4 and 16 (U-Net with the paper's se_resnext50_32x4d encoder and the smoke
set's resnet18; LiteMedSAM); on a GPU, if one is present, the same with the `paper`
settings and the GPU named.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _record import PeakMemory, record
from bench_preprocessing import _case_files

from mstt_lib.models import build_model
from mstt_lib.phantom import PhantomSettings
from mstt_lib.slices import SliceCache, build_cache
from mstt_lib.train import SliceDataset


def model_rate(name: str, encoder: str, batch: int, device: torch.device, steps: int) -> tuple[float, float]:
    """(samples per second, peak GiB) of training steps on random 6 x 256 x 256 batches."""
    torch.manual_seed(0)
    model = build_model(name, 6, encoder).to(device)
    optimiser = torch.optim.Adam(model.parameters(), 1e-4)
    images = torch.rand(batch, 6, 256, 256, device=device)
    masks = (torch.rand(batch, 1, 256, 256, device=device) > 0.5).float()
    amp = device.type == "cuda"

    def step():
        optimiser.zero_grad()
        with torch.autocast(device.type, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images).float(), masks)
        loss.backward()
        optimiser.step()

    step()  # warm-up
    if amp:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as memory:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if amp:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if amp else memory.peak_gib
    return batch * steps / seconds, peak


def loader_rate(cache: SliceCache, workers: int, batches: int = 12) -> float:
    rows = cache.select(min_tumour_voxels=100)
    data = SliceDataset(cache, rows, 256, augment=True, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # start-up of the workers is not throughput
    started = time.perf_counter()
    count = 0
    for _ in range(batches):
        images, _ = next(iterator)
        count += len(images)
    return count / (time.perf_counter() - started)


def _isolated(name: str, encoder: str, batch: int, steps: int) -> tuple[float, float] | None:
    """Run one configuration in its own process: an out-of-memory kill is then a result, not a crash."""
    command = [sys.executable, __file__, "--one", name, encoder, str(batch), "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    rate, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "ENCODER", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, encoder, batch = args.one
        print(json.dumps(model_rate(name, encoder, int(batch), torch.device("cpu"), args.steps)))
        return
    rows = []
    consumption = {}
    for name, encoder in (("unet", "resnet18"), ("unet", "se_resnext50_32x4d"), ("litemedsam", "-")):
        for batch in (4, 16):
            label = f"{name}" + (f" ({encoder})" if name == "unet" else "")
            result = _isolated(name, encoder, batch, args.steps)
            if result is None:
                rows.append(
                    (f"CPU training, {label}, batch {batch}", "did not finish: killed (out of memory)", "")
                )
                continue
            rate, peak = result
            rows.append(
                (f"CPU training, {label}, batch {batch}", f"{rate:.2f} samples/s (peak {peak:.2f} GiB)", "")
            )
            consumption[(label, batch)] = rate
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cases = [_case_files(folder / "in", PhantomSettings(), i) for i in range(4)]
        cache = SliceCache(build_cache(pd.DataFrame(cases), folder / "cache", workers=1, progress=False))
        for workers in (0, 2):
            rate = loader_rate(cache, workers)
            fastest = max(consumption.values())
            rows.append(
                (
                    f"data loader with augmentation, {workers} worker processes",
                    f"{rate:.0f} samples/s = {rate / fastest:.0f} x the fastest CPU model above",
                    "≥ 3 x",
                )
            )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for name, encoder in (("unet", "se_resnext50_32x4d"), ("litemedsam", "-")):
            rate, peak = model_rate(name, encoder, 16, gpu, 10)
            rows.append(
                (
                    f"GPU {torch.cuda.get_device_name()} training, {name}, batch 16 (paper)",
                    f"{rate:.1f} samples/s (peak {peak:.2f} GiB)",
                    "",
                )
            )
    record("Training throughput (CPU" + (", GPU" if torch.cuda.is_available() else "") + ")", rows)


if __name__ == "__main__":
    main()
