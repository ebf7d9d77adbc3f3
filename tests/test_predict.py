"""The command-line predictor on a folder of new cases."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from stop_helpers import start_as_from_a_terminal, wait_for

from mstt_lib.models import build_model
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
def cohort(phantom_subset):
    return phantom_subset(2)  # the first two cases of the session's cohort (tests/conftest.py)


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
    relative = Path(os.path.relpath(run_dir))  # the same run, named another way
    again = predict_folder([relative], cohort, out, workers=1, progress=False)
    assert (again["status"] == "done earlier").all()
    assert pd.read_csv(out / "predictions.csv")["case_id"].tolist() == sorted(cases["case_id"])
    # what the files were made with is in <case>.json: other settings, or weights trained on in
    # the run's folder, predict again instead of passing the old files off as "done earlier"
    other = predict_folder([run_dir], cohort, out, tta="none", workers=1, progress=False)
    assert other["status"].str.startswith("ok").all(), other
    model = run_dir / "model.pt"
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    retrained = predict_folder([run_dir], cohort, out, tta="none", workers=1, progress=False)
    assert retrained["status"].str.startswith("ok").all(), retrained


def test_another_scan_under_the_same_case_id_is_segmented_again(run_dir, cohort, tmp_path):
    """A new patient's images dropped into the input folder under an old case id must not be
    served the earlier scan's mask as "done earlier"."""
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    first, second = pd.read_csv(cohort / "cohort.csv").itertuples()
    for case in (first, second):
        shutil.copy(cohort / case.t1, images / f"{case.case_id}_0000.nii.gz")
        shutil.copy(cohort / case.t2, images / f"{case.case_id}_0001.nii.gz")
    settings = dict(tta="none", planes=("axial",), workers=1, progress=False)
    assert predict_folder([run_dir], images, out, **settings)["status"].str.startswith("ok").all()

    def probability(case_id):
        return nib.load(out / f"{case_id}_probability.nii.gz").get_fdata()

    before = probability(first.case_id)
    shutil.copy(cohort / second.t1, images / f"{first.case_id}_0000.nii.gz")  # the second scan, renamed
    shutil.copy(cohort / second.t2, images / f"{first.case_id}_0001.nii.gz")
    again = predict_folder([run_dir], images, out, **settings).set_index("case_id")["status"]
    assert again[first.case_id].startswith("ok") and again[second.case_id] == "done earlier"
    assert np.array_equal(probability(first.case_id), probability(second.case_id))  # the second scan's
    assert not np.array_equal(probability(first.case_id), before)


def test_an_nnunet_style_image_folder_and_an_ensemble_work_from_the_command_line(run_dir, cohort, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cases = pd.read_csv(cohort / "cohort.csv")
    case = cases.iloc[0]
    shutil.copy(cohort / case.t1, images / f"{case.case_id}_0000.nii.gz")
    shutil.copy(cohort / case.t2, images / f"{case.case_id}_0001.nii.gz")
    assert read_input(images)[0]["case_id"].tolist() == [case.case_id]
    second = shutil.copytree(run_dir, tmp_path / "second_run")  # the same run named twice is used once
    main(
        [
            "-r",
            str(run_dir),
            str(second),
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
    again = predict_folder([run_dir], cohort, out, tta="none", planes=("axial",), workers=1, progress=False)
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


# ---------------------------------------------------------------------------
# Issue 13: relative output folders, bad voxels and case ids, and command-line errors.


@pytest.fixture(scope="module")
def t1_run_dir(tmp_path_factory):
    """A finished T1-only run (3 channels, random weights): no registration, so quick."""
    folder = tmp_path_factory.mktemp("t1run")
    torch.manual_seed(0)
    torch.save(build_model("unet", 3, "resnet18").state_dict(), folder / "model.pt")
    (folder / "params.json").write_text(
        json.dumps({"model": "unet", "encoder": "resnet18", "image_size": 32})
    )
    preprocessing = {
        "modalities": ["T1"],
        "spacing_mm": 4.0,
        "low_percentile": 0.05,
        "high_percentile": 99.95,
        "channels": [f"T1[{o}]" for o in ("index-1", "index", "index+1")],
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


def _plain_folder(cohort, folder, t2=True):
    """The cohort's cases as <case>_0000.nii.gz (T1) and <case>_0001.nii.gz (T2) files."""
    folder.mkdir()
    cases = pd.read_csv(cohort / "cohort.csv")
    for case in cases.itertuples():
        shutil.copy(cohort / case.t1, folder / f"{case.case_id}_0000.nii.gz")
        if t2:
            shutil.copy(cohort / case.t2, folder / f"{case.case_id}_0001.nii.gz")
    return folder, cases["case_id"].tolist()


def _set_voxel(path, value, channel_dtype=np.float32):
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=channel_dtype)
    data[tuple(s // 2 for s in data.shape)] = value
    nib.save(nib.Nifti1Image(data, image.affine), path)


def _cli(args, capsys):
    """mstt-predict in-process: (exit status, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # what the interpreter does with such an exit: print it, status 1
        return 1, err + code + "\n"
    return code, err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


FAST = ["--tta", "none", "--planes", "axial", "--workers", "1"]


def test_a_relative_output_folder_works_for_a_t1_t2_run(run_dir, cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(["-r", run_dir, "-i", cohort, "-o", "predictions", *FAST], capsys)
    table = pd.read_csv(tmp_path / "predictions" / "predictions.csv")
    assert code == 0, err
    assert len(table) == 2 and table["status"].str.startswith("ok").all(), table


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["+inf", "-inf", "nan"])
def test_a_t1_only_case_with_non_finite_voxels_is_an_error_and_the_other_is_predicted(
    t1_run_dir, cohort, tmp_path, capsys, value
):
    images, (good, bad) = _plain_folder(cohort, tmp_path / "images", t2=False)
    _set_voxel(images / f"{bad}_0000.nii.gz", value)
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and "1 case(s) were not segmented" in _error_line(err)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("case_id")
    kind = {np.inf: "+Inf", -np.inf: "-Inf"}.get(value, "NaN")
    assert (
        f"1 {kind} voxel(s)" in table.loc[bad, "status"] and f"{bad}_0000.nii.gz" in table.loc[bad, "status"]
    )
    assert table.loc[good, "status"].startswith("ok")
    assert not (tmp_path / "out" / f"{bad}.nii.gz").exists()
    probability = np.asarray(nib.load(tmp_path / "out" / f"{good}_probability.nii.gz").dataobj)
    assert np.isfinite(probability).all()


def test_a_t2_with_inf_never_reaches_registration(run_dir, cohort, tmp_path, monkeypatch):
    import mstt_lib.registration as registration

    images, (good, bad) = _plain_folder(cohort, tmp_path / "images")
    _set_voxel(images / f"{bad}_0001.nii.gz", np.inf)
    registered = []
    real = registration.register_cohort

    def watched(cases, *args, **kwargs):
        registered.extend(cases["case_id"])
        assert bad not in set(cases["case_id"]), "a case with Inf voxels was sent to ANTs"
        return real(cases, *args, **kwargs)

    monkeypatch.setattr(registration, "register_cohort", watched)
    table = predict_folder(
        [run_dir], images, tmp_path / "out", tta="none", planes=["axial"], workers=1, progress=False
    )
    table = table.set_index("case_id")
    assert registered == [good]
    assert "1 +Inf voxel(s)" in table.loc[bad, "status"] and table.loc[good, "status"].startswith("ok")


def _cohort_table(cohort, folder, edit):
    """A copy of the cohort's table in ``folder`` (absolute image paths), with rows edited."""
    folder.mkdir()
    cases = pd.read_csv(cohort / "cohort.csv")
    for column in ("t1", "t2", "mask"):
        cases[column] = [str(cohort / p) for p in cases[column]]
    edit(cases)
    cases.to_csv(folder / "cohort.csv", index=False)
    return folder


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.loc.__setitem__((1, "case_id"), t.loc[0, "case_id"]), "duplicate case id (2 rows)"),
        (lambda t: t.loc.__setitem__((1, "case_id"), ""), "a row with no case id: empty case id (row 2)"),
        (
            lambda t: t.loc.__setitem__((1, "case_id"), "../ESCAPED"),
            "case id '../ESCAPED' is not a plain name",
        ),
    ],
    ids=["duplicate", "empty", "escaping"],
)
def test_the_predictor_makes_the_case_table_checks_of_load_cohort(
    t1_run_dir, cohort, tmp_path, capsys, edit, expected
):
    folder = _cohort_table(cohort, tmp_path / "new", edit)
    out = tmp_path / "work" / "out"
    code, err = _cli(["-r", t1_run_dir, "-i", folder, "-o", out, *FAST], capsys)
    line = _error_line(err)
    assert code == 1 and line.startswith("mstt-predict: error:") and expected in line
    assert str(folder / "cohort.csv") in line
    assert not any(p.name.startswith("ESCAPED") for p in tmp_path.rglob("*"))
    assert not list(out.glob("*.nii.gz"))


def test_a_plain_file_whose_case_id_is_not_a_plain_name_is_refused(t1_run_dir, cohort, tmp_path, capsys):
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)
    first = sorted(images.iterdir())[0]
    first.rename(images / "bad id_0000.nii.gz")
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and "case id 'bad id' is not a plain name" in _error_line(err)


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize(
    "damage, file",
    [
        (lambda run: (run / "model.pt").write_bytes(b"\x80\x02garbage"), "model.pt"),
        (lambda run: (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:5000]), "model.pt"),
        (lambda run: (run / "params.json").write_text('{"model": "unet", "enc'), "params.json"),
        (lambda run: (run / "preprocessing.json").write_text(""), "preprocessing.json"),
    ],
    ids=["model-garbage", "model-truncated", "params-truncated", "preprocessing-empty"],
)
def test_a_damaged_run_folder_is_one_line_naming_the_file(t1_run_dir, cohort, tmp_path, capsys, damage, file):
    run = _copy_run(t1_run_dir, tmp_path)
    damage(run)
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)
    code, err = _cli(["-r", run, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1
    assert err.strip().splitlines() == [_error_line(err)]
    assert str(run / file) in err and err.startswith("mstt-predict: error:")


def test_a_run_whose_weights_do_not_fit_its_model_names_the_run(t1_run_dir, cohort, tmp_path, capsys):
    run = _copy_run(t1_run_dir, tmp_path)
    (run / "params.json").write_text(json.dumps({"model": "unet", "encoder": "resnet34", "image_size": 32}))
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)
    code, err = _cli(["-r", run, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and f"{run}: cannot load the trained run" in _error_line(err)


def test_an_output_path_that_is_a_file_is_one_line(t1_run_dir, cohort, tmp_path, capsys):
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)
    (tmp_path / "out").write_text("not a folder")
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and err.strip().splitlines() == [_error_line(err)]
    assert "is not a folder" in err and str(tmp_path / "out") in err
    assert (tmp_path / "out").read_text() == "not a folder"


def test_a_read_only_output_folder_is_one_line(t1_run_dir, cohort, tmp_path, capsys, monkeypatch):
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)
    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # root ignores chmod, so the refusal is simulated
        if dir is not None and Path(dir).resolve() == out.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / "x"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", out, *FAST], capsys)
    assert code == 1 and err.strip().splitlines() == [_error_line(err)]
    assert "cannot write to the output folder (Permission denied)" in err and str(out) in err
    assert list(out.iterdir()) == []


def test_a_full_disk_fails_each_case_into_predictions_csv_and_the_run_goes_on(
    t1_run_dir, cohort, tmp_path, capsys, monkeypatch
):
    images, (first, second) = _plain_folder(cohort, tmp_path / "images", t2=False)
    real = nib.save

    def full_for_first(image, filename, *args, **kwargs):
        if Path(filename).name.startswith(f".{first}"):  # atomic_path's temporary name
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(image, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", full_for_first)
    out = tmp_path / "out"
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", out, *FAST], capsys)
    assert code == 1 and "1 case(s) were not segmented" in _error_line(err)
    table = pd.read_csv(out / "predictions.csv").set_index("case_id")
    assert "No space left on device" in table.loc[first, "status"]
    assert table.loc[second, "status"].startswith("ok")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(first)) == []  # nothing half-written


def test_a_disk_full_for_the_status_table_is_one_line(t1_run_dir, cohort, tmp_path, capsys, monkeypatch):
    images, _ = _plain_folder(cohort, tmp_path / "images", t2=False)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "predictions.csv")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, err = _cli(["-r", t1_run_dir, "-i", images, "-o", tmp_path / "out", *FAST], capsys)
    assert code == 1 and _error_line(err) == "mstt-predict: error: No space left on device: predictions.csv"


def test_usage_errors_exit_2_and_debug_shows_the_traceback(t1_run_dir, cohort, tmp_path):
    run = _copy_run(t1_run_dir, tmp_path)
    (run / "params.json").write_text("{")
    command = [
        sys.executable,
        "-m",
        "mstt_lib.predict",
        "-r",
        str(run),
        "-i",
        str(cohort),
        "-o",
        str(tmp_path / "o"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    usage = subprocess.run(command[:3] + ["-i", "x"], capture_output=True, text=True, env=environment)
    assert usage.returncode == 2 and "required" in usage.stderr
    plain = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    expected = f"mstt-predict: error: {run / 'params.json'}: not valid JSON (damaged or truncated?): "
    assert plain.stderr.strip().startswith(expected) and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, env=environment)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RunFolderError" in debug.stderr


def test_an_ensemble_folder_predicts_with_its_runs_and_applies_its_post_processing(run_dir, cohort, tmp_path):
    from scipy import ndimage

    from mstt_lib.postprocess import largest_component, write_choice

    plain_out, ensemble_out = tmp_path / "plain", tmp_path / "ensemble"
    predict_folder([run_dir], cohort, plain_out, tta="none", planes=("axial",), workers=1, progress=False)
    ensemble = run_dir.parent / "unet-ensemble-test"
    ensemble.mkdir(exist_ok=True)
    (ensemble / "ensemble.json").write_text(json.dumps({"runs": [run_dir.name]}))
    write_choice(ensemble, {"postprocessing": "largest", "threshold": 0.3})
    table = predict_folder(
        [ensemble], cohort, ensemble_out, tta="none", planes=("axial",), workers=1, progress=False
    )
    assert table["status"].str.startswith("ok").all(), table
    several = lowered = 0
    for case_id in table["case_id"]:
        plain = np.asarray(nib.load(plain_out / f"{case_id}.nii.gz").dataobj) > 0
        probability = np.asarray(nib.load(plain_out / f"{case_id}_probability.nii.gz").dataobj)
        kept = np.asarray(nib.load(ensemble_out / f"{case_id}.nii.gz").dataobj) > 0
        assert np.array_equal(plain, probability >= 0.5)
        assert np.array_equal(kept, largest_component(probability >= 0.3))
        several += ndimage.label(plain, np.ones((3, 3, 3)))[1] > 1
        lowered += ((probability >= 0.3) & ~plain).any()
        meta = json.loads((ensemble_out / f"{case_id}.json").read_text())
        assert (meta["postprocessing"], meta["threshold"]) == ("largest", 0.3)
    assert lowered, "some voxels should lie between 0.3 and 0.5 for the threshold to be tested"
    assert several, "the random model's masks should have more than one piece for this test to bite"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_prediction_leaves_no_process_or_temporary_file_behind(run_dir, cohort, tmp_path, signum):
    """Stopped while a registration worker registers a case (Ctrl-C: to the whole process group,
    as a terminal sends it): the workers end too, in one line, nothing is left in the system's
    temporary folder, and the same command then finishes."""
    psutil = pytest.importorskip("psutil")
    out, system_tmp = tmp_path / "out", tmp_path / "system-tmp"
    system_tmp.mkdir()
    command = [sys.executable, "-m", "mstt_lib.predict", "-r", run_dir, "-i", cohort, "-o", out]
    environment = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "TMPDIR": str(system_tmp),
    }
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    predictor = start_as_from_a_terminal(command, env=environment, **pipes)
    try:
        # a case's staging folder: a worker is inside register_case
        wait_for(lambda: any(out.glob(".registration/*/.*.partial")), predictor)
        workers = psutil.Process(predictor.pid).children(recursive=True)
        if signum == signal.SIGINT:
            os.killpg(predictor.pid, signum)
        else:
            predictor.send_signal(signum)
        output, _ = predictor.communicate(timeout=60)
    finally:
        if predictor.poll() is None:
            os.killpg(predictor.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"worker(s) still running: {[w.cmdline() for w in alive]}"
    # Ctrl-C: killed by SIGINT (test_io); SIGTERM: exit status 143
    assert predictor.returncode == (-signum if signum == signal.SIGINT else 128 + signum), output
    reason = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
    assert output.splitlines()[-1].startswith(f"mstt-predict: {reason}; what it finished is kept"), output
    assert "Traceback" not in output and "leaked" not in output  # (the resource tracker's warning)
    assert [p.name for p in out.rglob("*") if ".tmp" in p.name or ".partial" in p.name] == []
    assert list(system_tmp.iterdir()) == []  # ANTs' transforms included
    if signum == signal.SIGTERM:  # and the same command goes on from there
        rerun = subprocess.run(list(map(str, command)), env=environment, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert pd.read_csv(out / "predictions.csv")["status"].str.startswith("ok").all()
        assert list(system_tmp.iterdir()) == []


def test_an_interrupted_prediction_goes_on_with_the_case_it_had_not_finished(
    t1_run_dir, cohort, tmp_path, monkeypatch
):
    """Stopped after a case's image files but before its record: that case, and only it, is redone."""
    import mstt_lib.predictor as predictor_module

    written = []

    def stopped_after_the_second(output_dir, case_id, *args, **kwargs):
        write_prediction(output_dir, case_id, *args, **kwargs)
        written.append(case_id)
        if len(written) == 2:
            raise KeyboardInterrupt

    write_prediction = predictor_module.write_prediction
    out = tmp_path / "out"
    options = dict(tta="none", planes=("axial",), workers=1, progress=False)
    monkeypatch.setattr(predictor_module, "write_prediction", stopped_after_the_second)
    with pytest.raises(KeyboardInterrupt):
        predict_folder([t1_run_dir], cohort, out, **options)
    monkeypatch.undo()
    first, second = written
    assert (out / f"{second}.nii.gz").is_file() and not (out / f"{second}.json").exists()
    again = predict_folder([t1_run_dir], cohort, out, **options).set_index("case_id")["status"]
    assert again[first] == "done earlier" and again[second].startswith("ok"), again
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []
