"""For the scale-out tests and benchmark: a tiny project (a folder the library takes for the repository)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mstt_lib
from mstt_lib.phantom import PhantomSettings, generate_cohort

REPOSITORY = Path(__file__).resolve().parents[1]

# Set values for a run of seconds on the tiny cohort: `python -m mstt_lib.launch -p NAME VALUE`.
TINY_RUN = {
    "encoder": "resnet18",
    "unet_weights": None,
    "image_size": 64,
    "min_tumour_voxels": 5,
    "batch_size": 4,
    "samples_per_epoch": 16,
    "val_samples": 8,
    "epochs": 2,
    "loss": "bce",
    "schedule": "constant",
    "foreground_fraction": None,
    "device": "cpu",
    "workers": 1,
}


def make_tiny_project(root: Path) -> Path:
    """``root`` as a project: ``_config.yml``, the library, chapter 4, and a 12-case synthetic
    cohort in ``data/tiny`` (64 x 64 x 8). Returns the cohort folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "_config.yml").write_text("title: tiny\n")
    (root / "mstt_lib").symlink_to(Path(mstt_lib.__file__).resolve().parent)
    (root / "notebooks").mkdir()
    shutil.copy(REPOSITORY / "notebooks" / "04_training.ipynb", root / "notebooks")
    cohort = root / "data" / "tiny"
    generate_cohort(cohort, PhantomSettings(n_cases=12, matrix=64, n_slices=8), workers=1, progress=False)
    return cohort


def library_environment() -> dict[str, str]:
    """The environment of a subprocess that must import this copy of the library."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPOSITORY), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env
