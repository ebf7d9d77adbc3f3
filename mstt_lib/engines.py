"""Where the per-case stages run: one process, a pool of processes, or Ray tasks.

Registration, preprocessing and the synthetic cohort map one function over cases; this
module is the one place that chooses how. ``"process"`` (the default) is a pool of
``workers`` processes on this machine; ``"ray"`` runs each case as a Ray task, on a local
instance or the cluster at ``RAY_ADDRESS`` (``mstt_lib.cluster``), so a large cohort is
spread over many machines. Every engine calls the same function on the same jobs, so the
files written are the same. The engine is an argument, or else the ``MSTT_ENGINE``
environment variable (``mstt-book run --engine ray`` sets it for the notebooks' kernels).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

from tqdm import tqdm

__all__ = ["ENGINES", "ENGINE_VARIABLE", "default_engine", "engine_environment", "map_cases"]

ENGINES = ("process", "ray")
ENGINE_VARIABLE = "MSTT_ENGINE"


def default_engine() -> str:
    """``MSTT_ENGINE`` when set (checked), else ``"process"``."""
    engine = os.environ.get(ENGINE_VARIABLE) or "process"
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_VARIABLE}={engine!r} is not an engine; choose one of {list(ENGINES)}")
    return engine


@contextmanager
def engine_environment(engine: str) -> Iterator[None]:
    """``engine`` as this process's default engine for a while (the stages take no argument)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    previous = os.environ.get(ENGINE_VARIABLE)
    os.environ[ENGINE_VARIABLE] = engine
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENGINE_VARIABLE, None)
        else:
            os.environ[ENGINE_VARIABLE] = previous


class _WorkerStopped(BaseException):
    """The parent stopped the pool while this worker ran a job."""


_running_job = False  # in a worker: whether a job is running (a stop then unwinds it first)


def _start_worker(env: dict[str, str]) -> None:
    """A pool worker: ``env`` set before any job. Ctrl-C is left to the parent, which stops the
    pool (a terminal sends SIGINT to the whole process group: idle workers would print
    tracebacks); SIGTERM, the parent's stop, ends the worker (``_stop_worker``)."""
    global _running_job
    _running_job = False  # (a forked worker copies its parent's flag)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    os.environ.update(env)


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Workers started here ignore Ctrl-C from their first instruction (a spawned one imports for
    seconds before ``_start_worker`` runs); the parent ignores it only while it starts them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _stop_worker(signum: int, frame) -> None:
    if _running_job:  # unwound through the job, whose ``finally`` blocks remove its temporary files
        raise _WorkerStopped
    os._exit(128 + signum)


def _job(function: Callable[[Any], Any], job: Any) -> Any:
    global _running_job
    _running_job = True
    try:
        return function(job)
    except _WorkerStopped:
        os._exit(128 + signal.SIGTERM)  # the pool would hand this worker its next job
    finally:
        _running_job = False


def _stop_pool(pool: ProcessPoolExecutor, grace_seconds: float = 5) -> None:
    """Cancel the jobs not started and end the workers: the pool's own ``shutdown`` waits for
    every job already queued (``map`` queues them all), so an interrupt would not stop it, and
    a parent ended by a signal leaves its workers running. A worker inside a long library call
    (ANTs) sees SIGTERM only when the call returns: after ``grace_seconds`` it is killed.
    Python 3.11 has no public call for this (3.14 adds ``terminate_workers``), hence ``_processes``.
    """
    processes = list((pool._processes or {}).values())  # before shutdown, which forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:  # also when a second Ctrl-C cuts the wait short
        for process in processes:
            if process.is_alive():
                process.kill()


def map_cases(
    function: Callable[[Any], Any],
    jobs: Sequence[Any],
    workers: int = 2,
    engine: str | None = None,
    env: dict[str, str] | None = None,
    spawn: bool = False,
    progress: bool = True,
    desc: str = "cases",
    chunksize: int = 1,
) -> list[Any]:
    """``[function(job) for job in jobs]``, in order, on the chosen engine.

    ``"process"``: in this process when ``workers`` is 1 (and no ``env`` is asked for), else a
    pool of ``workers`` processes (fresh ``spawn`` ones when asked, e.g. for ANTs); ``"ray"``:
    one Ray task per job with one CPU each (a local instance gets ``workers`` CPUs). ``env``:
    environment variables set in the worker processes before any job (what must precede an
    import, such as ANTs' seed).
    """
    engine = engine or default_engine()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    bar = dict(total=len(jobs), desc=desc, unit="case", disable=not progress)
    if engine == "ray":
        from mstt_lib.cluster import ray_session, run_tasks

        with ray_session(num_cpus=max(1, workers)):
            return run_tasks(
                function, [(job,) for job in jobs], {"num_cpus": 1}, env=env, progress=progress, desc=desc
            )
    if workers <= 1 and not env and not spawn:
        return [function(job) for job in tqdm(jobs, **bar)]
    context = multiprocessing.get_context("spawn") if spawn else None
    with ProcessPoolExecutor(
        max_workers=max(1, workers), mp_context=context, initializer=_start_worker, initargs=(env or {},)
    ) as pool:
        try:
            with _workers_ignore_ctrl_c():  # map starts the workers
                results = pool.map(partial(_job, function), jobs, chunksize=chunksize)
            return list(tqdm(results, **bar))
        except BaseException:  # an interrupt, or one job's error: the other jobs stop too
            _stop_pool(pool)
            raise
