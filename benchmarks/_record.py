"""Shared by the benchmark scripts: peak memory of a process tree, and results.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).with_name("results.md")
ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "no commit"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


class PeakMemory:
    """Samples the resident memory of this process and its children (summed) every 50 ms."""

    def __init__(self, pid: int | None = None):
        self.process = psutil.Process(pid or os.getpid())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                total = self.process.memory_info().rss
                for child in self.process.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30


def use_threads(count: int | None) -> None:
    """Run torch on ``count`` threads (None: torch's default) for the whole benchmark.

    The variable as well as torch's setting, for the worker processes a benchmark starts (process
    pools, Ray), which read the variable; in this process ``infer.set_inference_threads`` keeps
    the lower count, so side-by-side runs stay on their cores when they score.
    """
    if count:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(count)
        torch.set_num_threads(count)


def record(title: str, rows: list[tuple[str, str, str]]) -> None:
    """Print the figures and append them as a table to results.md: (measure, value, target)."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"\n## {title}",
        f"{stamp} · commit {commit()} · {machine()}\n",
        "| measure | value | target |",
        "| --- | --- | --- |",
        *[f"| {m} | {v} | {t} |" for m, v, t in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.is_file():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n")
    with RESULTS.open("a") as handle:
        handle.write(text)
