"""Float32 against bfloat16 autocast on this CPU: a smoke U-Net training step and a whole-slice
inference pass, and which precision the library chooses here.

oneDNN reports bfloat16 support on every AVX512 CPU, but only AVX512-BF16 and AMX compute it
natively; elsewhere it is emulated. This measures what each costs on the machine at hand, in
interleaved rounds (a slow spell of a shared machine hits both alike), so the library's choice
(``mstt_lib.devices.cpu_bfloat16``) can be checked against the clock.

    .venv/bin/python benchmarks/bench_precision.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import record, use_threads

from mstt_lib.devices import cpu_bfloat16
from mstt_lib.models import build_model
from mstt_lib.params import get_params
from mstt_lib.train import _Loss, adam

PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per precision per round")
    parser.add_argument("--slice", type=int, default=128, help="side of the inference slice (pixels)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    use_threads(args.threads)
    params = get_params("smoke")
    batch, size = params.batch_size, params.image_size
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, size, size) > 0.9).float()
    slices = torch.rand(params.inference_batch_size, 3, args.slice, args.slice)
    slices = slices.contiguous(memory_format=torch.channels_last)
    loss_function = _Loss(params.loss)
    setups = {}
    for name in PRECISIONS:
        torch.manual_seed(0)
        model = build_model("unet", 3, params.encoder, decoder_channels=params.decoder_channels)
        model.to(memory_format=torch.channels_last)
        setups[name] = (model, adam(model.parameters(), params.lr, torch.device("cpu")))

    def train_step(name: str) -> None:
        model, optimiser = setups[name]
        model.train()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
            loss = loss_function(model(images).float(), masks)
        loss.backward()
        optimiser.step()

    def infer_pass(name: str) -> None:
        model = setups[name][0].eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
            model(slices)

    tasks = {"training step": train_step, "inference pass": infer_pass}
    times = {(task, name): [] for task in tasks for name in PRECISIONS}
    for run in tasks.values():
        for name in PRECISIONS:
            run(name)  # warm-up: one-off kernel choices
    for _ in range(args.rounds):
        for task, run in tasks.items():
            for name in PRECISIONS:
                for _ in range(args.steps):
                    started = time.perf_counter()
                    run(name)
                    times[task, name].append(time.perf_counter() - started)
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    rows = [
        ("oneDNN reports bfloat16", str(onednn), ""),
        ("native bfloat16 (AVX512-BF16 or AMX on x86): the library's choice", str(cpu_bfloat16()), ""),
    ]
    shapes = {
        "training step": f"batch {batch} x 3 x {size} x {size}",
        "inference pass": f"{params.inference_batch_size} slices x 3 x {args.slice} x {args.slice}",
    }
    for task in tasks:
        median = {name: statistics.median(times[task, name]) for name in PRECISIONS}
        ratio = median["bfloat16"] / median["float32"]
        line = (
            f"float32 {median['float32'] * 1000:.0f} ms, bfloat16 {median['bfloat16'] * 1000:.0f} ms: "
            f"bfloat16 takes {ratio:.2f} x the float32 time"
        )
        print(f"{task} ({shapes[task]}): {line}", flush=True)
        rows.append((f"{task} ({shapes[task]})", line, "bfloat16 < 1 x only where native"))
    record(
        f"Float32 against bfloat16 autocast on this CPU (smoke U-Net, {torch.get_num_threads()} torch "
        "threads)",
        rows,
    )


if __name__ == "__main__":
    main()
