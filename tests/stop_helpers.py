"""For the tests that stop a command: start it as a terminal would, and wait for it to get going."""

from __future__ import annotations

import functools
import signal
import subprocess
import time
from collections.abc import Callable


def start_as_from_a_terminal(command: list[str], **popen_options) -> subprocess.Popen:
    """In a process group of its own, which a Ctrl-C (``os.killpg``) reaches whole, with Ctrl-C
    at its default: a test run started in the background (``&``) ignores SIGINT, as would its child."""
    return subprocess.Popen(
        list(map(str, command)),
        start_new_session=True,
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
        **popen_options,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``condition`` holds, while ``process`` runs (its output is the failure's message)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
