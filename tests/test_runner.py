"""The runner's reference handling and notebook discovery."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mstt_lib.params import get_params
from mstt_lib.provenance import record_headline
from mstt_lib.runner import (
    CHECK_MARKER,
    _record_chapter,
    notebook_paths,
    run_notebooks,
    store_references,
    write_build_info,
)


def _notebook(cells):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = cells
    return notebook


def test_store_references_keeps_only_the_checked_cells_outputs(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book" / "chapters").mkdir(parents=True)
    checked = f"{CHECK_MARKER}\nprint(1)"
    source = _notebook([nbformat.v4.new_code_cell(checked), nbformat.v4.new_code_cell("print(2)")])
    nbformat.write(source, tmp_path / "notebooks" / "01_a.ipynb")
    executed = _notebook([nbformat.v4.new_code_cell(checked), nbformat.v4.new_code_cell("print(2)")])
    for cell, text in zip(executed.cells, ("1\n", "2\n"), strict=True):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        cell.execution_count = 3
    nbformat.write(executed, tmp_path / "book" / "chapters" / "01_a.ipynb")

    store_references(tmp_path)
    stored = nbformat.read(tmp_path / "notebooks" / "01_a.ipynb", as_version=4)
    assert stored.cells[0].outputs[0]["text"] == "1\n"
    assert stored.cells[1].outputs == [] and stored.cells[1].execution_count is None


def test_notebooks_are_found_in_order_and_filtered_by_prefix(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("02_b.ipynb", "01_a.ipynb", "scratch.ipynb"):
        nbformat.write(_notebook([]), tmp_path / "notebooks" / name)
    assert [p.name for p in notebook_paths(tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]
    assert [p.name for p in notebook_paths(tmp_path, ["02"])] == ["02_b.ipynb"]
    with pytest.raises(ValueError, match="09"):
        notebook_paths(tmp_path, ["09"])


# ---------------------------------------------------------------------------
# Issue 13: parameters no notebook declares, --only that matches nothing, a stopped run.


def _parameters_notebook(path, source, body="pass"):
    parameters = nbformat.v4.new_code_cell(source)
    parameters.metadata["tags"] = ["parameters"]
    notebook = _notebook([parameters, nbformat.v4.new_code_cell(body)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with two notebooks; the runner finds it as the working folder."""
    _parameters_notebook(
        tmp_path / "notebooks" / "01_a.ipynb", 'param_set = "smoke"\ncohort = None  # a comment'
    )
    _parameters_notebook(tmp_path / "notebooks" / "02_b.ipynb", "epochs: int = 3\nlr, seed = 0.1, 1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_declared_parameters_are_the_names_the_parameters_cell_assigns(project):
    from mstt_lib.runner import check_parameters, declared_parameters

    assert declared_parameters(project / "notebooks" / "01_a.ipynb") == ["param_set", "cohort"]
    assert declared_parameters(project / "notebooks" / "02_b.ipynb") == [
        "epochs"
    ]  # a tuple target is not one
    check_parameters({"cohort": "x", "epochs": 2}, notebook_paths(project))
    with pytest.raises(ValueError, match="unknown parameter"):
        check_parameters({"epochs": 2}, notebook_paths(project, ["01"]))


def _main_exit(argv, capsys):
    from mstt_lib.runner import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_an_unknown_parameter_is_a_usage_error_listing_the_valid_names(project, capsys):
    code, err = _main_exit(["run", "-p", "unknown_param", "1"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "unknown parameter(s) unknown_param" in err
    assert "valid names: cohort, epochs, param_set" in err
    assert not (project / "book").exists()  # nothing was run


def test_only_that_matches_no_notebook_is_a_usage_error_not_a_traceback(project, capsys):
    code, err = _main_exit(["run", "--only", "99"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "no notebook starts with ['99']" in err and str(project / "notebooks") in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_run_shuts_its_kernel_down_and_leaves_no_temporary_file(project, tmp_path, signum):
    psutil = pytest.importorskip("psutil")
    started = project / "notebooks" / "started"
    _parameters_notebook(
        project / "notebooks" / "01_a.ipynb",
        'param_set = "smoke"',
        "import pathlib, time\npathlib.Path('started').touch()\nwhile True:\n    sum(range(10000))",
    )
    (project / "notebooks" / "02_b.ipynb").unlink()
    environment = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    runner = subprocess.Popen(
        [sys.executable, "-m", "mstt_lib.runner", "run"],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read()
            time.sleep(0.2)
        kernels = psutil.Process(runner.pid).children(recursive=True)
        assert kernels, "the notebook runs, so a kernel should"
        commands = [k.cmdline() for k in kernels]
        files = [c[i + 1] for c in commands for i, arg in enumerate(c[:-1]) if arg == "-f"]
        assert files, commands
        runner.send_signal(signum)
        output, _ = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    # Ctrl-C: killed by SIGINT (test_io); SIGTERM: exit status 143
    assert runner.returncode == (-signum if signum == signal.SIGINT else 128 + signum), output
    assert "Traceback" not in output
    _, alive = psutil.wait_procs(kernels, timeout=10)
    assert alive == [], f"kernel(s) still running: {[k.pid for k in alive]}"
    chapters = project / "book" / "chapters"
    assert list(chapters.iterdir()) == []  # neither the executed copy nor its temporary file
    assert all(not Path(f).exists() for f in files)
    assert not any((tmp_path / "runtime").glob("kernel-*.json"))


# ---------------------------------------------------------------------------
# The intro page's build information: each chapter's headline and runs, kept per chapter.


def _trained_run(work_dir, name, param_set="smoke"):
    folder = work_dir / "runs" / "synthetic-v2" / name
    folder.mkdir(parents=True)
    record = {
        "model": "unet",
        "encoder": "resnet18",
        "weights": "random initialisation",
        "weights_sha256": None,
        "steps": 160,
        "batch_size": 8,
        "train_minutes": 0.4,
        "device": "cpu",
    }
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "parameter_set.json").write_text(json.dumps({"set": param_set}))
    return folder


def test_the_intro_lists_each_executed_chapters_headline_and_runs_and_keeps_those_not_rerun(tmp_path):
    work_dir, out_dir = tmp_path / "work", tmp_path / "book" / "chapters"
    out_dir.mkdir(parents=True)
    params = get_params("smoke", work_dir=work_dir)

    def written_at(path, seconds):
        os.utime(path, (seconds, seconds))

    def headline(chapter, findings):
        record_headline(params, chapter, findings)
        return work_dir / "headlines" / f"{chapter}.json"

    build = time.time()  # the files' times are set, so that the test does not hang on the clock's grain
    written_at(_trained_run(work_dir, "unet-fold9-old") / "parameter_set.json", build - 3600)
    written_at(headline("08_real", ["an old number"]), build - 3600)  # an earlier build
    written_at(_trained_run(work_dir, "unet-fold0-abc") / "parameter_set.json", build + 1)
    written_at(headline("06_eval", ["Table 2, unet: Dice 0.822"]), build + 1)
    for chapter in ("06_eval", "08_real"):
        (out_dir / f"{chapter}.ipynb").write_text("{}")
        _record_chapter(out_dir, chapter, work_dir, build)
    text = write_build_info(out_dir).read_text()
    assert "- {doc}`/book/chapters/06_eval` (set `smoke`): Table 2, unet: Dice 0.822" in text
    assert "an old number" not in text and "fold9-old" not in text  # not written by this build
    assert "- set `smoke`, cohort `synthetic-v2`: U-Net (resnet18): 160 steps of 8, 0.4 min on cpu" in text

    # `--only 08` later: chapter 6's headline and runs stay listed, chapter 8's are replaced
    written_at(headline("08_real", ["5-fold Dice 0.640"]), build + 60)
    _record_chapter(out_dir, "08_real", work_dir, build + 30)
    text = write_build_info(out_dir).read_text()
    assert "Table 2, unet: Dice 0.822" in text and "(set `smoke`): 5-fold Dice 0.640" in text
    assert text.index("06_eval") < text.index("08_real") and "160 steps" in text

    (out_dir / "06_eval.ipynb").unlink()  # a chapter gone from the book takes its numbers along
    text = write_build_info(out_dir).read_text()
    assert "0.822" not in text and "No training run was used" in text


def test_an_executed_chapter_names_no_folder_of_the_machine_that_ran_it(project):
    run_notebooks(only=["01"], root=project)
    executed = project / "book" / "chapters" / "01_a.ipynb"
    recorded = nbformat.read(executed, as_version=4).metadata["papermill"]
    assert (recorded["input_path"], recorded["output_path"]) == (
        "notebooks/01_a.ipynb",
        "book/chapters/01_a.ipynb",
    )
    assert str(project) not in executed.read_text()  # the book publishes this file
    assert "No training run was used" in (project / "book" / "chapters" / "build_info.md").read_text()


def test_every_mstt_book_run_in_the_readme_passes_only_parameters_its_chapters_declare():
    """The README's commands are what users copy: a ``-p`` the chapters do not declare is refused."""
    import re
    import shlex

    from mstt_lib.params import PARAMETER_SETS
    from mstt_lib.runner import check_parameters

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"mstt-book run\b[^\n`#]*", text)
    assert len(commands) >= 5  # the README's examples were found
    for command in commands:
        words = shlex.split(command)
        names = {words[i + 1]: "x" for i, word in enumerate(words) if word == "-p"}
        if "--params" in words:  # a set that does not exist is refused too
            assert words[words.index("--params") + 1] in PARAMETER_SETS, command
        only = []
        if "--only" in words:
            for word in words[words.index("--only") + 1 :]:
                if word.startswith("-"):
                    break
                only.append(word)
        check_parameters(names, notebook_paths(root, only))


def test_every_option_of_mstt_book_and_mstt_predict_says_what_it_does():
    from mstt_lib import predict, runner

    _, commands = runner.build_parser()
    parsers = {f"mstt-book {name}": parser for name, parser in commands.items()}
    parsers["mstt-predict"] = predict.build_parser()
    bare = [
        f"{name} {action.option_strings[-1]}"
        for name, parser in parsers.items()
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert bare == []
    # the sets' help names every set, so a new one cannot go undescribed
    sets = next(a for a in commands["run"]._actions if "--params" in a.option_strings)
    assert all(f"{name}," in sets.help for name in sets.choices), sets.help


def test_built_case_pages_whose_source_is_gone_are_removed_the_others_kept(tmp_path):
    """Sphinx keeps the HTML of a removed page: another set's case pages would be published."""
    from mstt_lib.runner import _remove_orphan_case_pages

    (tmp_path / "book" / "chapters" / "cases").mkdir(parents=True)
    (tmp_path / "book" / "chapters" / "cases" / "KEEP_1.ipynb").write_text("{}")
    built = {
        name: tmp_path / "_build" / name
        for name in (
            "html/book/chapters/cases/KEEP_1.html",
            "html/book/chapters/cases/GONE_2.html",
            "html/_sources/book/chapters/cases/GONE_2.ipynb",
            ".doctrees/book/chapters/cases/GONE_2.doctree",
            "html/book/chapters/07_failure_analysis.html",
        )
    }
    for path in built.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    _remove_orphan_case_pages(tmp_path)
    kept = {name for name, path in built.items() if path.exists()}
    assert kept == {"html/book/chapters/cases/KEEP_1.html", "html/book/chapters/07_failure_analysis.html"}
