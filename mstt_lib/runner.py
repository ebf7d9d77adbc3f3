"""Runs the book: the ordered notebooks with papermill, then jupyter-book.

``mstt-book run`` executes ``notebooks/NN_*.ipynb`` in order with a named
parameter set and kernel, and writes the executed copies to ``book/chapters/``,
where ``_toc.yml`` points. ``mstt-book build`` renders them with jupyter-book
1.x into ``_build/html``; ``mstt-book book`` does both. ``mstt-book grid`` runs the
training chapter once per (model, fold) of the set, each into its own executed copy
under ``<work_dir>/grid/``. ``mstt-book references``
copies the outputs of the cells nbval compares (``# NBVAL_CHECK_OUTPUT``) from
the executed copies back into the source notebooks and strips everything else.

A ``-p NAME VALUE`` that none of the notebooks run declares in its ``parameters`` cell is
refused (exit status 2) with the names they do declare, as is an ``--only`` prefix that
matches no notebook. SIGTERM is treated like Ctrl-C: the Jupyter kernel is shut down and
the half-written executed copy and the kernel's connection file are removed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pandas as pd

from mstt_lib.io import Stopped, atomic_path, command_errors
from mstt_lib.params import DEFAULT_SET, PARAMETER_SETS, Params, get_params, project_root

__all__ = [
    "CHECK_MARKER",
    "notebook_paths",
    "declared_parameters",
    "check_parameters",
    "run_notebooks",
    "build_book",
    "store_references",
    "publish_book",
    "build_parser",
    "main",
]

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
EXECUTED_DIR = Path("book") / "chapters"


def notebook_paths(root: Path | None = None, only: Sequence[str] = ()) -> list[Path]:
    """The book's notebooks in reading order; ``only`` keeps those whose name starts so."""
    root = root or project_root()
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
        if not paths:
            raise ValueError(f"no notebook starts with {list(only)} in {root / 'notebooks'}")
    return paths


def declared_parameters(path: Path) -> list[str]:
    """The names a notebook's ``parameters``-tagged cell assigns (what papermill may set)."""
    notebook = nbformat.read(path, as_version=4)
    names: list[str] = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or "parameters" not in cell.metadata.get("tags", []):
            continue
        for node in ast.parse(cell.source).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_parameters(parameters: dict, paths: Sequence[Path]) -> None:
    """Refuse a parameter that none of ``paths`` declares (papermill would only warn and drop it)."""
    valid = sorted({name for path in paths for name in declared_parameters(path)} | {"param_set"})
    unknown = sorted(set(parameters) - set(valid))
    if unknown:
        names = ", ".join(p.name for p in paths)
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}: no notebook run ({names}) declares them; "
            f"valid names: {', '.join(valid)}"
        )


def run_notebooks(
    param_set: str = DEFAULT_SET,
    kernel: str = "python3",
    only: Sequence[str] = (),
    parameters: dict | None = None,
    root: Path | None = None,
) -> list[Path]:
    """Execute the notebooks with papermill; returns the executed copies' paths.

    Each copy is written only when its notebook ran to the end, so a failed run
    never leaves a half-executed chapter for the book to render.
    """
    import papermill

    if param_set not in PARAMETER_SETS:
        raise ValueError(f"unknown parameter set {param_set!r}; choose one of {sorted(PARAMETER_SETS)}")
    root = root or project_root()
    sources = notebook_paths(root, only)
    check_parameters(parameters or {}, sources)
    out_dir = root / EXECUTED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = get_params(param_set).work_dir
    written = []
    for source in sources:
        target = out_dir / source.name
        started = time.perf_counter()
        started_wall = time.time()
        print(f"[mstt-book] running {source.name} (set {param_set}, kernel {kernel})", flush=True)
        with atomic_path(target) as tmp:
            try:
                papermill.execute_notebook(
                    str(source),
                    str(tmp),
                    parameters={"param_set": param_set, **(parameters or {})},
                    kernel_name=kernel,
                    cwd=str(source.parent),
                    progress_bar=False,
                )
            except papermill.PapermillExecutionError as error:
                raise SystemExit(
                    f"[mstt-book] {source.name} failed in cell {error.exec_count}: "
                    f"{error.ename}: {error.evalue}"
                ) from None
            _paths_within_project(tmp, root, source, target)
        print(f"[mstt-book] {source.name} done in {time.perf_counter() - started:.0f} s", flush=True)
        _record_chapter(out_dir, source.stem, work_dir, started_wall)
        written.append(target)
    write_build_info(out_dir)
    return written


def _paths_within_project(executed: Path, root: Path, source: Path, target: Path) -> None:
    """Papermill records the absolute input and output paths (the temporary name, even) in the
    executed copy, which the book publishes: it names this machine's folders. Keep them
    relative to the project."""
    notebook = nbformat.read(executed, as_version=4)
    recorded = notebook.metadata.get("papermill", {})
    recorded["input_path"] = source.relative_to(root).as_posix()
    recorded["output_path"] = target.relative_to(root).as_posix()
    nbformat.write(notebook, executed)


BUILD_INFO = "build_info.md"
CHAPTER_RECORDS = ".build"  # under the executed copies: per chapter, the runs and headline it used


def _record_chapter(out_dir: Path, chapter: str, work_dir: Path, since: float) -> None:
    """What one executed chapter used: the run folders it touched (each use rewrites a run's
    ``parameter_set.json``) and the headline it wrote, kept until the chapter runs again, so a
    run of some chapters (``--only``) leaves the others' record as it was."""
    from mstt_lib.provenance import HEADLINES_DIR

    runs = [
        str(path.parent)
        for path in sorted(work_dir.glob("runs/*/*/parameter_set.json"))
        if path.stat().st_mtime >= since and (path.parent / "run.json").is_file()
    ]
    headline_file = work_dir / HEADLINES_DIR / f"{chapter}.json"
    fresh = headline_file.is_file() and headline_file.stat().st_mtime >= since
    record = {"runs": runs, "headline": json.loads(headline_file.read_text()) if fresh else None}
    folder = out_dir / CHAPTER_RECORDS
    folder.mkdir(exist_ok=True)
    with atomic_path(folder / f"{chapter}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def write_build_info(out_dir: Path) -> Path:
    """``build_info.md`` for the intro page: the main numbers of the executed chapters and the
    parameter sets and budgets of the runs they used, read from the chapters' records."""
    from mstt_lib.provenance import SMALL_BUDGET_SETS, runs_by_set, runs_summary, training_recipe

    records = {
        path.stem: json.loads(path.read_text())
        for path in sorted((out_dir / CHAPTER_RECORDS).glob("*.json"))
        if (out_dir / f"{path.stem}.ipynb").is_file()  # a chapter no longer in the book: not its runs
    }
    used = sorted({Path(r) for record in records.values() for r in record["runs"]})
    used = [folder for folder in used if (folder / "run.json").is_file()]
    parts = []
    headlines = [record["headline"] for record in records.values() if record["headline"]]
    if headlines:
        lines = [
            f"- {{doc}}`/{EXECUTED_DIR.as_posix()}/{h['chapter']}` (set `{h['set']}`): "
            + "; ".join(h["findings"])
            for h in headlines
        ]
        parts.append("Main results of this copy:\n\n" + "\n".join(lines))
    if not used:
        parts.append("No training run was used by the chapters of this build.")
    else:
        lines = []
        for name, run_records in runs_by_set(used).items():
            folders = [f for f in used if f.name in {r["run"] for r in run_records}]
            for cohort in sorted({f.parent.name for f in folders}):
                mine = [f for f in folders if f.parent.name == cohort]
                recipes = {f: training_recipe(f) for f in mine}
                for recipe in dict.fromkeys(recipes.values()):
                    group = [f for f in mine if recipes[f] == recipe]
                    label = f" with {recipe}" if recipe else ""
                    lines.append(f"- set `{name}`{label}, cohort `{cohort}`: {runs_summary(group)}")
        parts.append("This copy was built from these training runs:\n\n" + "\n".join(lines))
        if set(runs_by_set(used)) & set(SMALL_BUDGET_SETS):
            parts.append(
                "The `smoke` set demonstrates the pipeline at a small CPU budget; its numbers are "
                "those of models trained for minutes, not the best these models can do."
            )
    with atomic_path(out_dir / BUILD_INFO) as tmp:
        tmp.write_text("\n\n".join(parts) + "\n")
    return out_dir / BUILD_INFO


GRID_ENGINES = ("serial", "ray")


def _papermill_job(source: Path, target: Path, parameters: dict, kernel: str) -> Path:
    """One papermill run of ``source`` into ``target`` (written only when it ran to the end).

    A Ray task of the grid: module-level, so that workers import it rather than unpickle code;
    run again after a failure, it resumes from the files the first attempt left (the training
    run's checkpoint).
    """
    import papermill

    _remove_partial_copies([target])  # left by an attempt whose worker was killed
    with atomic_path(target) as tmp:
        papermill.execute_notebook(
            str(source),
            str(tmp),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(source.parent),
            progress_bar=False,
        )
    return target


def _remove_partial_copies(targets: Sequence[Path]) -> None:
    """Remove the temporary files (``atomic_path``'s) of executed copies whose writer was killed."""
    for target in targets:
        for partial in Path(target).parent.glob(f".{Path(target).name}.*.tmp.ipynb"):
            partial.unlink(missing_ok=True)


def grid_table(params: Params, models: Sequence[str], folds: Sequence[int]) -> pd.DataFrame:
    """The grid's runs, one row each: folder, epochs, steps, last losses and validation Dice,
    minutes and device, read from the run folders (wherever they were trained)."""
    from mstt_lib import pipeline

    cache = pipeline.slice_cache(params, progress=False)
    rows = []
    for model in models:
        for fold in folds:
            folder = pipeline.run_dir(params, model, int(fold), cache)
            row = {"model": model, "fold": int(fold), "run": folder.name}
            if (folder / "history.csv").is_file():
                last = pd.read_csv(folder / "history.csv").iloc[-1]
                row.update({k: int(last[k]) for k in ("epoch", "steps")})
                row.update({k: float(last[k]) for k in ("train_loss", "val_loss", "val_dice")})
            if (folder / "run.json").is_file():
                record = json.loads((folder / "run.json").read_text())
                row.update({k: record.get(k) for k in ("train_minutes", "device", "precision")})
            rows.append(row)
    return pd.DataFrame(rows)


def run_grid(
    param_set: str = DEFAULT_SET,
    kernel: str = "python3",
    parameters: dict | None = None,
    root: Path | None = None,
    engine: str = "serial",
    address: str | None = None,
    gpus_per_task: float | None = None,
    cpus_per_task: float = 1,
    progress: bool = True,
) -> list[Path]:
    """Run the training notebook for every (model, fold) of the set, one papermill run each.

    ``engine="serial"`` runs them one after another here. ``"ray"`` makes each a Ray task on
    the cluster at ``address`` (or ``RAY_ADDRESS``; else a local instance on this machine's
    resources) with ``gpus_per_task`` GPUs (default: one where the cluster has GPUs, else
    none; a fraction lets small models share a GPU) and ``cpus_per_task`` CPUs; a failed task
    is retried once and resumes from its checkpoint. The shared stages (registration,
    preprocessing) are made first, as Ray tasks per case. Every node must see the project
    and its work directory at the same path (a shared filesystem). Prints the table of runs
    and writes it to ``<work_dir>/grid/<set>/runs.csv``.
    """
    if engine not in GRID_ENGINES:
        raise ValueError(f"unknown grid engine {engine!r}; choose one of {list(GRID_ENGINES)}")
    root = root or project_root()
    source = notebook_paths(root, ["04"])[0]
    parameters = dict(parameters or {})
    check_parameters(parameters, [source])
    params = get_params(param_set, **{k: v for k, v in parameters.items() if k in Params.names()})
    out_dir = params.work_dir / "grid" / param_set
    out_dir.mkdir(parents=True, exist_ok=True)
    models = parameters.pop("models", None) or params.models
    folds = parameters.pop("folds", None) or params.folds
    jobs = []
    for model in models:
        for fold in folds:
            target = out_dir / f"{source.stem}-{model}-fold{fold}.ipynb"
            notebook_parameters = {
                **parameters,
                "param_set": param_set,
                "models": [model],
                "folds": [int(fold)],
            }
            jobs.append((source, target, notebook_parameters, kernel))
    if engine == "serial":
        written = []
        for source, target, notebook_parameters, kernel in jobs:
            model, fold = notebook_parameters["models"][0], notebook_parameters["folds"][0]
            print(f"[mstt-book] training {model} fold {fold} (set {param_set}) -> {target}", flush=True)
            written.append(_papermill_job(source, target, notebook_parameters, kernel))
    else:
        from mstt_lib import pipeline
        from mstt_lib.cluster import ray_session, run_tasks, task_options
        from mstt_lib.engines import engine_environment

        with ray_session(address) as ray:
            with engine_environment("ray"):  # the shared stages once, their cases spread as tasks
                pipeline.slice_cache(params, progress=progress)
            resources = task_options(gpus_per_task, cpus_per_task)
            where = ray.cluster_resources()
            print(
                f"[mstt-book] {len(jobs)} training task(s) of set {param_set} on Ray "
                f"({where.get('CPU', 0):g} CPUs, {where.get('GPU', 0):g} GPUs; "
                f"{resources['num_gpus']:g} GPU(s), {resources['num_cpus']:g} CPU(s) per task) -> {out_dir}",
                flush=True,
            )
            try:
                written = run_tasks(_papermill_job, jobs, resources, progress=progress, desc="grid")
            finally:
                _remove_partial_copies([job[1] for job in jobs])
    table = grid_table(params, models, folds)
    with atomic_path(out_dir / "runs.csv") as tmp:
        table.to_csv(tmp, index=False)
    print(table.round(4).to_string(index=False), flush=True)
    return written


def _stop(signum: int, frame) -> None:
    _stop_kernels()  # first: a kernel shut down politely in mid-cell prints tracebacks
    raise Stopped(signum)


def _stop_kernels() -> None:
    """Kill the kernels this process started and remove their connection files.

    papermill's kernel manager does this when a notebook ends, but not when the runner is
    interrupted in the middle of a cell: the kernel would go on computing on its own. The
    kernel is killed outright, as ``jupyter_client`` does for an immediate shutdown (a
    polite SIGTERM makes ipykernel print tracebacks from its closed sockets).
    """
    import psutil

    children = psutil.Process().children(recursive=True)
    files = []
    for child in children:
        try:
            command = child.cmdline()
            child.kill()
        except psutil.Error:
            continue
        files += [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "-f"]
    psutil.wait_procs(children, timeout=10)
    for name in files:
        if name.endswith(".json") and os.path.isfile(name):
            os.unlink(name)


@contextmanager
def stopped_cleanly() -> Iterator[None]:
    """On SIGTERM or Ctrl-C, kill the kernels, then raise ``Stopped`` (a KeyboardInterrupt).

    The interrupt passes through papermill, whose kernel manager then finds its kernel
    gone and removes its connection file, and through ``atomic_path``, which removes the
    executed copy being written.
    """
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt:
        _stop_kernels()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _copy_plotly_js(root: Path) -> None:
    """Ship plotly.js once with the book (offline, not from a CDN, not in every page)."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = root / "_static" / "plotly.min.js"
    target.parent.mkdir(exist_ok=True)
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)


def build_book(root: Path | None = None) -> Path:
    """Render the executed notebooks with jupyter-book into ``_build/html``."""
    root = root or project_root()
    missing = [p.name for p in notebook_paths(root) if not (root / EXECUTED_DIR / p.name).is_file()]
    if missing:
        raise SystemExit(f"[mstt-book] not executed yet: {missing}; run `mstt-book run` first")
    _copy_plotly_js(root)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(root)]
    subprocess.run(command, check=True, cwd=root)
    _remove_orphan_case_pages(root)
    return root / "_build" / "html"


def _remove_orphan_case_pages(root: Path) -> None:
    """Built case pages whose source page is gone (another set's or cohort's cases, or a run
    without pages): Sphinx builds incrementally and keeps them, so they would be published."""
    from mstt_lib.casepages import CASE_PAGES_DIR

    sources = {p.stem for p in (root / CASE_PAGES_DIR).glob("*.ipynb")}
    for built in (root / "_build").rglob("*"):
        in_cases = built.relative_to(root / "_build").parts[-4:-1] == CASE_PAGES_DIR.parts
        if in_cases and built.is_file() and built.name.split(".")[0] not in sources:
            built.unlink()


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"[mstt-book] git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def publish_book(
    root: Path | None = None, remote: str = "origin", branch: str = "gh-pages", html: Path | None = None
) -> str:
    """Push the built book to ``branch`` of ``remote`` with ghp-import; returns the pushed commit.

    ghp-import (what jupyter-book documents) commits ``_build/html`` (default), plus
    ``.nojekyll`` so GitHub Pages serves ``_static/``, as the whole tree of
    ``branch``, replacing the last publication, and force-pushes that branch only:
    the working tree and the checked-out branch are left as they were, so built
    HTML never lands on main. ``remote`` is a remote's name or a repository URL/path.
    """
    root = (root or project_root()).resolve()
    html = (html or root / "_build" / "html").resolve()
    if not (html / "index.html").is_file():
        raise SystemExit(f"[mstt-book] no built book: {html}/index.html is missing; run `make book` first")
    top = Path(_git(root, "rev-parse", "--show-toplevel")).resolve()
    current = _git(top, "rev-parse", "--abbrev-ref", "HEAD")
    if branch in (current, "main", "master"):
        raise SystemExit(f"[mstt-book] refusing to publish onto {branch!r}: the HTML goes to its own branch")
    reach = subprocess.run(["git", "ls-remote", "--heads", remote], cwd=top, capture_output=True, text=True)
    if reach.returncode != 0:
        reason = next((line for line in reach.stderr.splitlines() if line.strip()), "no answer")
        raise SystemExit(f"[mstt-book] cannot publish to {remote!r}: {reason.removeprefix('fatal: ')}")
    source = _git(top, "rev-parse", "--short", "HEAD")
    command = [sys.executable, "-m", "ghp_import", "--no-jekyll", "--push", "--force"]
    command += ["--remote", remote, "--branch", branch, "--message", f"Publish the book built from {source}"]
    result = subprocess.run([*command, str(html)], cwd=top, capture_output=True, text=True)
    pushed = _git(top, "rev-parse", f"refs/heads/{branch}") if result.returncode == 0 else ""
    if result.returncode != 0 or "Failed" in result.stdout or not pushed:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise SystemExit(f"[mstt-book] ghp-import failed: {lines[-1]}")
    remote_head = _git(top, "ls-remote", remote, f"refs/heads/{branch}").split()
    if not remote_head or remote_head[0] != pushed:
        raise SystemExit(f"[mstt-book] {remote} has not received {branch} ({pushed[:12]})")
    return pushed


def store_references(root: Path | None = None) -> list[Path]:
    """Make the source notebooks hold only the outputs nbval compares.

    For every cell marked ``# NBVAL_CHECK_OUTPUT`` the outputs of the executed
    copy become the stored reference; all other outputs are dropped.
    """
    root = root or project_root()
    changed = []
    for source in notebook_paths(root):
        executed_path = root / EXECUTED_DIR / source.name
        notebook = nbformat.read(source, as_version=4)
        executed = nbformat.read(executed_path, as_version=4) if executed_path.is_file() else None
        by_source = {}
        if executed is not None:
            for cell in executed.cells:
                if cell.cell_type == "code" and CHECK_MARKER in cell.source:
                    by_source[cell.source] = cell
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            reference = by_source.get(cell.source)
            if CHECK_MARKER in cell.source and reference is not None:
                cell.outputs = reference.outputs
                cell.execution_count = reference.execution_count
            else:
                cell.outputs = []
                cell.execution_count = None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        with atomic_path(source) as tmp:
            nbformat.write(notebook, tmp)
        changed.append(source)
    return changed


def _engine_for_kernels(engine: str | None, address: str | None) -> None:
    """The notebooks' kernels inherit this process's environment: the per-case engine
    (``mstt_lib.engines``) and the Ray cluster to use reach them so."""
    from mstt_lib.engines import ENGINE_VARIABLE

    if engine is not None:
        os.environ[ENGINE_VARIABLE] = engine
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """``mstt-book``'s parser and its subcommands' parsers, by name."""
    parser = argparse.ArgumentParser(prog="mstt-book", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "execute the notebooks with papermill"),
        ("book", "execute the notebooks, then build the HTML book"),
        ("grid", "train every (model, fold) of the set, one papermill run each"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--params",
            default=DEFAULT_SET,
            choices=sorted(PARAMETER_SETS),
            help=f"named parameter set (mstt_lib.params; default: {DEFAULT_SET}): smoke, the book's "
            "few CPU-minutes; cpu, 30 training minutes per cohort on a CPU; paper, the paper's "
            "settings, and best, the recipe beyond the paper, both for a GPU",
        )
        command.add_argument(
            "--kernel",
            default="python3",
            help="the Jupyter kernel papermill starts (default: python3; mstt-book is this "
            "environment's, registered by make install)",
        )
        if name != "grid":
            command.add_argument(
                "--only", nargs="*", default=(), help="notebook name prefixes, e.g. 01 (default: all)"
            )
            command.add_argument(
                "--engine",
                choices=("process", "ray"),
                default=None,
                help="where per-case stages run: a process pool (default) or Ray tasks",
            )
        else:
            command.add_argument(
                "--engine", choices=GRID_ENGINES, default="serial", help="one run after another, or Ray tasks"
            )
            command.add_argument(
                "--gpus-per-task",
                type=float,
                default=None,
                help="GPUs of a Ray task, e.g. 0.25 (default: 1 where GPUs exist, else 0)",
            )
            command.add_argument("--cpus-per-task", type=float, default=1, help="CPUs of a Ray task")
        command.add_argument(
            "--address",
            default=None,
            help="a Ray cluster (e.g. auto, or HEAD:6379); default: RAY_ADDRESS or local",
        )
        command.add_argument(
            "-p",
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help="a papermill parameter for every notebook run, the value read as YAML "
            "(e.g. -p folds '[0]' -p train_minutes 10); a name no notebook declares is refused",
        )
    commands.add_parser("build", help="build the HTML book from the executed notebooks")
    commands.add_parser("references", help="store nbval reference outputs in the source notebooks")
    publish = commands.add_parser("publish", help="push _build/html to the gh-pages branch of a git remote")
    publish.add_argument("--remote", default="origin", help="remote name or repository URL (default origin)")
    publish.add_argument("--branch", default="gh-pages", help="branch to push to (default gh-pages)")
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser, commands.choices


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``mstt-book {run,book,grid,build,references,publish}``."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)

    if args.command == "grid" and args.engine != "ray":
        for flag, value in (("--address", args.address), ("--gpus-per-task", args.gpus_per_task)):
            if value is not None:
                commands["grid"].error(f"{flag} is for --engine ray")
    if args.command in ("run", "book", "grid"):
        import yaml

        try:
            parameters = {name: yaml.safe_load(value) for name, value in args.p}
            sources = notebook_paths(only=["04"] if args.command == "grid" else args.only)
            check_parameters(parameters, sources)
        except (ValueError, yaml.YAMLError) as error:
            commands[args.command].error(" ".join(str(error).split()))
    with command_errors(parser.prog, args.debug), stopped_cleanly():
        if args.command in ("run", "book"):
            _engine_for_kernels(args.engine, args.address)
            run_notebooks(args.params, args.kernel, args.only, parameters)
        if args.command == "grid":
            run_grid(
                args.params,
                args.kernel,
                parameters,
                engine=args.engine,
                address=args.address,
                gpus_per_task=args.gpus_per_task,
                cpus_per_task=args.cpus_per_task,
            )
        if args.command in ("build", "book"):
            print(f"[mstt-book] book built: {build_book() / 'index.html'}")
        if args.command == "references":
            for path in store_references():
                print(f"[mstt-book] references stored in {path}")
        if args.command == "publish":
            commit = publish_book(remote=args.remote, branch=args.branch)
            print(f"[mstt-book] book published to {args.branch} of {args.remote} ({commit[:12]})")


if __name__ == "__main__":
    main()
