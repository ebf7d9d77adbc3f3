"""Ensemble folders expand into their fold runs and carry their post-processing."""

import json

import pytest

from mstt_lib.ensemble import resolve_runs
from mstt_lib.postprocess import Choice, write_choice


def _ensemble(root, names, postprocessing="largest", threshold=0.3):
    for name in names:
        (root / name).mkdir(parents=True)
    folder = root / "unet-ensemble-x"
    folder.mkdir()
    (folder / "ensemble.json").write_text(json.dumps({"runs": names}))
    write_choice(folder, {"postprocessing": postprocessing, "threshold": threshold})
    return folder


def test_an_ensemble_folder_stands_for_its_fold_runs_and_their_post_processing(tmp_path):
    folder = _ensemble(tmp_path, ["unet-fold0-a", "unet-fold1-b"])
    runs, step = resolve_runs([folder])
    assert runs == [tmp_path / "unet-fold0-a", tmp_path / "unet-fold1-b"]
    assert step == Choice("largest", 0.3) and step.label == "largest @ 0.3"
    plain, step = resolve_runs([tmp_path / "unet-fold0-a"])
    assert plain == [tmp_path / "unet-fold0-a"] and step == Choice("none", 0.5)


def test_broken_ensembles_and_disagreeing_steps_are_clear_errors(tmp_path):
    folder = _ensemble(tmp_path, ["unet-fold0-a"])
    with pytest.raises(ValueError, match="different post-processing"):
        resolve_runs([folder, tmp_path / "unet-fold0-a"])
    (folder / "ensemble.json").write_text(json.dumps({"runs": ["unet-fold9-gone"]}))
    with pytest.raises(FileNotFoundError, match="unet-fold9-gone"):
        resolve_runs([folder])
    (folder / "ensemble.json").write_text("{not json")
    with pytest.raises(ValueError, match="not an ensemble file"):
        resolve_runs([folder])
