"""The book's per-case pages: one page for every scored test case, made from the run's results.

Each page is a small notebook with its outputs already in it (the case's metadata, its
metrics per model, and the three-plane viewer with the ground truth and every model's
prediction), so jupyter-book renders it with execution off like the chapters. Pages
carry the public case id and the clinical columns of the case table, never file paths.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
from tqdm import tqdm

from mstt_lib.viz import case_viewer, load_mask

__all__ = ["CASE_PAGES_DIR", "page_name", "write_case_pages", "remove_case_pages", "case_links"]

CASE_PAGES_DIR = Path("book") / "chapters" / "cases"
METADATA_COLUMNS = ("tissue", "site", "diagnosis", "annotation_modality", "fold")
METRIC_COLUMNS = {
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
    "surface_dice": "surface Dice",
    "volume_true_ml": "tumour (ml)",
    "volume_pred_ml": "predicted (ml)",
    "fp_remote_ml": "false positive away (ml)",
    "fn_ml": "missed (ml)",
    "failure_kind": "failure kind",
}


def page_name(case_id: str) -> str:
    """A file name for the case's page: the id with anything but letters, digits, ``-``, ``_`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(case_id))


def _html_output(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={"text/html": text, "text/plain": "<html output>"})


def _output_cell(comment: str, text: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(f"# {comment} (written by mstt_lib.casepages)")
    cell.metadata["tags"] = ["remove-input"]
    cell.outputs = [_html_output(text)]
    return cell


def _metadata_markdown(case: pd.Series, rows: pd.DataFrame) -> str:
    lines = ["| | |", "| --- | --- |"]
    for column in METADATA_COLUMNS:
        value = rows[column].iloc[0] if column in rows else case.get(column)
        if value is not None and not (isinstance(value, float) and pd.isna(value)) and str(value):
            lines.append(f"| {column.replace('_', ' ')} | {html.escape(str(value))} |")
    return "\n".join(lines)


def _metrics_table(rows: pd.DataFrame) -> str:
    columns = [c for c in METRIC_COLUMNS if c in rows]
    table = rows.set_index("model")[columns].rename(columns=METRIC_COLUMNS)
    return table.to_html(float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="mstt-metrics")


def write_case_pages(
    results: pd.DataFrame,
    cases: pd.DataFrame,
    out_dir: str | Path,
    chapter: str = "the failure analysis",
    progress: bool = True,
    source: str = "",
) -> list[Path]:
    """One page per case of ``results`` (rows per model and case: metrics, ``fold``,
    ``prediction`` file) into ``out_dir``, replacing the pages of an earlier run.

    ``cases`` gives the images (``t1``, ``t2`` on the mask's grid after registration),
    ``native_mask`` and the clinical columns. ``source`` (the chapter's provenance caption:
    set, budget, weights) ends each page, so a page read on its own still says where its
    numbers came from. The folder is written beside and swapped in at the end, so an
    interrupted run leaves the previous pages whole.
    """
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    by_case = cases.set_index("case_id")
    written = []
    case_ids = sorted(results["case_id"].unique())
    for case_id in tqdm(case_ids, desc="case pages", unit="case", disable=not progress):
        rows = results[results["case_id"] == case_id].sort_values("model")
        case = by_case.loc[case_id]
        predictions = {
            f"prediction ({row.model})": load_mask(row.prediction, case_id) for row in rows.itertuples()
        }
        viewer_row = pd.Series({**case.to_dict(), "case_id": case_id, "mask": case["native_mask"]})
        viewer = case_viewer(viewer_row, predictions)
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        notebook.cells = [
            nbformat.v4.new_markdown_cell(
                f"# Case {case_id}\n\n"
                f"A test case of {chapter}, scored in cross-validation by the fold that did not train "
                "on it. The viewer shows the ground truth (green) and each model's prediction; "
                "click a plane to move the other two there.\n\n" + _metadata_markdown(case, rows)
            ),
            _output_cell("metrics per model", _metrics_table(rows)),
            _output_cell("three-plane viewer", viewer.data),
        ]
        if source:
            notebook.cells.append(nbformat.v4.new_markdown_cell(source))
        path = staging / f"{page_name(case_id)}.ipynb"
        nbformat.write(notebook, path)
        written.append(out_dir / path.name)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return written


def remove_case_pages(out_dir: str | os.PathLike) -> None:
    """Remove the pages ``write_case_pages`` wrote (the book lists every page in the folder)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        shutil.rmtree(out_dir)


def case_links(table: pd.DataFrame, folder: str = "cases") -> pd.DataFrame:
    """``table`` with its ``case_id`` column as links to the case pages (for ``to_html(escape=False)``)."""
    table = table.copy()
    table["case_id"] = [
        f'<a href="{folder}/{page_name(c)}.html">{html.escape(str(c))}</a>' for c in table["case_id"]
    ]
    return table
