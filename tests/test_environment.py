"""environment.yml (conda) and pyproject.toml declare the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalise(spec: str) -> tuple[str, str]:
    requirement = Requirement(spec)
    name = re.sub(r"[-_.]+", "-", requirement.name).lower()
    return name, str(requirement.specifier)


def _pyproject() -> set[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]
    return {_normalise(s) for s in specs}


def _environment() -> tuple[set[tuple[str, str]], list]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    return {_normalise(s) for s in pip_section if not s.startswith("-e")}, conda


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    pip_specs, _ = _environment()
    expected = _pyproject()
    assert pip_specs == expected, (
        f"only in environment.yml: {sorted(pip_specs - expected)}; "
        f"only in pyproject.toml: {sorted(expected - pip_specs)}"
    )


def test_environment_yml_python_matches_requires_python():
    _, conda = _environment()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    python = next(d for d in conda if d.startswith("python"))
    version = python.split("=")[-1]
    assert Requirement(f"python{requires}").specifier.contains(f"{version}.0"), (python, requires)


def test_what_make_lab_and_make_publish_run_is_a_runtime_dependency():
    """`make lab` runs JupyterLab (and mstt_lib.lab imports psutil); `make publish` runs ghp-import."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_normalise(s)[0] for s in project["dependencies"]}
    assert {"jupyterlab", "ghp-import", "psutil", "ipykernel"} <= runtime
