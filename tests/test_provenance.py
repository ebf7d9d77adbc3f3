"""Caption lines are read from the runs' own records, and say what budget each run had."""

import json

import pandas as pd
import pytest

from mstt_lib.params import PAPER_RECIPE, get_params
from mstt_lib.provenance import (
    caption,
    kept_epochs,
    model_name,
    record_parameter_set,
    runs_by_set,
    runs_summary,
    training_recipe,
)


def _run(folder, steps, minutes, budget=None, weights=None, precision=None):
    folder.mkdir(parents=True)
    record = {
        "model": "unet",
        "encoder": "resnet18",
        "weights": weights or "random initialisation",
        "weights_sha256": None if weights is None else "ab" * 32,
        "steps": steps,
        "batch_size": 8,
        "train_minutes_budget": budget,
        "train_minutes": minutes,
        "device": "cpu",
    }
    if precision:
        record["precision"] = precision
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_runs_are_summarised_by_model_and_budget_from_their_records(tmp_path):
    folds = [_run(tmp_path / f"unet-fold{k}", 512, 0.7 + k / 10) for k in range(2)]
    weights = "/w/resnet18.pth"
    final = _run(tmp_path / "unet-all", 1312, 1.8, budget=1.5, weights=weights, precision="bfloat16")
    text = runs_summary([*folds, final])
    assert "U-Net (resnet18): 2 runs, 512 steps of 8, 0.7-0.8 min each on cpu, random initialisation" in text
    final_phrase = "1312 steps of 8 (a 1.5-minute budget), 1.8 min on cpu (bfloat16), weights resnet18.pth"
    assert final_phrase + " (SHA-256 abab" in text
    assert "budget" not in text.split(";")[0]  # the folds had no minutes budget
    alike = [_run(tmp_path / f"alike{k}", 160, 0.11 + k / 100) for k in range(2)]
    assert "2 runs, 160 steps of 8, 0.1 min each on cpu," in runs_summary(alike)


def test_a_caption_names_the_set_and_says_when_the_budget_is_small(tmp_path):
    run = _run(tmp_path / "unet-fold0", 384, 0.6)
    small = caption(get_params("smoke"), [run], extra="TTA paper")
    assert small.startswith("*Source: set `smoke`; U-Net") and "TTA paper" in small
    assert "demonstrates the pipeline" in small
    assert "demonstrates" not in caption(get_params("paper"), [run])


def test_runs_are_grouped_by_the_parameter_set_they_record(tmp_path):
    a, b = _run(tmp_path / "a", 10, 0.1), _run(tmp_path / "b", 20, 0.2)
    record_parameter_set(a, get_params("smoke", work_dir=tmp_path))
    record_parameter_set(b, get_params("paper"))
    groups = runs_by_set([a, b])
    assert {name: [r["run"] for r in records] for name, records in groups.items()} == {
        "smoke": ["a"],
        "paper": ["b"],
    }
    assert json.loads((a / "parameter_set.json").read_text())["work_dir"] == str(tmp_path)


def test_members_of_both_normalisations_are_named_as_both(tmp_path):
    runs = [_run(tmp_path / f"unet-fold0-{k}", 160, 0.5) for k in range(2)]
    record = json.loads((runs[1] / "run.json").read_text())
    (runs[1] / "run.json").write_text(json.dumps({**record, "norm": "instance"}))
    assert runs_summary(runs).startswith("U-Net (resnet18, batch and instance norm): 2 runs")
    assert runs_summary(runs[1:]).startswith("U-Net (resnet18, instance norm): 160 steps")
    assert runs_summary(runs[:1]).startswith("U-Net (resnet18): 160 steps")


def test_runs_of_the_papers_recipe_under_another_set_are_told_apart(tmp_path):
    own, papers, paper_set = (_run(tmp_path / name, 160, 0.2) for name in ("own", "papers", "paper_set"))
    smoke = get_params("smoke", work_dir=tmp_path)
    record_parameter_set(own, smoke)
    record_parameter_set(papers, smoke.replace(**PAPER_RECIPE))  # chapter 8's comparison
    record_parameter_set(paper_set, get_params("paper"))  # the paper's recipe is that set's own
    assert [training_recipe(r) for r in (own, papers, paper_set)] == [None, "the paper's recipe", None]
    assert training_recipe(tmp_path / "no-record") is None


def test_model_names_read_as_the_paper_writes_them_and_unknown_ones_pass_through():
    assert model_name("unet") == "U-Net"
    assert model_name("litemedsam") == "LiteMedSAM"
    assert model_name("unet3d") == "unet3d"


def test_each_runs_kept_epoch_is_its_last_or_the_best_its_record_names(tmp_path):
    last, best = _run(tmp_path / "last", 30, 0.1), _run(tmp_path / "best", 30, 0.1)
    record = json.loads((best / "run.json").read_text())
    (best / "run.json").write_text(json.dumps({**record, "kept": "best (epoch 2)"}))
    histories = pd.DataFrame(
        {
            "run": ["last"] * 3 + ["best"] * 3,
            "epoch": [1, 2, 3] * 2,
            "val_dice": [0.2, 0.9, 0.5, 0.3, 0.6, 0.6],  # "best": the record, not the maximum
        }
    )
    kept = kept_epochs(histories, [last, best]).set_index("run")
    assert kept.loc["last", "epoch"] == 3 and kept.loc["last", "kept"] == "last"
    assert kept.loc["best", "epoch"] == 2 and kept.loc["best", "kept"] == "best"
    with pytest.raises(ValueError, match="history of best"):
        kept_epochs(histories, [last])
