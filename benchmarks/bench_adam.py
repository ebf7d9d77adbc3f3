"""Time per training step of the smoke set's U-Net with Adam's three implementations
(parameter by parameter, ``foreach``, ``fused``), and how far their weights drift apart.

The smoke set's real-data shapes: 3 channels, 64-pixel crops, batch 8, resnet18, the autocast
type training uses on this machine. The variants alternate in rounds, so the machine's load
falls on all of them alike; the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _record import record, use_threads

from mstt_lib.models import build_model
from mstt_lib.train import mixed_precision

VARIANTS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def trainer(options: dict, precision: torch.dtype | None):
    """A model, its optimiser and one training step on fixed random data."""
    torch.manual_seed(0)
    model = build_model("unet", 3, "resnet18", None, "tile")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 64, 64, generator=generator)
    masks = (torch.rand(8, 1, 64, 64, generator=generator) > 0.8).float()

    def step():
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            logits = model(images).float()
        torch.nn.functional.binary_cross_entropy_with_logits(logits, masks).backward()
        optimiser.step()

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    use_threads(args.threads)
    precision = mixed_precision(torch.device("cpu"))
    trainers = {name: trainer(options, precision) for name, options in VARIANTS.items()}
    for _, step in trainers.values():
        step()  # one-off set-up costs
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (_, step) in trainers.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - started) / args.steps)
    per_step = {name: float(np.median(times)) for name, times in seconds.items()}
    # One step from the same start: the updates agree to rounding. (Later steps drift apart, as
    # any change of summation order makes them: Adam's first steps are nearly sign(gradient).)
    once = {name: trainer(options, precision) for name, options in VARIANTS.items()}
    for _, step in once.values():
        step()
    reference = dict(once["single"][0].named_parameters())
    drift = {}
    for name, (model, _) in once.items():
        drift[name] = max((p - reference[k]).abs().max().item() for k, p in model.named_parameters())
    rows = [(f"{name}: ms per step", f"{1000 * per_step[name]:.1f}", "") for name in VARIANTS]
    rows += [
        (f"{name}: time against single", f"{per_step[name] / per_step['single']:.2f}", "< 1 to adopt")
        for name in ("foreach", "fused")
    ]
    rows += [
        (f"{name}: largest weight difference from single after one step", f"{drift[name]:.1e}", "rounding")
        for name in ("foreach", "fused")
    ]
    precision_name = str(precision).replace("torch.", "") if precision else "float32"
    record(
        f"Adam implementations, smoke U-Net step (3 x 64 x 64, batch 8, {precision_name}, "
        f"{torch.get_num_threads()} torch threads)",
        rows,
    )


if __name__ == "__main__":
    main()
