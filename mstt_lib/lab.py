"""JupyterLab for the project: its named kernel, and a server that starts and stops cleanly.

``make install`` registers the kernel ``mstt-book`` inside the environment
(``python -m mstt_lib.lab kernel``, like ``ipykernel install --sys-prefix``), so
papermill's ``-k mstt-book`` and JupyterLab's launcher find this environment's
Python. ``make lab`` runs ``python -m mstt_lib.lab serve``: JupyterLab in the
repository, on 127.0.0.1 only, behind its own token authentication (checked to be
on before the URL is printed). Jupyter starts a notebook's kernel in the
notebook's folder, as the runner runs papermill, so relative paths agree. The
server runs in its own process group; stopping it ends the group and every
process it started (kernels get sessions of their own), which the browser test
verifies through the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mstt_lib.params import project_root

__all__ = [
    "KERNEL_NAME",
    "KERNEL_DISPLAY_NAME",
    "register_kernel",
    "LabServer",
    "lab_command",
    "pick_port",
    "start_lab",
    "stop_lab",
    "serve",
    "main",
]

KERNEL_NAME = "mstt-book"
KERNEL_DISPLAY_NAME = "Python (mstt-book)"
DEFAULT_PORT = 8888


def register_kernel(prefix: str | Path | None = None) -> Path:
    """Register this Python as kernel ``mstt-book`` under ``<prefix>/share/jupyter/kernels``.

    The default prefix is this environment's (``--sys-prefix``): the kernel
    travels with the venv and no user-wide Jupyter folder is touched.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    # ipykernel's own install() stages the spec in a tempfile.mkdtemp() folder that it leaves
    # behind (empty) in /tmp; this stages it in a folder that is removed, with install()'s
    # settings (-Xfrozen_modules=off, as install() sets by default).
    with tempfile.TemporaryDirectory(prefix="mstt-kernel-") as scratch:
        spec = write_kernel_spec(
            Path(scratch) / KERNEL_NAME,
            overrides={"display_name": KERNEL_DISPLAY_NAME},
            python_arguments=["-Xfrozen_modules=off"],
        )
        target = KernelSpecManager().install_kernel_spec(
            spec, kernel_name=KERNEL_NAME, prefix=str(prefix or sys.prefix)
        )
    return Path(target)


@dataclass
class LabServer:
    """A running JupyterLab: its process (leader of its own process group), address and token."""

    process: subprocess.Popen
    root: Path
    port: int
    token: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url(self) -> str:
        """The address to open: JupyterLab, logged in by its token."""
        return f"{self.base_url}lab?token={self.token}"


def lab_command(root: Path, port: int, extra_args: Sequence[str] = ()) -> list[str]:
    """The JupyterLab command line: localhost only, one fixed port, ``--allow-root`` only as root.

    The token is not on it (processes' arguments are visible to every user):
    ``start_lab`` passes it in the environment, as ``JUPYTER_TOKEN``.
    """
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command + list(extra_args)


def pick_port(preferred: int | None = DEFAULT_PORT) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a free port the system picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def _status(url: str, token: str | None) -> int | None:
    """HTTP status of a GET (None when nothing answers)."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def start_lab(
    root: str | Path | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: IO | None = None,
    timeout: float = 120,
) -> LabServer:
    """Start JupyterLab in ``root`` (default: the repository) and wait until it answers.

    A fresh random token is JupyterLab's own token authentication; once the
    server is up, a request without it must be refused (403), else the server
    is stopped and this raises: a configuration that turns authentication off
    is never run. ``log`` receives the server's output (default: this terminal).
    """
    root = Path(root or project_root()).resolve()
    port = port or pick_port(None)
    token = secrets.token_urlsafe(32)
    environment = {**os.environ, **(env or {}), "JUPYTER_TOKEN": token}
    environment.pop("JUPYTER_TOKEN_FILE", None)
    process = subprocess.Popen(
        lab_command(root, port, extra_args),
        cwd=root,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )
    server = LabServer(process, root, port, token)
    try:
        deadline = time.monotonic() + timeout
        while (status := _status(f"{server.base_url}api/status", token)) != 200:
            if status == 403:
                raise RuntimeError(
                    "JupyterLab refused the token it was started with: a Jupyter configuration file sets "
                    "another one (`jupyter --paths` lists where they are)"
                )
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {process.returncode} before it answered")
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")
            time.sleep(0.5)
        anonymous = _status(f"{server.base_url}api/kernels", None)
        if anonymous != 403:
            raise RuntimeError(
                f"JupyterLab answered a request without its token (HTTP {anonymous}): authentication "
                "is off in a Jupyter configuration file; refusing to run it so"
            )
    except BaseException:
        stop_lab(server)
        raise
    return server


def stop_lab(server: LabServer, timeout: float = 30) -> list[int]:
    """Stop the server and every process it started; returns the ids of any still alive (none).

    SIGTERM to the server's process group makes JupyterLab shut its kernels down;
    kernels run in sessions of their own, so each process descended from the
    server (listed before the signal) that outlives it is killed by its id.
    """
    import psutil

    process = server.process
    family: list[psutil.Process] = []
    if process.poll() is None:
        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=5)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything still in the server's group
    except ProcessLookupError:
        pass
    in_group = []
    for candidate in psutil.process_iter():
        try:
            if os.getpgid(candidate.pid) == process.pid and candidate.status() != psutil.STATUS_ZOMBIE:
                in_group.append(candidate.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return sorted({p.pid for p in alive} | set(in_group))


def serve(root: str | Path | None = None, port: int = DEFAULT_PORT) -> None:
    """``make lab``: start JupyterLab, print its URL, and stop it all on Ctrl-C, SIGTERM or hang-up.

    The server runs in a session of its own (so a Ctrl-C reaches this process, not
    Jupyter's shutdown prompt); these signals, handled from before it starts, end it.
    """

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    try:
        server = start_lab(root, pick_port(port))
    except KeyboardInterrupt:
        raise SystemExit("[mstt-book] interrupted while JupyterLab was starting; stopped it") from None
    try:
        print(
            f"\n[mstt-book] JupyterLab is running in {server.root}, kernel {KERNEL_NAME!r} available.\n"
            f"[mstt-book] Open this URL in a browser (its token is the password):\n\n    {server.url}\n\n"
            f"[mstt-book] From another machine: ssh -L {server.port}:127.0.0.1:{server.port} <this host>,"
            " then open the same URL. Ctrl-C stops JupyterLab and its kernels.\n",
            flush=True,
        )
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        survivors = stop_lab(server)
        print(
            "[mstt-book] JupyterLab stopped"
            + (f"; processes left: {survivors}" if survivors else ", no process left"),
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mstt_lib.lab {kernel,serve}`` (what ``make install`` and ``make lab`` call)."""
    parser = argparse.ArgumentParser(prog="python -m mstt_lib.lab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    kernel = commands.add_parser("kernel", help=f"register the {KERNEL_NAME!r} kernel for this environment")
    kernel.add_argument("--prefix", help="install under this prefix (default: this environment's)")
    lab = commands.add_parser("serve", help="start JupyterLab in the repository and print its URL")
    lab.add_argument("--port", type=int, default=DEFAULT_PORT, help="used when free, else any free port")
    lab.add_argument("--root", help="folder to serve (default: the repository)")
    args = parser.parse_args(argv)
    if args.command == "kernel":
        path = register_kernel(args.prefix)
        spec = json.loads((path / "kernel.json").read_text())
        print(f"[mstt-book] kernel {KERNEL_NAME!r} registered in {path} ({spec['argv'][0]})")
    else:
        serve(args.root, args.port)


if __name__ == "__main__":
    main()
