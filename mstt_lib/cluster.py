"""Ray, for the (model, fold) grid and the per-case stages: on one machine or a cluster.

Ray is the optional extra ``cluster`` (``pip install -e '.[cluster]'``; ``make install``
installs it): about 80 MB to download and 245 MB installed (measured for ray 2.60,
benchmarks/results.md), more than any other dependency but torch, and only the scaled-out
paths need it, so a predictor's or a reader's install can leave it out. It is imported
here only, when a Ray path runs.

``ray_session`` connects to a cluster (``address``, or ``RAY_ADDRESS``) or starts a local
instance on this machine's resources, and shuts down only what it started. ``run_tasks``
runs one Ray task per job with the given resources, retries a failed task once (an
exception or a dead worker: the retried task resumes from the files the first attempt left,
e.g. a run's checkpoint) and shows progress as tasks finish.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

__all__ = ["require_ray", "ray_session", "task_options", "run_tasks"]

INSTALL_HINT = "Ray is not installed: pip install -e '.[cluster]' (or `make install`)"


def require_ray():
    """The ``ray`` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[Any]:
    """Ray, connected to ``address`` (or ``RAY_ADDRESS``), else a local instance started here.

    A local instance gets ``num_cpus``/``num_gpus`` (default: the machine's), no dashboard and
    a small object store (jobs and results are small; files travel through the shared work
    directory); it is shut down on leaving, and its session folder (logs, sockets; Ray's
    default is a ``/tmp/ray/session_*`` per start, kept) removed with it. A session already
    open in this process is reused and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
    scratch = None
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # short: Ray's sockets live in it and a socket path must fit 107 characters
        scratch = tempfile.mkdtemp(prefix="mstt-ray-")
        options.update(
            num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=200 * 2**20, _temp_dir=scratch
        )
    try:
        ray.init(address=address, **options)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def task_options(gpus_per_task: float | None = None, cpus_per_task: float = 1) -> dict[str, float]:
    """Resources of one task: ``gpus_per_task`` GPUs (a fraction lets small models share one), or
    by default one GPU where the cluster has GPUs and none otherwise; ``cpus_per_task`` CPUs."""
    ray = require_ray()
    if gpus_per_task is None:
        gpus_per_task = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus_per_task < 0 or cpus_per_task <= 0:
        raise ValueError(f"resources must be positive: {gpus_per_task} GPU(s), {cpus_per_task} CPU(s)")
    return {"num_gpus": float(gpus_per_task), "num_cpus": float(cpus_per_task)}


def run_tasks(
    function: Callable[..., Any],
    jobs: Sequence[tuple],
    resources: dict[str, Any] | None = None,
    retries: int = 1,
    env: dict[str, str] | None = None,
    progress: bool = True,
    desc: str = "tasks",
) -> list[Any]:
    """``[function(*job) for job in jobs]`` as Ray tasks (in a session), results in job order.

    A task that raises or whose worker dies is run again ``retries`` times. ``env`` sets
    environment variables in the worker processes before the task runs (Ray starts workers
    for it). The bar advances as tasks finish, whatever their order.
    """
    ray = require_ray()
    options: dict[str, Any] = {"max_retries": retries, "retry_exceptions": retries > 0, **(resources or {})}
    if env:
        options["runtime_env"] = {"env_vars": dict(env)}
    remote = ray.remote(function).options(**options)
    refs = [remote.remote(*job) for job in jobs]
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", disable=not progress) as bar:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[position[ref]] = ray.get(ref)
                    bar.update(1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            # Wait for the killed workers, so that nothing writes after the caller tidies up.
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=10)
            raise
    return results
