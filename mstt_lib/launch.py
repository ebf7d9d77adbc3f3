"""``python -m mstt_lib.launch``: train one (model, fold) run of a parameter set, in one process
or as one of torchrun's processes (data parallel, ``mstt_lib.distributed``).

    torchrun --standalone --nproc_per_node 4 -m mstt_lib.launch --params paper --model unet --fold 0
    python -m mstt_lib.launch --params paper --model unet --fold 0 --devices 4   # starts torchrun
    python -m mstt_lib.launch --params smoke -p device cpu --devices 2          # CPUs: gloo

Rank 0 makes the shared stages (registration, preprocessing) first, the others wait; then
every process trains (``pipeline.train_run``), and only rank 0 writes the run's files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import torch.distributed as dist

from mstt_lib.distributed import init_process_group, launch_command

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Train one (model, fold) run of a set, in one process or as one of torchrun's processes;
    ``--devices N`` starts torchrun with N processes."""
    import yaml

    from mstt_lib import pipeline
    from mstt_lib.io import command_errors
    from mstt_lib.params import DEFAULT_SET, PARAMETER_SETS, get_params

    parser = argparse.ArgumentParser(prog="python -m mstt_lib.launch", description=main.__doc__)
    parser.add_argument("--params", default=DEFAULT_SET, choices=sorted(PARAMETER_SETS))
    parser.add_argument("--model", default="unet")
    parser.add_argument("--fold", type=_fold, default=0, help='the fold, or "all" for the run on every case')
    parser.add_argument(
        "-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="a set value (YAML)"
    )
    parser.add_argument("--devices", type=int, default=None, help="launch torchrun with this many processes")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.devices is not None and "WORLD_SIZE" not in os.environ:
        if args.devices < 1:
            parser.error(f"--devices must be at least 1, got {args.devices}")
        rest = [a for i, a in enumerate(argv) if a != "--devices" and (i == 0 or argv[i - 1] != "--devices")]
        rest = [a for a in rest if not a.startswith("--devices=")]
        with command_errors(parser.prog, args.debug):
            raise SystemExit(_torchrun(launch_command(args.devices, rest)))
    with command_errors(parser.prog, args.debug):
        overrides = {name: yaml.safe_load(value) for name, value in args.p}
        params = get_params(args.params, **overrides)
        world = init_process_group(params.device)
        try:
            if world.main:  # the shared stages once, before the other processes read them
                pipeline.slice_cache(params, progress=False)
            world.barrier()
            folder = pipeline.train_run(params, args.model, args.fold, progress=world.main)
            world.barrier()
        finally:
            if world.size > 1:
                dist.destroy_process_group()
        if world.main:
            print(f"[mstt_lib.launch] {args.model} fold {args.fold}: {folder}", flush=True)


def _torchrun(command: list[str], ctrl_c_grace_seconds: float = 10) -> int:
    """torchrun's exit status; stopped, it is passed the stop, which it hands on to its processes
    (killed, as ``subprocess.call`` would on an interrupt, they would train on unattended).

    A terminal's Ctrl-C reaches torchrun too, so it is given ``ctrl_c_grace_seconds`` to stop on
    its own: a second signal while it stops makes it log a traceback."""
    from mstt_lib.io import STOP_REPORTED_ABOVE, Stopped

    process = subprocess.Popen(command, env={**os.environ, STOP_REPORTED_ABOVE: "1"})
    try:
        status = process.wait()
        return 128 - status if status < 0 else status  # ended by a signal: as a shell reports it
    except KeyboardInterrupt as stop:
        try:
            if not isinstance(stop, Stopped):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=ctrl_c_grace_seconds)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait()
        raise


def _fold(text: str) -> int | None:
    return None if text == "all" else int(text)


if __name__ == "__main__":
    main()
