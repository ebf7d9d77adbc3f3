"""Headless Chromium opens the built book and uses the viewer (needs `make book` first)."""

import functools
import http.server
import re
import threading
from pathlib import Path

import pytest
from browser_helpers import MISSING, chromium_found, headless_chromium

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "_build" / "html" / "book" / "chapters" / "01_dataset_statistics.html"

pytestmark = [pytest.mark.browser, pytest.mark.book]


@pytest.fixture(scope="module")
def server():
    if not PAGE.is_file():
        pytest.fail(f"{PAGE} is missing: `make test` builds the book before the tests")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "_build" / "html"))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not chromium_found():
        pytest.fail(MISSING)
    with headless_chromium() as chrome:
        yield chrome


def _wait(browser, script, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda b: b.execute_script(script))


CANVAS_SUM = """
const c = arguments[0];
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] * 3 + d[i + 1] * 7 + d[i + 2] * 11;
return s;"""


def test_viewer_renders_and_its_slider_moves_the_slice(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/book/chapters/01_dataset_statistics.html")
    _wait(browser, "return document.querySelector('.mstt-viewer[data-ready=\"1\"]') !== null")
    viewer = browser.find_element(By.CSS_SELECTOR, ".mstt-viewer")
    canvases = viewer.find_elements(By.TAG_NAME, "canvas")
    assert len(canvases) == 3
    axial = viewer.find_element(By.CSS_SELECTOR, "figure.mstt-axial")
    canvas = axial.find_element(By.TAG_NAME, "canvas")
    slider = axial.find_element(By.CSS_SELECTOR, "input[type=range]")
    caption = axial.find_element(By.CSS_SELECTOR, "figcaption")
    assert canvas.size["width"] > 100 and canvas.size["height"] > 100
    before_pixels = browser.execute_script(CANVAS_SUM, canvas)
    assert before_pixels > 0, "the axial plane is blank"
    before_caption, before_value = caption.text, int(slider.get_attribute("value"))

    slider.click()
    for _ in range(3):
        slider.send_keys(Keys.ARROW_RIGHT if before_value == 0 else Keys.ARROW_LEFT)
    after_value = int(slider.get_attribute("value"))
    assert after_value != before_value
    assert caption.text != before_caption and str(after_value + 1) in caption.text
    assert browser.execute_script(CANVAS_SUM, canvas) != before_pixels, "slider did not redraw"

    # The T1/T2 switch redraws the planes from the other image.
    shown = browser.execute_script(CANVAS_SUM, canvas)
    radios = viewer.find_elements(By.CSS_SELECTOR, "input.mstt-modality")
    assert [r.get_attribute("value") for r in radios] == ["0", "1"]
    radios[1].click()
    assert browser.execute_script(CANVAS_SUM, canvas) != shown, "T1/T2 switch did not redraw"

    # Clicking the axial plane moves the sagittal and coronal planes (linked planes).
    sagittal = viewer.find_element(By.CSS_SELECTOR, "figure.mstt-sagittal figcaption").text
    browser.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect();"
        "c.dispatchEvent(new MouseEvent('click', {clientX: r.left + 5, clientY: r.top + 5, bubbles: true}));",
        canvas,
    )
    assert viewer.find_element(By.CSS_SELECTOR, "figure.mstt-sagittal figcaption").text != sagittal


def test_plotly_figures_render_offline_from_the_books_own_plotly_js(server, browser):
    browser.get(f"{server}/book/chapters/01_dataset_statistics.html")
    _wait(browser, "return document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [r for r in resources if not r.startswith(server) and not r.startswith("data:")]
    assert not outside, f"the page fetched from outside the book: {outside}"
    scripts = browser.execute_script(
        "return Array.from(document.scripts).map(s => s.src).filter(s => s.includes('plotly'))"
    )
    assert len(scripts) == 1 and "_static/plotly.min.js" in scripts[0]


def test_no_table_in_the_book_cuts_its_text_short():
    """pandas shows 50 characters of a cell and then '...': a reader of the HTML cannot see the rest."""
    pages = sorted((ROOT / "_build" / "html" / "book").rglob("*.html"))
    assert pages, "no built book: `make test` builds it before the tests"
    cut = [
        f"{page.name}: {cell.strip()[-40:]}"
        for page in pages
        for cell in re.findall(r"<td>(.*?)</td>", page.read_text(encoding="utf-8"), flags=re.S)
        if cell.strip().endswith("...")
    ]
    assert not cut, f"table cells cut short: {cut}"


def test_the_published_book_names_no_folder_of_the_machine_that_built_it():
    """A printed path or papermill's metadata would publish the builder's folders (a home folder
    names a person); the book and its downloadable notebooks speak of paths within the project."""
    pages = [p for p in (ROOT / "_build" / "html").rglob("*") if p.suffix in (".html", ".ipynb", ".md")]
    assert pages, "no built book: `make test` builds it before the tests"
    naming = [
        page.relative_to(ROOT).as_posix() for page in pages if str(ROOT) in page.read_text(encoding="utf-8")
    ]
    assert not naming, f"pages that name {ROOT}: {naming}"


def test_every_table_of_the_chapters_fits_the_page(server, browser):
    from selenium.webdriver.common.by import By

    wide = []
    for page in sorted((ROOT / "_build" / "html" / "book" / "chapters").glob("0*.html")):
        browser.get(f"{server}/book/chapters/{page.name}")
        for table in browser.find_elements(By.CSS_SELECTOR, "div.cell_output table"):
            width, room = browser.execute_script(
                "return [arguments[0].getBoundingClientRect().width, arguments[0].parentElement.clientWidth]",
                table,
            )
            if width > room + 0.5:
                wide.append(
                    f"{page.name}: {table.text.splitlines()[0][:60]!r} {width - room:.0f} px too wide"
                )
    # wider than its output area, a table scrolls and hides its last columns (window 1400 px)
    assert not wide, wide


def test_failure_chapter_links_to_case_pages_whose_viewer_shows_truth_and_prediction(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server}/book/chapters/07_failure_analysis.html")
    links = browser.find_elements(By.CSS_SELECTOR, "a[href^='cases/']")
    assert links, "the failure-analysis chapter links to no case page"
    target = links[0].get_attribute("href")
    browser.get(target)
    assert "/book/chapters/cases/" in browser.current_url
    _wait(browser, "return document.querySelector('.mstt-viewer[data-ready=\"1\"]') !== null")
    viewer = browser.find_element(By.CSS_SELECTOR, ".mstt-viewer")
    legend = viewer.text
    assert "ground truth" in legend and "prediction (unet)" in legend
    assert "Dice" in browser.find_element(By.CSS_SELECTOR, "table.mstt-metrics").text
    axial = viewer.find_element(By.CSS_SELECTOR, "figure.mstt-axial")
    canvas = axial.find_element(By.TAG_NAME, "canvas")
    slider = axial.find_element(By.CSS_SELECTOR, "input[type=range]")
    before_pixels, before_value = (
        browser.execute_script(CANVAS_SUM, canvas),
        int(slider.get_attribute("value")),
    )
    slider.click()
    for _ in range(3):
        slider.send_keys(Keys.ARROW_RIGHT if before_value == 0 else Keys.ARROW_LEFT)
    assert int(slider.get_attribute("value")) != before_value
    assert browser.execute_script(CANVAS_SUM, canvas) != before_pixels, "slider did not redraw"
