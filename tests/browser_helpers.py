"""Headless Chromium for the browser tests and ``benchmarks/bench_viewer.py``: one set of flags,
and everything Chromium writes (its profile, its singleton socket folder) in one temporary
folder that is removed when it quits. Left to itself, Chromium leaves an
``org.chromium.Chromium.*`` folder in ``/tmp`` per start."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,1000",
)
MISSING = "Debian's chromium and chromium-driver are needed: `make browser-deps`"


def chromium_found() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@contextlib.contextmanager
def headless_chromium(extra_flags: Sequence[str] = ()) -> Iterator:
    """A selenium driver of Debian's chromium; its files go to a folder removed afterwards.

    The folder is a short path under the system's temporary folder: Chromium's singleton
    socket inside it must fit a Unix socket's 107 characters, which pytest's tmp_path may not.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not chromium_found():
        raise RuntimeError(MISSING)
    with tempfile.TemporaryDirectory(prefix="chromium-") as scratch:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*FLAGS, *extra_flags, f"--user-data-dir={Path(scratch) / 'profile'}"):
            options.add_argument(flag)
        service = Service(shutil.which("chromedriver"), env={**os.environ, "TMPDIR": scratch})
        browser = webdriver.Chrome(service=service, options=options)
        try:
            yield browser
        finally:
            browser.quit()
