"""Size and render time of a page with the static three-plane viewer; the built book's pages.

Target (issue: viewer): a page with one viewer of a 256 x 256 x N case 2 MB or less, for
N = 64 and 160; the viewer keeps images lossless up to its data budget and goes lossy
(WebP, stated on the page) beyond it, so the lossless size is reported beside. The case
is the project's own phantom (mstt_lib.phantom: anatomy, bias field, Rician noise; T1
resampled onto the T2 grid as the book does) with its ground truth and a made-up
prediction, so the images compress as a real noisy scan would, not as a constant image.
The render time is from navigation start to the viewer's ``data-ready="1"`` in headless
Chromium (tests/browser_helpers.py), median of 5 loads. With _build/html present,
the built book's total size and its largest page (HTML plus the _images it references)
are added.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from _record import ROOT, record
from bench_book import page_size
from nibabel.processing import resample_from_to
from scipy import ndimage

from mstt_lib import phantom, viz

sys.path.insert(0, str(ROOT / "tests"))
from browser_helpers import MISSING, chromium_found, headless_chromium  # noqa: E402

BUILT = ROOT / "_build" / "html"
LOADS = 5
# Installed before any page script: notes when a viewer first reports data-ready="1".
READY_PROBE = """
window.__viewerReady = null;
new MutationObserver(function (records, observer) {
  if (document.querySelector('.mstt-viewer[data-ready="1"]')) {
    window.__viewerReady = performance.now(); observer.disconnect();
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-ready"]});
"""


def phantom_case(n_slices: int, noise: float | None = None) -> dict:
    """A 256 x 256 x ``n_slices`` thigh case in RAS: T1 and T2 (float), ground truth and a
    prediction (the truth shifted and swollen a little, with a false-positive speck)."""
    extra = {} if noise is None else {"noise": noise}
    settings = phantom.PhantomSettings(matrix=256, n_slices=n_slices, **extra)
    plan = phantom.plan_cohort(199, seed=0)
    index = int(np.flatnonzero(plan["site"] == "thigh")[0])
    case = phantom.generate_case(plan.iloc[index].to_dict(), index, settings)
    t2, affine = case["T2"]
    t1 = resample_from_to(
        nib.Nifti1Image(case["T1"][0].astype(np.float32), case["T1"][1]), (t2.shape, affine)
    )
    truth = case["mask"][0] > 0
    prediction = ndimage.binary_dilation(np.roll(truth, (3, -2), axis=(0, 1)), iterations=1)
    centre = np.array(ndimage.center_of_mass(truth)).round().astype(int)
    prediction[tuple(slice(c + 20, c + 24) for c in centre[:2]) + (slice(centre[2], centre[2] + 2),)] = True
    canonical = viz.case_in_ras(
        {
            "images": {"T1": np.asarray(t1.dataobj, np.float32), "T2": t2.astype(np.float32)},
            "mask": truth.astype(np.uint8),
            "masks": {"ground truth": truth, "prediction": prediction},
            "affine": affine,
            "case_id": str(plan.iloc[index]["case_id"]),
        }
    )
    return canonical


def viewer_page(case: dict, title: str) -> str:
    """A standalone HTML page holding one static viewer of the case."""
    viewer = viz.slice_viewer(case["images"], case["spacing"], case["masks"], title=title).data
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body>{viewer}</body></html>"
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@contextlib.contextmanager
def chromium():
    """Headless Chromium (tests/browser_helpers.py) that notes when a viewer is ready."""
    if not chromium_found():
        raise SystemExit(MISSING)
    with headless_chromium() as browser:
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": READY_PROBE})
        yield browser


def render_times(browser, url: str, loads: int = LOADS) -> list[float]:
    """Seconds from navigation start to the first viewer's data-ready="1", per fresh load."""
    from selenium.webdriver.support.ui import WebDriverWait

    times = []
    for load in range(loads):
        browser.get("about:blank")
        browser.get(f"{url}?load={load}-{time.time_ns()}")  # never from the cache
        ready = WebDriverWait(browser, 120, poll_frequency=0.02).until(
            lambda b: b.execute_script("return window.__viewerReady")
        )
        times.append(ready / 1000)
    return times


def _seconds(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s (range {min(times):.2f}-{max(times):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 160])
    parser.add_argument("--no-record", action="store_true", help="print only, leave results.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder, serve(Path(folder)) as server, chromium() as browser:
        for n in args.slices:
            case = phantom_case(n)
            started = time.perf_counter()
            page = viewer_page(case, f"phantom {case['case_id']} 256 x 256 x {n}")
            encode_s = time.perf_counter() - started
            (Path(folder) / f"viewer_{n}.html").write_text(page)
            uris, config = viz.viewer_payload(page)
            data = sum(map(len, uris))
            stored = (
                "lossless 8-bit PNG" if config["lossy"] is None else f"8-bit WebP quality {config['lossy']}"
            )
            label = f"page with one viewer, 256 x 256 x {n}, T1 + T2 + 2 masks"
            rows.append(
                (
                    f"{label}: size",
                    f"{len(page) / 1e6:.2f} MB (images {stored}; {data / len(page):.1%} embedded data)",
                    "≤ 2 MB",
                )
            )
            lossless = viz.slice_viewer(case["images"], case["spacing"], case["masks"], max_bytes=10**12).data
            rows.append((f"{label}: the same page kept lossless", f"{len(lossless) / 1e6:.2f} MB", ""))
            rows.append(
                (
                    f"{label}: render to data-ready, median of {LOADS}",
                    _seconds(render_times(browser, f"{server}/viewer_{n}.html")),
                    "",
                )
            )
            rows.append((f"{label}: slice_viewer (normalise + PNG) in Python", f"{encode_s:.1f} s", ""))
            print(rows[-4:], flush=True)
        if 64 in args.slices:  # the same anatomy without noise: what the noise costs
            smooth = viewer_page(phantom_case(64, noise=0.0), "noise-free")
            rows.append(
                (
                    "same 256 x 256 x 64 page, noise-free phantom (comparison)",
                    f"{len(smooth) / 1e6:.2f} MB",
                    "",
                )
            )

    if BUILT.is_dir():
        total = sum(f.stat().st_size for f in BUILT.rglob("*") if f.is_file())
        rows.append(("built book (_build/html), all files", f"{total / 1e6:.1f} MB", ""))
        pages = {html: sum(page_size(html)) for html in BUILT.rglob("*.html")}
        largest = max(pages, key=pages.get)
        rows.append(
            (
                f"largest built page: {largest.relative_to(BUILT)} (HTML + its images)",
                f"{pages[largest] / 1e6:.2f} MB",
                "≤ 3 MB (page target of bench_book)",
            )
        )
        with serve(BUILT) as server, chromium() as browser:
            for html in sorted(BUILT.rglob("*.html")):
                if 'class="mstt-viewer"' in html.read_text(errors="replace"):
                    url = f"{server}/{html.relative_to(BUILT).as_posix()}"
                    rows.append(
                        (
                            f"built {html.name}: first viewer to data-ready, median of {LOADS}",
                            _seconds(render_times(browser, url)),
                            "",
                        )
                    )
    if args.no_record:
        print(*(" | ".join(row) for row in rows), sep="\n")
    else:
        record("Viewer pages: size and render time", rows)


if __name__ == "__main__":
    main()
