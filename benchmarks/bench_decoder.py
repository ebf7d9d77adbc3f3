"""Time per training step of the smoke U-Net with other decoders, on this machine's precision.

The smoke set's crops are small (64 pixels): there the encoder's last stage (512 channels at
2 x 2) and a wide decoder cost most of a step while adding little the model can use. Each
variant is timed in interleaved rounds (so a machine's slow spell hits every variant alike)
and reported against smp's default decoder, measured in the same run.

    .venv/bin/python benchmarks/bench_decoder.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _record import record, use_threads

from mstt_lib.models import DECODER_CHANNELS, build_model
from mstt_lib.train import _layout, _Loss, adam, mixed_precision

VARIANTS = {
    "smp default (5 stages)": DECODER_CHANNELS,
    "4 stages, half width": (128, 64, 32, 16),
    "4 stages, quarter width": (64, 32, 16, 8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    use_threads(args.threads)
    device = torch.device("cpu")
    precision = mixed_precision(device)
    amp = precision is not None
    images = torch.rand(args.batch, args.channels, args.size, args.size)
    masks = (torch.rand(args.batch, 1, args.size, args.size) > 0.9).float()
    loss_function = _Loss("dice_bce")
    setups = {}
    for name, decoder in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model("unet", args.channels, args.encoder, decoder_channels=decoder).train()
        if amp:
            model.to(memory_format=torch.channels_last)
        setups[name] = (model, adam(model.parameters(), 1e-3, device))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}

    def step(model, optimiser):
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=precision, enabled=amp):
            loss = loss_function(model(_layout(images, amp)).float(), masks)
        loss.backward()
        optimiser.step()

    for setup in setups.values():
        step(*setup)  # warm-up: one-off kernel choices
    for _ in range(args.rounds):
        for name, setup in setups.items():
            for _ in range(args.steps):
                started = time.perf_counter()
                step(*setup)
                times[name].append(time.perf_counter() - started)
    default = statistics.median(times["smp default (5 stages)"])
    rows = []
    for name, decoder in VARIANTS.items():
        model = setups[name][0]
        used = sum(p.numel() for n, p in model.named_parameters() if p.grad is not None)
        median = statistics.median(times[name])
        line = (
            f"{median * 1000:.0f} ms per step ({default / median:.2f} x the default's speed); "
            f"{used / 1e6:.1f} M trained parameters"
        )
        print(f"{name} {list(decoder)}: {line}", flush=True)
        rows.append((f"{name} {list(decoder)}", line, ""))
    record(
        f"U-Net decoders at the smoke crop ({args.encoder}, {args.channels} x {args.size} x {args.size}, "
        f"batch {args.batch}, {str(precision or torch.float32).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} torch threads)",
        rows,
    )


if __name__ == "__main__":
    main()
