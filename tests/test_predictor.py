"""The Predictor: runs that describe themselves (plans.json), fold runs found in a parent folder,
arrays, files and DICOM input, and DICOM SEG output that round-trips."""

import json
import logging
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mstt_lib import plans as plans_module
from mstt_lib.models import build_model
from mstt_lib.predictor import Predictor, RunFolderError, find_fold_runs
from mstt_lib.registration import RegistrationSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_dicom import LPS_TO_RAS, make_series  # noqa: E402  (the tests' synthetic DICOM writer)


def _run(folder: Path, modalities=("T1", "T2"), spacing=3.0, fold=0, seed=0) -> Path:
    """A finished 'run' with random weights, as ``train`` lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    channels = [f"{m}[{o}]" for m in modalities for o in ("index-1", "index", "index+1")]
    torch.save(build_model("unet", len(channels), "resnet18").state_dict(), folder / "model.pt")
    training = {"model": "unet", "encoder": "resnet18", "image_size": 32, "fold": fold}
    (folder / "params.json").write_text(json.dumps(training))
    preprocessing = {
        "modalities": list(modalities),
        "spacing_mm": spacing,
        "low_percentile": 0.05,
        "high_percentile": 99.95,
        "channels": channels,
    }
    (folder / "preprocessing.json").write_text(json.dumps(preprocessing))
    return folder


def _plans(folder: Path, registration, cases: pd.DataFrame | None = None) -> None:
    preprocessing = json.loads((folder / "preprocessing.json").read_text())
    fingerprint = plans_module.data_fingerprint(
        cases if cases is not None else pd.DataFrame(columns=["case_id"])
    )
    plans_module.write_plans(
        folder,
        parameter_set={"set": "test", "registration": getattr(registration, "transform", None)},
        registration=registration,
        preprocessing=preprocessing,
        image_size=32,
        data=fingerprint,
        train_cases=[],
        val_cases=[],
    )


@pytest.fixture(scope="module")
def cohort(phantom_subset):
    return phantom_subset(1)  # the first case of the session's cohort (tests/conftest.py)


# --------------------------------------------------------------------------- plans.json


def test_a_run_trained_with_affine_registration_predicts_with_affine(cohort, tmp_path, monkeypatch):
    import mstt_lib.registration as registration

    run = _run(tmp_path / "run")
    affine = RegistrationSettings(transform="affine", seed=3, min_mutual_information=0.0)
    _plans(run, affine)
    used = []
    real = registration.register_cohort

    def spy(cases, folder, settings, *args, **kwargs):
        used.append(settings)
        return real(cases, folder, settings, *args, **kwargs)

    monkeypatch.setattr(registration, "register_cohort", spy)
    predictor = Predictor(tta="none", planes=("axial",), device="cpu", workers=1, progress=False)
    table = predictor.load_runs([run]).predict_folder(cohort, tmp_path / "out")
    assert table["status"].str.startswith("ok").all(), table
    assert used == [affine]  # the run's own settings, not RegistrationSettings()
    case = table["case_id"][0]
    assert json.loads((tmp_path / "out" / f"{case}.json").read_text())["registration"] == affine.key()
    written = json.loads(next((tmp_path / "out" / ".registration").glob("*/settings.json")).read_text())
    assert written["transform"] == "affine" and written["seed"] == 3


def test_a_run_without_plans_falls_back_to_the_defaults_with_a_warning(tmp_path, caplog):
    run = _run(tmp_path / "old")
    with caplog.at_level(logging.WARNING, logger="mstt_lib.predictor"):
        predictor = Predictor(device="cpu").load_runs([run])
    assert predictor.registration == RegistrationSettings()
    assert "record no plans.json" in caplog.text and str(run) in caplog.text


def test_runs_registered_differently_cannot_be_averaged(tmp_path):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    _plans(a, RegistrationSettings(transform="rigid"))
    _plans(b, RegistrationSettings(transform="affine"))
    with pytest.raises(RunFolderError, match="registered differently"):
        Predictor(device="cpu").load_runs([a, b])


def test_plans_record_the_data_environment_and_settings(cohort, tmp_path):
    cases = pd.read_csv(cohort / "cohort.csv")
    for column in ("t1", "t2", "mask"):
        cases[column] = [str(cohort / p) for p in cases[column]]
    run = _run(tmp_path / "run")
    _plans(run, RegistrationSettings(transform="affine"), cases)
    plans = plans_module.read_plans(run)
    case = cases["case_id"][0]
    import hashlib

    expected = hashlib.sha256(Path(cases["t2"][0]).read_bytes()).hexdigest()
    assert plans["data"]["files"][case]["t2"] == expected and plans["data"]["n_cases"] == 1
    assert plans["registration"]["transform"] == "affine"
    assert plans["preprocessing"]["spacing_mm"] == 3.0 and plans["preprocessing"]["image_size"] == 32
    environment = plans["environment"]
    assert environment["libraries"]["torch"] == torch.__version__.split("+")[0] or environment["libraries"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    commit = environment["code_commit"]
    assert commit == "unknown" or (len(commit) == 40 and int(commit, 16) >= 0)
    assert plans_module.registration_from_plans(plans) == RegistrationSettings(transform="affine")
    described = plans_module.describe_run(run)
    assert described["params"]["model"] == "unet" and described["plans"] == plans


def test_file_hashes_are_cached_by_size_and_time_and_redone_when_a_file_changes(tmp_path):
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"one")
    cache: dict = {}
    first = plans_module.file_sha256(path, cache)
    key = str(path.resolve())
    cache[key][2] = "cached"  # a hit must come from the cache, not from reading the file
    assert plans_module.file_sha256(path, cache) == "cached"
    path.write_bytes(b"two!")  # another size: read again
    assert plans_module.file_sha256(path, cache) not in ("cached", first)
    table = pd.DataFrame({"case_id": ["a"], "t1": [str(path)]})
    cache_file = tmp_path / "hashes.json"
    one = plans_module.data_fingerprint(table, cache_file=cache_file)
    assert json.loads(cache_file.read_text())[key][2] == one["files"]["a"]["t1"]
    path.write_bytes(b"three")
    assert plans_module.data_fingerprint(table, cache_file=cache_file)["sha256"] != one["sha256"]


# --------------------------------------------------------------------------- finding runs


def test_fold_runs_and_ensembles_are_found_in_a_parent_folder(tmp_path):
    parent = tmp_path / "runs"
    fold0 = _run(parent / "unet-fold0-aaaa1111", fold=0)
    fold1 = _run(parent / "unet-fold1-bbbb2222", fold=1)
    (parent / "unet-fold2-cccc3333").mkdir()  # unfinished: no model.pt
    assert find_fold_runs(parent) == [fold0, fold1]
    assert find_fold_runs(parent, folds=[1]) == [fold1]
    assert find_fold_runs(fold0) == [fold0]
    predictor = Predictor(device="cpu").initialize_from_trained_model_folder(parent)
    assert predictor.run_dirs == [fold0, fold1] and len(predictor.models) == 2
    other = _run(parent / "unet-fold0-dddd4444", spacing=2.0)  # another training's fold 0
    with pytest.raises(RunFolderError, match="2 different trainings"):
        find_fold_runs(parent)
    shutil.rmtree(other)
    ensemble = parent / "unet-ensemble-eeee5555"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text(json.dumps({"runs": [fold1.name]}))
    assert find_fold_runs(parent) == [ensemble]
    assert Predictor(device="cpu").initialize_from_trained_model_folder(parent).run_dirs == [fold1]
    with pytest.raises(RunFolderError, match="no finished fold runs"):
        find_fold_runs(tmp_path / "runs" / "unet-fold2-cccc3333")


# --------------------------------------------------------------------------- arrays and files


def test_an_array_a_file_and_a_folder_give_the_same_prediction(cohort, tmp_path):
    run = _run(tmp_path / "t1run", modalities=("T1",), spacing=4.0)
    predictor = Predictor(tta="none", planes=("axial", "sagittal"), device="cpu", progress=False)
    predictor.load_runs([run])
    assert predictor.registration is None  # one modality: nothing to register
    cases = pd.read_csv(cohort / "cohort.csv")
    t1 = cohort / cases["t1"][0]
    image = nib.load(t1)
    probability, mask = predictor.predict_array(np.asarray(image.dataobj), image.affine)
    assert probability.shape == image.shape and mask.dtype == bool
    table = predictor.predict_files(tmp_path / "files", t1=t1, case_id="one")
    assert table["status"][0].startswith("ok"), table
    written = np.asarray(nib.load(tmp_path / "files" / "one_probability.nii.gz").dataobj)
    np.testing.assert_allclose(written, probability, atol=1e-6)
    folder = predictor.predict_folder(cohort, tmp_path / "folder")
    case = folder["case_id"][0]
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "folder" / f"{case}.nii.gz").dataobj) > 0,
        np.asarray(nib.load(tmp_path / "files" / "one.nii.gz").dataobj) > 0,
    )
    with pytest.raises(ValueError, match=r"expected a \(1, X, Y, Z\) array"):
        predictor.predict_array(np.zeros((2, 4, 4, 4)), np.eye(4))


# --------------------------------------------------------------------------- DICOM in, DICOM SEG out


def _seg_volume(seg_path: Path, nifti_affine: np.ndarray, shape) -> np.ndarray:
    """The SEG's segment 1 as a (column, row, slice) volume, each frame put at the slice its
    ImagePositionPatient names on the NIfTI grid (independent of frame order)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    lps = LPS_TO_RAS @ nifti_affine  # voxel -> LPS mm
    inverse = np.linalg.inv(lps)
    volume = np.zeros(shape, dtype=bool)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (inverse @ [*position, 1.0])[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3  # a slice's first voxel
        volume[:, :, round(k)] = frame.T > 0
    return volume


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (0.8, 0.6, 0, 0, 0, -1)])
def test_dicom_series_in_and_a_dicom_seg_that_round_trips(tmp_path, monkeypatch, orientation):
    import highdicom as hd

    series_dir = tmp_path / "STS_901"
    synth = make_series(
        series_dir, n=10, rows=40, cols=36, spacing=(1.5, 1.5), step=3.0, orientation=orientation
    )
    run = _run(tmp_path / "t1run", modalities=("T1",), spacing=4.0)
    predictor = Predictor(tta="none", planes=("axial",), device="cpu", progress=False).load_runs([run])

    def box_logits(volume, timings=None):  # a known, asymmetric prediction instead of a random model
        logits = np.full(volume.shape[1:], -5.0, dtype=np.float32)
        x, y, z = volume.shape[1:]
        logits[x // 4 : x // 2, y // 3 : 3 * y // 4, 1 : z // 2] = 5.0
        return logits

    monkeypatch.setattr(predictor, "logits", box_logits)
    out = tmp_path / "out"
    table = predictor.predict_folder(series_dir, out, dicom_seg=True)
    assert table["status"][0].startswith("ok"), table
    nifti = nib.load(out / "STS_901.nii.gz")
    mask = np.asarray(nifti.dataobj) > 0
    assert mask.any() and not mask.all()
    # The NIfTI sits on the series' grid: voxel (0, 0, k) at slice k's ImagePositionPatient.
    lps = LPS_TO_RAS @ nifti.affine
    np.testing.assert_allclose((lps @ [0, 0, 3, 1])[:3], synth.positions[3], atol=1e-4)
    np.testing.assert_array_equal(_seg_volume(out / "STS_901_seg.dcm", nifti.affine, mask.shape), mask)
    seg = hd.seg.segread(out / "STS_901_seg.dcm")
    assert seg.PatientID == "MRN123456" and seg.StudyInstanceUID == synth.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == synth.series_uid
    assert seg.FrameOfReferenceUID == synth.frame_uid
    again = predictor.predict_folder(series_dir, out, dicom_seg=True)
    assert again["status"][0] == "done earlier"


def test_a_dicom_seg_needs_dicom_input_and_t1_t2_dicom_needs_two_series(cohort, tmp_path):
    run = _run(tmp_path / "t1run", modalities=("T1",), spacing=4.0)
    predictor = Predictor(device="cpu", progress=False).load_runs([run])
    with pytest.raises(ValueError, match="needs DICOM input"):
        predictor.predict_folder(cohort, tmp_path / "out", dicom_seg=True)
    make_series(tmp_path / "one_series", n=4)
    both = Predictor(device="cpu", progress=False).load_runs([_plans_run(tmp_path)])
    from mstt_lib.cohort import CohortError

    with pytest.raises(CohortError, match="subfolders named T1 and T2"):
        both.predict_folder(tmp_path / "one_series", tmp_path / "out2")


def test_a_damaged_dicom_file_is_the_cases_status_naming_the_problem_then_the_file(tmp_path):
    series_dir = tmp_path / "STS_902"
    make_series(series_dir, n=4)
    damaged = sorted(series_dir.iterdir())[1]
    damaged.write_bytes(b"")
    run = _run(tmp_path / "run", modalities=("T1",))
    predictor = Predictor(device="cpu", progress=False).load_runs([run])
    table = predictor.predict_folder(series_dir, tmp_path / "out")
    assert list(table["status"]) == [f"error: case STS_902: not a DICOM file (empty file) ({damaged})"]


def test_a_case_whose_seg_failed_is_not_done_and_is_predicted_again(tmp_path, monkeypatch):
    from mstt_lib.dicom import seg

    series_dir = tmp_path / "STS_903"
    make_series(series_dir, n=6, rows=32, cols=32)
    run = _run(tmp_path / "run", modalities=("T1",), spacing=4.0)
    predictor = Predictor(tta="none", planes=("axial",), device="cpu", progress=False).load_runs([run])
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(seg, "write_seg", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        failed = predictor.predict_folder(series_dir, out, dicom_seg=True)
    assert failed["status"][0].startswith("error") and not (out / "STS_903.json").exists()
    assert predictor.predict_folder(series_dir, out, dicom_seg=True)["status"][0].startswith("ok")


def _plans_run(tmp_path):
    run = _run(tmp_path / "t1t2run")
    _plans(run, RegistrationSettings())
    return run


def test_the_command_line_takes_a_dicom_series_and_writes_a_seg(tmp_path, monkeypatch, capsys):
    from mstt_lib import predict

    make_series(tmp_path / "CASE_7", n=6, rows=32, cols=32)
    run = _run(tmp_path / "runs" / "unet-fold0-abcd0123", modalities=("T1",), spacing=4.0)
    del run
    predict.main(
        [
            "-r",
            str(tmp_path / "runs"),
            "-i",
            str(tmp_path / "CASE_7"),
            "-o",
            str(tmp_path / "out"),
            "--tta",
            "none",
            "--planes",
            "axial",
            "--device",
            "cpu",
            "--dicom-seg",
        ]
    )
    assert (tmp_path / "out" / "CASE_7.nii.gz").is_file() and (tmp_path / "out" / "CASE_7_seg.dcm").is_file()
    assert "CASE_7" in capsys.readouterr().out


def test_a_runs_plans_carry_the_sets_registration_to_the_predictor(cohort, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mstt_lib import pipeline
    from mstt_lib.params import Params

    cases = pd.read_csv(cohort / "cohort.csv")
    for column in ("t1", "t2", "mask"):
        cases[column] = [str(cohort / p) for p in cases[column]]
    monkeypatch.setattr(pipeline, "selected_cases", lambda params, progress=True: cases)
    params = Params(
        set="test",
        modalities=["T1", "T2"],
        registration="affine",
        seed=4,
        registration_min_mi=0.2,
        work_dir=str(tmp_path / "work"),
    )
    run = _run(tmp_path / "run")
    preprocessing = json.loads((run / "preprocessing.json").read_text())
    channels = preprocessing.pop("channels")
    cache = SimpleNamespace(manifest={"settings": preprocessing, "channels": channels})
    case = cases["case_id"][0]
    pipeline._record_plans(params, run, cache, 32, [case], [])
    plans = plans_module.read_plans(run)
    assert plans["parameter_set"]["registration"] == "affine" and plans["data"]["train_cases"] == [case]
    assert set(plans["data"]["files"][case]) == {"t1", "t2", "mask"}
    assert (tmp_path / "work" / "file_hashes.json").is_file()
    registration = Predictor(device="cpu").load_runs([run]).registration
    assert registration == pipeline.registration_settings(params) and registration.transform == "affine"
