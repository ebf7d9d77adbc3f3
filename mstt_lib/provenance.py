"""Where a number comes from: the caption line under every table and figure of the book.

Each training run writes ``run.json`` (``mstt_lib.train``): the steps it took, its
minutes and device, and the weights it started from. A caption is read from those
files, never from fixed text, so a book built with another set or budget says so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from mstt_lib.params import Params

__all__ = [
    "SMALL_BUDGET_SETS",
    "run_record",
    "kept_epochs",
    "runs_summary",
    "caption",
    "record_parameter_set",
    "runs_by_set",
    "training_recipe",
    "HEADLINES_DIR",
    "record_headline",
    "model_name",
]

# Under the work folder: each chapter's main numbers, for the intro page (``record_headline``).
HEADLINES_DIR = "headlines"

# Sets that demonstrate the pipeline at a small budget rather than aim at the best numbers.
SMALL_BUDGET_SETS = ("smoke",)

_MODEL_NAMES = {"unet": "U-Net", "litemedsam": "LiteMedSAM"}


def model_name(model: str) -> str:
    """How the book names a model in prose (``"unet"`` reads as U-Net); other names unchanged."""
    return _MODEL_NAMES.get(model, model)


def run_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``run.json`` (its budget and weights), with its folder name."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run in {Path(run_dir).name} has not finished")
    return {"run": Path(run_dir).name, **json.loads(path.read_text())}


def kept_epochs(histories: pd.DataFrame, run_dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The row of each run's per-epoch history (a ``run`` column of folder names) whose weights
    the run kept, as its ``run.json`` says: ``"last"``, or ``"best (epoch N)"`` of validation
    Dice (``mstt_lib.train``). Read, not re-derived: ties and NaN follow the trainer's rule."""
    kept = {}
    for folder in run_dirs:
        record = run_record(folder)
        best = re.fullmatch(r"best \(epoch (\d+)\)", str(record.get("kept", "last")))
        kept[record["run"]] = int(best.group(1)) if best else None
    rows = []
    for run, history in histories.groupby("run", sort=False):
        if run not in kept:
            raise ValueError(f"no run folder given for the history of {run}")
        epoch = kept[run] if kept[run] is not None else history["epoch"].max()
        rows.append(history[history["epoch"] == epoch].assign(kept="last" if kept[run] is None else "best"))
    return pd.concat(rows, ignore_index=True)


def _weights(record: dict) -> str:
    if record["weights_sha256"] is None:
        return "random initialisation"
    name = Path(record["weights"]).name
    return f"weights {name} (SHA-256 {record['weights_sha256'][:12]})"


def _device(record: dict) -> str:
    precision = record.get("precision")  # absent in runs made before it was recorded
    return f"{record['device']} ({precision})" if precision else record["device"]


def runs_summary(run_dirs: Iterable[str | os.PathLike]) -> str:
    """One phrase per kind of run (model, and budget in minutes when one was set): how many,
    their steps, minutes, device and starting weights."""
    records = [run_record(folder) for folder in run_dirs]
    if not records:
        return "no trained runs"
    phrases = []
    kinds = dict.fromkeys((r["model"], r.get("train_minutes_budget")) for r in records)
    for model, minutes_budget in kinds:
        mine = [r for r in records if (r["model"], r.get("train_minutes_budget")) == (model, minutes_budget)]
        steps = sorted({r["steps"] for r in mine})
        minutes = [r["train_minutes"] for r in mine]
        # the precision too: the same seed gives other numbers in bfloat16 than in float32
        devices = "/".join(sorted({_device(r) for r in mine}))
        name = model_name(model)
        if mine[0].get("encoder"):
            norms = sorted({r.get("norm") or "batch" for r in mine})
            norm = [] if norms == ["batch"] else [f"{' and '.join(norms)} norm"]
            name += f" ({', '.join([mine[0]['encoder'], *norm])})"
        step_text = str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
        budget = f"{step_text} steps of {mine[0]['batch_size']}"
        if minutes_budget:
            budget += f" (a {minutes_budget:g}-minute budget)"
        weights = "; ".join(sorted({_weights(r) for r in mine}))
        if len(mine) > 1:
            low, high = f"{min(minutes):.1f}", f"{max(minutes):.1f}"
            spent = f"{low if low == high else f'{low}-{high}'} min each on {devices}"
            phrases.append(f"{name}: {len(mine)} runs, {budget}, {spent}, {weights}")
        else:
            phrases.append(f"{name}: {budget}, {minutes[0]:.1f} min on {devices}, {weights}")
    return "; ".join(phrases)


def caption(params: Params, run_dirs: Iterable[str | os.PathLike], extra: str = "") -> str:
    """The provenance line: parameter set, training budget and weights (and inference settings)."""
    text = f"Source: set `{params.set}`; {runs_summary(run_dirs)}"
    if extra:
        text += f"; {extra}"
    if params.set in SMALL_BUDGET_SETS:
        text += ". A small CPU budget: this demonstrates the pipeline, not the best these models can do"
    return f"*{text}.*"


def record_parameter_set(run_dir: str | os.PathLike, params: Params) -> None:
    """``parameter_set.json`` in a run folder: the named set and every value it had."""
    from mstt_lib.io import atomic_path

    with atomic_path(Path(run_dir) / "parameter_set.json") as tmp:
        tmp.write_text(json.dumps(params.to_dict(), indent=1, default=str))


def runs_by_set(run_dirs: Iterable[str | os.PathLike]) -> dict[str, list[dict[str, Any]]]:
    """The runs' records grouped by the parameter set each was trained with."""
    sets: dict[str, list[dict]] = {}
    for folder in run_dirs:
        path = Path(folder) / "parameter_set.json"
        name = json.loads(path.read_text()).get("set", "unknown") if path.is_file() else "unknown"
        sets.setdefault(name, []).append(run_record(folder))
    return sets


def training_recipe(run_dir: str | os.PathLike) -> str | None:
    """ "the paper's recipe" for a run trained with it under a set whose own recipe differs
    (chapter 8's comparison), so that a list of runs tells the two apart; else None."""
    from mstt_lib.params import PAPER_RECIPE, PARAMETER_SETS

    path = Path(run_dir) / "parameter_set.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    own = PARAMETER_SETS.get(recorded.get("set"), {})
    if all(recorded.get(key) == value for key, value in PAPER_RECIPE.items()) and any(
        own.get(key, value) != value for key, value in PAPER_RECIPE.items()
    ):
        return "the paper's recipe"
    return None


def record_headline(params: Params, chapter: str, findings: Sequence[str]) -> None:
    """A chapter's main numbers, each a short phrase, for the intro page of the book.

    Written to ``<work_dir>/headlines/<chapter>.json`` with the set that made them; the runner
    lists the headlines of the chapters it executed beside their runs, so the intro's numbers
    are the computation's, never fixed text. Returns nothing, which a notebook cell would show.
    """
    from mstt_lib.io import atomic_path

    folder = Path(params.work_dir) / HEADLINES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"chapter": chapter, "set": params.set, "findings": list(findings)}
    with atomic_path(folder / f"{chapter}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
