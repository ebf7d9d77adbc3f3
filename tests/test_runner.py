"""The runner's reference handling and notebook discovery."""

import nbformat
import pytest

from mstt_lib.runner import CHECK_MARKER, notebook_paths, store_references


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
