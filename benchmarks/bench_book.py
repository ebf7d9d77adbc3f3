"""`mstt-book book` wall time (after install) and the size of the built pages.

Targets (issue: foundation): `make book` 5 minutes or less for the first chapter; the built
page of notebook 01 3 MB or less (its HTML plus the images and static files it alone uses).
Run with --skip-run to measure an existing build only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from _record import ROOT, PeakMemory, record


def page_size(html: Path) -> tuple[int, int]:
    """Bytes of a page's HTML, and of the _images files it references."""
    text = html.read_text(errors="replace")
    images = set(re.findall(r'src="[./]*_images/([^"]+)"', text))
    extra = sum((ROOT / "_build" / "html" / "_images" / name).stat().st_size for name in images)
    return len(text.encode()), extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_run:
        command = [str(Path(sys.executable).with_name("mstt-book")), "book"]
        with PeakMemory() as memory:
            started = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
            seconds = time.perf_counter() - started
        rows.append(("`mstt-book book` (cohort already generated)", f"{seconds:.0f} s", "≤ 300 s"))
        rows.append(("peak memory (process tree)", f"{memory.peak_gib:.2f} GiB", ""))
    built = ROOT / "_build" / "html"
    total = sum(f.stat().st_size for f in built.rglob("*") if f.is_file())
    rows.append(("built book, all files", f"{total / 2**20:.1f} MiB", ""))
    for html in sorted((built / "book" / "chapters").glob("*.html")):
        own, images = page_size(html)
        rows.append((f"page {html.name} (HTML + its images)", f"{(own + images) / 1e6:.2f} MB", "≤ 3 MB"))
    record("Book build and page sizes", rows)


if __name__ == "__main__":
    main()
