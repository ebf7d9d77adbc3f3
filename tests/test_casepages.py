"""The per-case pages of the book: generated from results, complete, and free of file paths."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd

from mstt_lib.casepages import case_links, page_name, remove_case_pages, write_case_pages
from mstt_lib.io import save_nifti
from mstt_lib.viz import decode_volume, viewer_payload


def _case(tmp_path, case_id):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    rng = np.random.default_rng(0)
    truth = np.zeros((16, 12, 5), np.uint8)
    truth[4:9, 3:8, 1:4] = 1
    prediction = np.zeros_like(truth)
    prediction[5:10, 3:8, 1:4] = 1
    folder = tmp_path / "private-folder-name" / case_id
    save_nifti(rng.normal(size=truth.shape).astype(np.float32), affine, folder / "t2.nii.gz")
    save_nifti(rng.normal(size=truth.shape).astype(np.float32), affine, folder / "t1.nii.gz")
    save_nifti(truth, affine, folder / "mask.nii.gz")
    save_nifti(prediction, affine, folder / "prediction.nii.gz")
    case = {
        "case_id": case_id,
        "tissue": "Fat",
        "site": "thigh",
        "t1": str(folder / "t1.nii.gz"),
        "t2": str(folder / "t2.nii.gz"),
        "native_mask": str(folder / "mask.nii.gz"),
    }
    result = {"case_id": case_id, "model": "unet", "fold": 0, "dice": 0.8, "hd95_mm": 1.0}
    return case, {**result, "prediction": str(folder / "prediction.nii.gz")}, truth, prediction


def test_one_page_per_case_with_metrics_metadata_and_a_viewer_of_truth_and_prediction(tmp_path):
    case, result, truth, prediction = _case(tmp_path, "SYN 001")
    results = pd.DataFrame([result, {**result, "model": "litemedsam", "dice": 0.6}])
    out = tmp_path / "book" / "cases"
    (out).mkdir(parents=True)
    (out / "STALE.ipynb").write_text("{}")  # a page of an earlier run
    source = "*Source: set `smoke`; U-Net: 160 steps of 8, 0.2 min on cpu, random initialisation.*"
    pages = write_case_pages(results, pd.DataFrame([case]), out, progress=False, source=source)
    assert pages == [out / "SYN_001.ipynb"] and sorted(p.name for p in out.iterdir()) == ["SYN_001.ipynb"]
    notebook = nbformat.read(pages[0], as_version=4)
    text = json.dumps(notebook)
    assert "# Case SYN 001" in notebook.cells[0].source and "thigh" in notebook.cells[0].source
    metrics = notebook.cells[1].outputs[0]["data"]["text/html"]
    assert "0.800" in metrics and "0.600" in metrics and "litemedsam" in metrics
    assert all("remove-input" in c.metadata["tags"] for c in notebook.cells[1:3])
    assert notebook.cells[-1].cell_type == "markdown" and notebook.cells[-1].source == source
    assert "private-folder-name" not in text  # no file paths in what the book publishes
    viewer = notebook.cells[2].outputs[0]["data"]["text/html"]
    uris, config = viewer_payload(viewer)
    assert config["maskNames"] == ["ground truth", "prediction (litemedsam)", "prediction (unet)"]
    _, masks = decode_volume(uris, config)
    # the case is RAS already: the viewer's masks are the files' voxels
    assert np.array_equal(masks[0], truth.astype(bool)) and np.array_equal(masks[2], prediction.astype(bool))
    # a run that writes no pages removes these, so the book does not publish them beside it
    remove_case_pages(out)
    assert not out.exists() and out.parent.is_dir()
    remove_case_pages(out)  # none there: nothing to do


def test_case_links_point_at_the_pages_and_escape_the_id():
    links = case_links(pd.DataFrame({"case_id": ["A/1<b>"], "dice": [0.5]}))
    assert links.loc[0, "case_id"] == '<a href="cases/A_1_b_.html">A/1&lt;b&gt;</a>'
    assert page_name("STS_001") == "STS_001"
