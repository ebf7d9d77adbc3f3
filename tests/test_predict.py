"""The command-line predictor on a folder of new cases."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mstt_lib.models import build_model
from mstt_lib.phantom import PhantomSettings, generate_cohort
from mstt_lib.predict import STAGES, main, predict_folder, read_input


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 'run' (random weights): small samples at 3 mm so that the test is quick."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    torch.save(build_model("unet", 6, "resnet18").state_dict(), folder / "model.pt")
    (folder / "params.json").write_text(
        json.dumps({"model": "unet", "encoder": "resnet18", "image_size": 64})
    )
    channels = [f"{m}[{o}]" for m in ("T1", "T2") for o in ("index-1", "index", "index+1")]
    preprocessing = {
        "modalities": ["T1", "T2"],
        "spacing_mm": 3.0,
        "low_percentile": 0.05,
        "high_percentile": 99.95,
        "channels": channels,
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, PhantomSettings(n_cases=2, matrix=64, n_slices=8), workers=1, progress=False)
    return folder


def test_predictions_are_written_on_each_cases_native_t2_grid_and_reruns_skip_them(run_dir, cohort, tmp_path):
    out = tmp_path / "out"
    table = predict_folder([run_dir], cohort, out, tta="paper", workers=1, progress=False)
    assert table["status"].str.startswith("ok").all(), table
    cases = pd.read_csv(cohort / "cohort.csv")
    for row in cases.itertuples():
        t2 = nib.load(cohort / row.t2)
        for name in (f"{row.case_id}.nii.gz", f"{row.case_id}_probability.nii.gz"):
            image = nib.load(out / name)
            assert image.shape == t2.shape
            np.testing.assert_allclose(image.affine, t2.affine, atol=1e-5)
        mask = np.asarray(nib.load(out / f"{row.case_id}.nii.gz").dataobj)
        assert set(np.unique(mask)) <= {0, 1}
    again = predict_folder([run_dir], cohort, out, workers=1, progress=False)
    assert (again["status"] == "done earlier").all()
    assert pd.read_csv(out / "predictions.csv")["case_id"].tolist() == sorted(cases["case_id"])


def test_an_nnunet_style_image_folder_and_an_ensemble_work_from_the_command_line(run_dir, cohort, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cases = pd.read_csv(cohort / "cohort.csv")
    case = cases.iloc[0]
    shutil.copy(cohort / case.t1, images / f"{case.case_id}_0000.nii.gz")
    shutil.copy(cohort / case.t2, images / f"{case.case_id}_0001.nii.gz")
    assert read_input(images)["case_id"].tolist() == [case.case_id]
    main(
        [
            "-r",
            str(run_dir),
            str(run_dir),
            "-i",
            str(images),
            "-o",
            str(tmp_path / "out"),
            "--tta",
            "none",
            "--planes",
            "axial",
            "--workers",
            "1",
        ]
    )
    meta = json.loads((tmp_path / "out" / f"{case.case_id}.json").read_text())
    assert meta["planes"] == ["axial"] and len(meta["runs"]) == 2


def test_a_case_missing_its_t2_is_reported_and_the_others_still_predicted(run_dir, cohort, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cases = pd.read_csv(cohort / "cohort.csv")
    for k, case in enumerate(cases.itertuples()):
        shutil.copy(cohort / case.t1, images / f"{case.case_id}_0000.nii.gz")
        if k == 0:
            shutil.copy(cohort / case.t2, images / f"{case.case_id}_0001.nii.gz")
    with pytest.raises(SystemExit, match="1 case"):
        main(
            [
                "-r",
                str(run_dir),
                "-i",
                str(images),
                "-o",
                str(tmp_path / "out"),
                "--tta",
                "none",
                "--workers",
                "1",
            ]
        )
    table = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("case_id")
    bad = cases.iloc[1].case_id
    assert "file not found" in table.loc[bad, "status"] and bad in table.index
    assert table.loc[cases.iloc[0].case_id, "status"].startswith("ok")


def test_no_run_or_an_unfinished_run_is_a_clear_error(cohort, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        predict_folder([], cohort, tmp_path)
    with pytest.raises(FileNotFoundError, match="not a finished training run"):
        predict_folder([tmp_path], cohort, tmp_path / "out")


def test_predictions_csv_lists_each_cases_seconds_per_stage(run_dir, cohort, tmp_path):
    out = tmp_path / "out"
    predict_folder([run_dir], cohort, out, tta="none", planes=("axial",), workers=1, progress=False)
    table = pd.read_csv(out / "predictions.csv")
    assert [f"seconds_{s}" for s in STAGES] == [c for c in table if c.startswith("seconds_")]
    for stage in STAGES:  # T1 and T2: registered, so every stage took time
        assert (table[f"seconds_{stage}"] > 0).all(), stage
    again = predict_folder([run_dir], cohort, out, workers=1, progress=False)
    assert again["seconds_infer"].isna().all()  # done earlier: nothing measured now


def test_a_t1_only_run_is_not_registered(run_dir, cohort, tmp_path):
    t1_run = tmp_path / "t1-run"
    t1_run.mkdir()
    torch.manual_seed(0)
    torch.save(build_model("unet", 3, "resnet18").state_dict(), t1_run / "model.pt")
    (t1_run / "params.json").write_text((run_dir / "params.json").read_text())
    preprocessing = json.loads((run_dir / "preprocessing.json").read_text())
    preprocessing["modalities"], preprocessing["channels"] = ["T1"], preprocessing["channels"][:3]
    (t1_run / "preprocessing.json").write_text(json.dumps(preprocessing))
    out = tmp_path / "out"
    table = predict_folder([t1_run], cohort, out, tta="none", planes=("axial",), workers=1, progress=False)
    assert table["status"].str.startswith("ok").all(), table
    assert (table["seconds_register"] == 0).all() and not (out / ".registration").exists()
    t1 = nib.load(cohort / pd.read_csv(cohort / "cohort.csv")["t1"].iloc[0])
    assert nib.load(out / f"{table['case_id'].iloc[0]}.nii.gz").shape == t1.shape  # on the T1 grid
