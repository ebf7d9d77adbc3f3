"""The named parameter sets."""

import pytest

from mstt_lib.params import PARAMETER_SETS, get_params


def test_every_named_set_configures_every_stage_and_the_paper_set_keeps_the_papers_recipe():
    from mstt_lib import pipeline

    assert {"smoke", "paper", "best"} <= set(PARAMETER_SETS)
    for name in PARAMETER_SETS:  # each stage's settings build from the set alone
        params = get_params(name)
        assert pipeline.registration_settings(params).transform == params["registration"], name
        assert pipeline.cache_settings(params).spacing_mm == params["spacing_mm"], name
        for model in params["models"]:
            settings = pipeline.train_settings(params, model, params["folds"][0])
            assert (settings.model, settings.epochs, settings.loss) == (
                model,
                params["epochs"],
                params["loss"],
            )
    smoke = pipeline.train_settings(get_params("smoke"), "unet", 0)
    paper_settings = pipeline.train_settings(get_params("paper"), "unet", 0)
    assert (paper_settings.loss, paper_settings.schedule) == ("bce", "constant")
    assert (smoke.loss, smoke.schedule) == ("dice_bce", "poly")
    paper = PARAMETER_SETS["paper"]
    assert (paper["loss"], paper["lr"], paper["epochs"], paper["batch_size"]) == ("bce", 1e-4, 5, 16)
    assert paper["foreground_fraction"] is None and paper["schedule"] == "constant"
    assert paper["unet_weights"] == "imagenet" and paper["spacing_mm"] == 1.0


def test_every_set_has_real_data_settings_that_layer_over_it():
    from mstt_lib.params import REAL_DATA, real_data_params

    assert set(REAL_DATA) == set(PARAMETER_SETS)
    for name in PARAMETER_SETS:
        assert real_data_params(name)["modalities"] == ("T1",)


def test_unknown_set_lists_the_valid_ones():
    with pytest.raises(ValueError, match="paper"):
        get_params("quick")


def test_unknown_key_is_an_error_not_silently_ignored():
    with pytest.raises(ValueError, match="n_case"):
        get_params("smoke", n_case=3)


def test_overrides_apply_and_none_keeps_the_default():
    params = get_params("smoke", n_cases=10, seed=None)
    assert params["n_cases"] == 10 and params["seed"] == PARAMETER_SETS["smoke"]["seed"]
    assert params["set"] == "smoke"


def test_relative_folders_resolve_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "mstt_lib").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    params = get_params("smoke")
    assert params["data_dir"] == tmp_path / "data"
    assert get_params("smoke", data_dir="/elsewhere")["data_dir"].as_posix() == "/elsewhere"


def test_real_data_settings_layer_over_the_set_and_keep_none_values():
    from mstt_lib.params import real_data_params

    params = real_data_params("smoke")
    assert params["modalities"] == ("T1",)
    # None in REAL_DATA means "every case", not "keep the synthetic set's 5 per tissue"
    assert params["cases_per_tissue"] is None and PARAMETER_SETS["smoke"]["cases_per_tissue"] == 5
    assert params["cohort"].name == "sts-ibsi-t1" and params["cohort"].is_absolute()
    assert real_data_params("smoke", epochs=9)["epochs"] == 9
    with pytest.raises(ValueError, match="epoch"):
        real_data_params("smoke", epoch=1)


def test_a_relative_cohort_folder_resolves_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "mstt_lib").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert get_params("smoke", cohort="my_cases")["cohort"] == tmp_path / "my_cases"
    assert get_params("smoke")["cohort"] == "synthetic"
