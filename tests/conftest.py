"""Fixtures shared by the test modules: a tiny project for the scale-out tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_helpers import make_tiny_project


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> tuple[Path, Path]:
    """(project root, cohort folder): made once per session; tests work inside it."""
    root = tmp_path_factory.mktemp("project")
    return root, make_tiny_project(root)
