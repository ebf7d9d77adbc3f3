"""Data-parallel training of one run over several processes: torch.distributed, launched by torchrun.

``torchrun --nproc_per_node N -m mstt_lib.launch --params SET --model unet --fold 0`` trains
one (model, fold) run of a parameter set with N processes (one per GPU; on CPUs the gloo
backend), or ``python -m mstt_lib.launch --devices N ...`` starts torchrun itself
(``mstt_lib.launch``, the command line, sits above the stages; this module below them).
``mstt_lib.train.train`` asks ``current_world()`` who it is:

- each optimizer step's global batch (``batch_size``) is split over the processes by a
  ``DistributedSampler`` (``batch_size`` must be a multiple of N), gradients are averaged
  by ``DistributedDataParallel`` and batch normalisation uses the statistics of the global
  batch (``GlobalBatchNorm2d``), so a step equals the single-process step on the same
  samples up to floating-point summation order;
- the sample order and augmentations stay those of one process (seeded per sample);
- only rank 0 writes (params, checkpoints, history, model, run record); every rank reads
  the same checkpoint on resume, and a minutes budget is rank 0's measurement.

Equality with one process holds for the mean-over-samples losses (``bce``); the Dice terms
(``dice_bce``, ``slice_dice_bce``) are computed per process, and an epoch whose samples are
not a multiple of the global batch ends with a batch that the sampler pads with repeated samples. Tolerance
(tests/test_cluster.py): two float64 steps' weights and gradients within 1e-8 of each tensor's
largest value; 12 bfloat16 steps' losses within 1% and validation Dice within 0.02.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["World", "current_world", "GlobalBatchNorm2d", "init_process_group", "launch_command"]


class _SummedOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes, and of its gradient on the way back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation over the global batch of all processes, on any device.

    ``nn.SyncBatchNorm`` does this on GPUs only; here the per-channel sums travel by the
    sum over processes (and of the gradients back), so the gloo backend on CPUs gets it too. Outside training,
    or in one process, it is ``nn.BatchNorm2d``; its state (and so a checkpoint) is the same.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        if dist.get_world_size() == 1:
            return super().forward(input)
        all_reduce = _SummedOverProcesses.apply
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # half precision sums in float32
        dims = (0, 2, 3)
        count = all_reduce(x.new_full((1,), x.numel() / x.shape[1]))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        variance = all_reduce((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = variance * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(factor * mean)
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        y = centred * torch.rsqrt(variance + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(input.dtype)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and shows progress."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this process: its own GPU (``LOCAL_RANK``) among several."""
        if self.size > 1 and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def loader(
        self, dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0
    ) -> torch.utils.data.DataLoader:
        """Batches of ``batch_size`` samples in order; among N processes each gets every N-th
        sample of each global batch (``DistributedSampler``), ``batch_size / N`` per step."""
        if self.size == 1:
            return torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers
            )
        if batch_size % self.size:
            raise ValueError(
                f"batch_size {batch_size} cannot be split over {self.size} processes; "
                f"use a multiple of {self.size}"
            )
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=self.size, rank=self.rank, shuffle=False, drop_last=False
        )
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size // self.size, sampler=sampler, num_workers=num_workers
        )

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model to train: itself, or among several processes its DDP wrapper with
        global batch normalisation (the model's own modules, changed in place)."""
        if self.size == 1:
            return model
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = GlobalBatchNorm2d
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes (each process's mean of its own batches)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (e.g. the epochs a minutes budget buys)."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def current_world() -> World:
    """The process group this process belongs to (``torchrun`` started it), or one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(device: str) -> World:
    """Join the group torchrun describes in the environment (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current_world()
    cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    return current_world()


def launch_command(devices: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command that trains ``argv``'s run with ``devices`` processes on this node."""
    return [
        sys.executable,
        "-c",
        "from mstt_lib.distributed import torchrun; torchrun()",
        "--standalone",
        f"--nproc_per_node={devices}",
        f"--log-dir={os.devnull}",  # else torchrun leaves a torchelastic_* folder in /tmp per launch
        "-m",
        "mstt_lib.launch",
        *argv,
    ]


def torchrun() -> None:
    """torchrun (``torch.distributed.run``) as ``launch --devices`` starts it: stopped, it ends
    with exit status 128 + the signal, not with its SignalException traceback; the launcher
    reports the stop in one line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(sys.argv[1:])
    except SignalException as stop:
        raise SystemExit(128 + int(stop.sigval)) from None
