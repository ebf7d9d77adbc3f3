"""JupyterLab and publishing: the ``mstt-book`` kernel, ``make lab``'s server (token on, nothing left
behind), the live viewer in JupyterLab in headless Chromium, and ``make publish`` to a bare repository."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest
from browser_helpers import MISSING, chromium_found, headless_chromium

from mstt_lib import lab
from mstt_lib.geometry import PLANES
from mstt_lib.runner import main as runner_main
from mstt_lib.runner import publish_book, run_notebooks

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "notebooks" / "live_viewer_demo.ipynb"


# ---------------------------------------------------------------------------
# The kernel.


def test_register_kernel_writes_a_spec_of_this_python_that_papermill_runs(tmp_path, monkeypatch):
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    folder = lab.register_kernel(tmp_path / "prefix")
    assert not list(system_tmp.iterdir())  # ipykernel's install() would leave its staging folder
    assert folder == tmp_path / "prefix" / "share" / "jupyter" / "kernels" / lab.KERNEL_NAME
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == lab.KERNEL_DISPLAY_NAME

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    assert Path(KernelSpecManager().get_kernel_spec(lab.KERNEL_NAME).resource_dir) == folder
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    notebook = nbformat.v4.new_notebook()  # the chapters' metadata: the python3 kernel unless told
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    notebook.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.getcwd())")]
    nbformat.write(notebook, project / "notebooks" / "01_where.ipynb")
    (executed,) = run_notebooks(kernel=lab.KERNEL_NAME, root=project)  # `mstt-book run --kernel mstt-book`
    cell = nbformat.read(executed, as_version=4).cells[-1]
    assert cell.outputs[0]["text"].splitlines() == [sys.executable, str(project / "notebooks")]


def test_make_install_registered_the_mstt_book_kernel_in_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(lab.KERNEL_NAME)
    except NoSuchKernel:
        pytest.fail(f"no {lab.KERNEL_NAME!r} kernel: `make install` registers it")
    assert Path(spec.resource_dir).is_relative_to(Path(sys.prefix) / "share" / "jupyter" / "kernels")
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()


# ---------------------------------------------------------------------------
# The server.


def test_lab_command_is_local_and_allows_root_only_as_root(monkeypatch, tmp_path):
    monkeypatch.setattr(lab.os, "geteuid", lambda: 0)
    as_root = lab.lab_command(tmp_path, 9999)
    monkeypatch.setattr(lab.os, "geteuid", lambda: 1000)
    as_user = lab.lab_command(tmp_path, 9999)
    assert "--allow-root" in as_root and "--allow-root" not in as_user
    for command in (as_root, as_user):
        assert "--ip=127.0.0.1" in command and "--port=9999" in command
        assert f"--ServerApp.root_dir={tmp_path}" in command
        assert not any("token" in part.lower() or "password" in part.lower() for part in command)


def _isolated(tmp_path: Path) -> dict[str, str]:
    """Jupyter config, data and runtime folders of the test's own: no user config, no leftovers."""
    folders = {}
    for name in ("config", "data", "runtime"):
        (tmp_path / name).mkdir(exist_ok=True)
        folders[f"JUPYTER_{name.upper()}_DIR"] = str(tmp_path / name)
    return folders


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def _listening(port: int) -> bool:
    """Whether a socket listens on the port (a closed server's connections may linger in TIME_WAIT)."""
    return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


def _kernels(server_pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "ipykernel_launcher" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_lab_needs_its_token_offers_the_kernel_and_stops_with_its_kernels(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with open(tmp_path / "lab.log", "w") as log:
        server = lab.start_lab(root, env=_isolated(tmp_path), log=log)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/lab?token={server.token}"
        assert _get(f"{server.base_url}api/kernelspecs")[0] == 403
        status, body = _get(f"{server.base_url}api/kernelspecs", server.token)
        assert status == 200 and lab.KERNEL_NAME in json.loads(body)["kernelspecs"]
        request = urllib.request.Request(
            f"{server.base_url}api/kernels",
            data=json.dumps({"name": lab.KERNEL_NAME}).encode(),
            headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
        deadline = time.monotonic() + 30
        while not (kernels := _kernels(server.process.pid)):
            assert time.monotonic() < deadline, "the kernel process did not start"
            time.sleep(0.2)
        assert all(os.getpgid(k.pid) != server.process.pid for k in kernels)  # in sessions of their own
    finally:
        survivors = lab.stop_lab(server)
    assert survivors == []
    assert server.process.returncode is not None
    assert not [k.pid for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    assert not _listening(server.port)


@pytest.mark.parametrize(
    ("token", "message", "logged"),
    [
        ("", "without its token", "authentication is disabled"),  # authentication off
        ("a-token-of-its-own", "refused the token", "is running at"),  # not the token we print
    ],
    ids=["no-token", "other-token"],
)
def test_lab_refuses_to_run_when_a_config_overrides_its_token(tmp_path, token, message, logged):
    folders = _isolated(tmp_path)
    config = Path(folders["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
    config.write_text(json.dumps({"IdentityProvider": {"token": token}}))
    port = lab.pick_port(None)
    with open(tmp_path / "lab.log", "w") as log, pytest.raises(RuntimeError, match=message):
        lab.start_lab(tmp_path, port=port, env=folders, log=log)
    assert logged in (tmp_path / "lab.log").read_text()  # it did start, then
    assert not _listening(port)  # ... was stopped


# ---------------------------------------------------------------------------
# The live viewer in JupyterLab, in headless Chromium.


@pytest.fixture
def chromium():
    if not chromium_found():
        pytest.fail(MISSING)
    with headless_chromium() as browser:
        yield browser


def _wait(browser, script, *args, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(
        lambda b: b.execute_script(script, *args)
    )


# The image's pixels as the browser decoded them (at the PNG's own size): a checksum and the
# number of pure-red pixels (the second mask's contour colour).
PIXELS = """
const img = arguments[0], c = document.createElement('canvas');
if (!img.complete || img.naturalWidth === 0) return null;  // a new frame is still loading
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let sum = 0, red = 0;
for (let i = 0; i < d.length; i += 4) {
  sum += d[i] * 3 + d[i + 1] * 7 + d[i + 2] * 11;
  if (d[i] === 255 && d[i + 1] === 0 && d[i + 2] === 0) red += 1;
}
return [sum, red];"""

# Code run in the notebook's kernel (as JupyterLab runs it); returns what it printed.
IN_KERNEL = """
const code = arguments[0], done = arguments[arguments.length - 1];
const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
const future = kernel.requestExecute({code});
let out = '';
future.onIOPub = (msg) => { if (msg.header.msg_type === 'stream') out += msg.content.text; };
future.done.then(() => done(out), (error) => done('failed: ' + error));"""


def test_live_viewer_planes_carry_their_size_in_their_style():
    """ipywidgets' CSS (height: auto) overrides an image's size attributes; a style does not."""
    import numpy as np

    from mstt_lib import viz

    volume = np.random.default_rng(0).random((12, 10, 6))
    viewer = viz.live_viewer({"T1": volume}, (1.0, 2.0, 4.0), display_px=240)
    styles = {p: (viewer.planes[p].layout.width, viewer.planes[p].layout.height) for p in PLANES}
    assert styles == {
        "axial": ("120px", "200px"),
        "coronal": ("120px", "240px"),
        "sagittal": ("200px", "240px"),
    }
    assert "mstt-live-viewer" in viewer._dom_classes
    assert all(
        f"mstt-live-{p}" in b._dom_classes for p, b in zip(PLANES, viewer.children[-2].children, strict=True)
    )


@pytest.mark.browser
def test_live_viewer_renders_in_jupyterlab_and_its_controls_redraw(tmp_path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # JupyterLab saves what it opens (autosave, checkpoints): it gets a copy of the demo notebook.
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(DEMO, root / "notebooks")
    env = {
        **_isolated(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with open(tmp_path / "lab.log", "w") as log:
        server = lab.start_lab(root, extra_args=["--LabApp.expose_app_in_browser=True"], env=env, log=log)
    kernel_pid = None
    try:
        chromium.get(f"{server.base_url}lab/tree/notebooks/{DEMO.name}?token={server.token}")
        _wait(
            chromium,
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
            "return !!k && k.status === 'idle';",
        )
        chromium.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        _wait(
            chromium,
            "const images = [...document.querySelectorAll('.mstt-live-viewer img.widget-image')];"
            "return images.length === 3 && images.every((i) => i.complete && i.naturalWidth > 0);",
        )
        viewer = chromium.find_element(By.CSS_SELECTOR, ".mstt-live-viewer")
        chromium.execute_script("arguments[0].scrollIntoView()", viewer)
        assert "MSTT_001" in viewer.text and "shifted mask" in viewer.text
        images = {p: viewer.find_element(By.CSS_SELECTOR, f".mstt-live-{p} img") for p in PLANES}

        # Each plane is shown at the size its spacing gives, not at the PNG's voxel aspect.
        size = "return [arguments[0].clientWidth, arguments[0].clientHeight, arguments[0].naturalWidth,"
        size += " arguments[0].naturalHeight]"
        for plane, image in images.items():
            width, height, natural_width, natural_height = chromium.execute_script(size, image)
            assert [width, height] == [int(image.get_dom_attribute(a)) for a in ("width", "height")], plane
            if plane == "coronal":  # slices 3.5-6 mm apart, pixels under 1 mm: taller than in voxels
                assert height / width > 2 * natural_height / natural_width

        def pixels(plane: str) -> list[int]:
            deadline = time.monotonic() + 20  # a frame being replaced has no pixels yet
            while (now := chromium.execute_script(PIXELS, images[plane])) is None:
                assert time.monotonic() < deadline, f"the {plane} plane's image never finished loading"
                time.sleep(0.1)
            return now

        def redrawn(plane: str, before: list[int]) -> list[int]:
            deadline = time.monotonic() + 20
            while (now := pixels(plane)) == before:
                assert time.monotonic() < deadline, f"the {plane} plane was not redrawn"
                time.sleep(0.2)
            return now

        # The second mask's toggle takes its (red) contour off, as in the static viewer.
        shown = pixels("axial")
        assert shown[1] > 0, "no red contour of the shifted mask on the opening slice"
        toggle = next(
            c for c in viewer.find_elements(By.CSS_SELECTOR, ".widget-checkbox") if c.text == "shifted mask"
        )
        toggle.find_element(By.TAG_NAME, "input").click()
        hidden = redrawn("axial", shown)
        assert hidden[1] == 0

        # The T1/T2 switch shows the other image.
        t2 = next(b for b in viewer.find_elements(By.CSS_SELECTOR, ".widget-toggle-button") if b.text == "T2")
        t2.click()
        before = {plane: redrawn(plane, hidden) if plane == "axial" else pixels(plane) for plane in images}

        # The axial slider moves the slice; the crosshair follows in the other two planes.
        axial = viewer.find_element(By.CSS_SELECTOR, ".mstt-live-axial")
        readout = axial.find_element(By.CSS_SELECTOR, ".widget-readout")
        start = int(readout.text)
        handle = axial.find_element(By.CSS_SELECTOR, ".noUi-handle")
        handle.click()
        for _ in range(3):
            handle.send_keys(Keys.ARROW_LEFT if start >= 3 else Keys.ARROW_RIGHT)
        for plane in images:
            redrawn(plane, before[plane])
        end = int(readout.text)
        assert end == (start - 3 if start >= 3 else start + 3)
        _wait(chromium, "return arguments[0].innerText.includes(arguments[1])", viewer, f", {end}) voxels")

        # The kernel runs in the notebook's folder, as papermill runs the chapters.
        where = chromium.execute_async_script(IN_KERNEL, "import os\nprint(os.getcwd())\nprint(os.getpid())")
        folder, pid = where.split()
        assert Path(folder) == root / "notebooks"
        kernel_pid = int(pid)
    finally:
        survivors = lab.stop_lab(server)
    assert survivors == []
    assert kernel_pid is not None and not psutil.pid_exists(kernel_pid)
    assert not _listening(server.port)


def test_demo_notebook_stores_no_outputs():
    """nbval runs it with the chapters (--nbval-lax): it checks nothing, so it stores nothing."""
    notebook = nbformat.read(DEMO, as_version=4)
    assert any("live_case_viewer" in c.source for c in notebook.cells if c.cell_type == "code")
    assert all(not c.outputs and c.execution_count is None for c in notebook.cells if c.cell_type == "code")


# ---------------------------------------------------------------------------
# Publishing.


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=folder, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A clone-like project with a remote ``origin`` (a bare repository) and a built book."""
    remote = tmp_path / "remote.git"
    _git(tmp_path, "init", "--quiet", "--bare", str(remote))
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "--quiet", "-b", "main")
    _git(repo, "config", "user.name", "Tester")
    _git(repo, "config", "user.email", "tester@example.org")
    (repo / ".gitignore").write_text("_build/\n")
    (repo / "README.md").write_text("book\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "start")
    _git(repo, "remote", "add", "origin", str(remote))
    _git(repo, "push", "--quiet", "origin", "main")
    html = repo / "_build" / "html"
    for page in (
        "index.html",
        "book/chapters/01_dataset_statistics.html",
        "book/chapters/02_registration.html",
    ):
        (html / page).parent.mkdir(parents=True, exist_ok=True)
        (html / page).write_text(f"<html>{page}</html>")
    (html / "_static").mkdir()
    (html / "_static" / "plotly.min.js").write_text("// plotly")
    return repo, remote


def _published(remote: Path, branch: str = "gh-pages") -> set[str]:
    return set(_git(remote, "ls-tree", "-r", "--name-only", branch).splitlines())


def test_publish_pushes_the_built_book_to_gh_pages_and_leaves_main_alone(project):
    repo, remote = project
    main_before = _git(remote, "rev-parse", "main")
    commit = publish_book(repo)
    assert _git(remote, "rev-parse", "gh-pages") == commit
    assert _published(remote) == {
        ".nojekyll",
        "index.html",
        "_static/plotly.min.js",
        "book/chapters/01_dataset_statistics.html",
        "book/chapters/02_registration.html",
    }
    assert _git(remote, "show", "gh-pages:index.html") == "<html>index.html</html>"
    # main, locally and on the remote, and the working tree are as they were
    assert _git(remote, "rev-parse", "main") == main_before == _git(repo, "rev-parse", "HEAD")
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert _git(repo, "status", "--porcelain") == ""
    assert "index.html" not in _git(remote, "ls-tree", "-r", "--name-only", "main")

    # A rebuilt book replaces the last publication: a page gone from the build is gone from the branch.
    (repo / "_build" / "html" / "book" / "chapters" / "02_registration.html").unlink()
    (repo / "_build" / "html" / "index.html").write_text("<html>new</html>")
    second = publish_book(repo)
    assert second != commit and _git(remote, "rev-parse", "gh-pages") == second
    assert "book/chapters/02_registration.html" not in _published(remote)
    assert _git(remote, "show", "gh-pages:index.html") == "<html>new</html>"


def test_mstt_book_publish_takes_another_remote(project, monkeypatch, capsys):
    repo, _ = project
    other = repo.parent / "other.git"
    _git(repo.parent, "init", "--quiet", "--bare", str(other))
    monkeypatch.chdir(repo)
    runner_main(["publish", "--remote", str(other)])
    assert "book published to gh-pages" in capsys.readouterr().out
    assert {"index.html", "book/chapters/01_dataset_statistics.html"} <= _published(other)
    remote = repo.parent / "remote.git"
    assert "gh-pages" not in _git(remote, "branch", "--list")  # origin untouched


def test_publish_refuses_without_a_build_an_unknown_remote_and_main(project):
    repo, remote = project
    with pytest.raises(SystemExit, match="main"):
        publish_book(repo, branch="main")
    with pytest.raises(
        SystemExit, match="cannot publish to 'nowhere': 'nowhere' does not appear to be a git"
    ):
        publish_book(repo, remote="nowhere")
    shutil.rmtree(repo / "_build")
    with pytest.raises(SystemExit, match="make book"):
        publish_book(repo)
    assert "gh-pages" not in _git(remote, "branch", "--list")
