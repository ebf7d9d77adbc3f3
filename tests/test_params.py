"""The named parameter sets."""

import pytest

from mstt_lib.params import PARAMETER_SETS, get_params, real_data_params


def test_every_named_set_configures_every_stage_and_the_paper_set_keeps_the_papers_recipe():
    from mstt_lib import pipeline

    assert {"smoke", "cpu", "paper", "best"} <= set(PARAMETER_SETS)
    for name in PARAMETER_SETS:  # each stage's settings build from the set alone
        params = get_params(name)
        assert pipeline.registration_settings(params).transform == params.registration, name
        assert pipeline.cache_settings(params).spacing_mm == params.spacing_mm, name
        for model in params.models:
            settings = pipeline.train_settings(params, model, params.folds[0])
            assert (settings.model, settings.epochs, settings.loss) == (
                model,
                params.epochs,
                params.loss,
            )
    smoke = pipeline.train_settings(get_params("smoke"), "unet", 0)
    paper_settings = pipeline.train_settings(get_params("paper"), "unet", 0)
    assert (paper_settings.loss, paper_settings.schedule) == ("bce", "constant")
    assert (smoke.loss, smoke.schedule) == ("slice_dice_bce", "poly")
    paper = get_params("paper")
    assert (paper.loss, paper.lr, paper.epochs, paper.batch_size) == ("bce", 1e-4, 5, 16)
    assert paper.foreground_fraction is None and paper.schedule == "constant"
    assert paper.unet_weights == "imagenet" and paper.spacing_mm == 1.0


def test_every_set_has_real_data_settings_that_layer_over_it():
    from mstt_lib.params import REAL_DATA, real_data_params

    assert set(REAL_DATA) == set(PARAMETER_SETS)
    for name in PARAMETER_SETS:
        assert real_data_params(name).modalities == ("T1",)


def test_the_cpu_set_is_the_smoke_recipe_and_grid_with_thirty_minutes_per_cohort():
    from mstt_lib.params import Params, real_data_params

    for resolve in (get_params, real_data_params):
        cpu, smoke = resolve("cpu"), resolve("smoke")
        changed = {key for key in Params.names() if getattr(cpu, key) != getattr(smoke, key)}
        assert changed <= {"members", "train_minutes", "final_minutes", "tta"}, resolve.__name__
        assert (cpu.tta, cpu.set) == ("paper", "cpu")
        assert cpu.members * cpu.train_minutes * len(cpu.folds) == 30.0, resolve.__name__
    # the synthetic cohort: one long run per fold; the real data: four short ones
    assert (get_params("cpu").members, get_params("cpu").train_minutes) == (1, 6.0)
    assert (real_data_params("cpu").members, real_data_params("cpu").train_minutes) == (4, 1.5)
    # the final model's runs as long as each fold's: smoke's real-data 0.5 minutes would apply
    assert real_data_params("cpu").final_minutes == 1.5 and real_data_params("smoke").final_minutes == 0.5


def test_unknown_set_lists_the_valid_ones():
    with pytest.raises(ValueError, match="paper"):
        get_params("quick")


def test_unknown_key_is_an_error_not_silently_ignored():
    with pytest.raises(ValueError, match="n_case"):
        get_params("smoke", n_case=3)


def test_overrides_apply_and_none_keeps_the_default():
    params = get_params("smoke", n_cases=10, seed=None)
    assert params.n_cases == 10 and params.seed == get_params("smoke").seed == 0
    assert params.set == "smoke"


def test_relative_folders_resolve_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "mstt_lib").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    params = get_params("smoke")
    assert params.data_dir == tmp_path / "data"
    assert get_params("smoke", data_dir="/elsewhere").data_dir.as_posix() == "/elsewhere"


def test_real_data_settings_layer_over_the_set_and_keep_none_values():
    from mstt_lib.params import real_data_params

    params = real_data_params("smoke")
    assert params.modalities == ("T1",)
    # None in REAL_DATA means "every case", not "keep the synthetic set's 5 per tissue"
    assert params.cases_per_tissue is None and PARAMETER_SETS["smoke"]["cases_per_tissue"] == 5
    assert params.cohort.name == "sts-ibsi-t1" and params.cohort.is_absolute()
    assert real_data_params("smoke", epochs=9).epochs == 9
    with pytest.raises(ValueError, match="epoch"):
        real_data_params("smoke", epoch=1)


def test_a_relative_cohort_folder_resolves_against_the_project_root(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "mstt_lib").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert get_params("smoke", cohort="my_cases").cohort == tmp_path / "my_cases"
    assert get_params("smoke").cohort == "synthetic"


def test_params_are_frozen_and_every_named_table_changes_only_known_settings():
    import dataclasses

    from mstt_lib.params import PAPER_RECIPE, REAL_DATA, Params

    params = get_params("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.epochs = 3
    for table in (*PARAMETER_SETS.values(), *REAL_DATA.values(), PAPER_RECIPE):
        assert set(table) <= set(Params.names())
    assert "set" not in Params.names() and len(Params.names()) == len(dataclasses.fields(Params)) - 1
    # The defaults are the paper's settings, so the paper set changes nothing.
    assert get_params("paper") == Params(set="paper") and PARAMETER_SETS["paper"] == {}
    assert get_params("paper").replace(**PAPER_RECIPE) == get_params("paper")


def test_lists_become_tuples_as_papermill_passes_them():
    params = get_params("smoke", folds=[0, 2], models=["unet"], planes=["axial"], modalities=["T1", "T2"])
    assert (params.folds, params.models, params.planes) == ((0, 2), ("unet",), ("axial",))
    assert params.modalities == ("T1", "T2") and isinstance(params.modalities, tuple)
    assert params == get_params("smoke", folds=(0, 2), models=("unet",), planes=("axial",))


def test_numbers_that_yaml_reads_as_text_become_numbers():
    """``-p lr 1e-4`` reaches the parameters as the text '1e-4' (YAML 1.1 wants a decimal point)."""
    import yaml

    assert yaml.safe_load("1e-4") == "1e-4"  # why the coercion is needed
    params = get_params("smoke", lr=yaml.safe_load("1e-4"), epochs="3", train_minutes="2.5")
    assert params.lr == 1e-4 and isinstance(params.lr, float)
    assert params.epochs == 3 and isinstance(params.epochs, int)
    assert params.train_minutes == 2.5
    assert get_params("smoke", eval_cases={"unet": 2}).eval_cases == {"unet": 2}  # not a number: kept
    with pytest.raises(ValueError, match="parameter lr should be a number, got 'fast'"):
        get_params("smoke", lr="fast")


def test_replace_checks_its_changes_like_get_params(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: x\n")
    (tmp_path / "mstt_lib").mkdir()
    monkeypatch.chdir(tmp_path)
    params = get_params("smoke")
    changed = params.replace(folds=[1, 3], work_dir="elsewhere", train_minutes=2.0)
    assert changed.folds == (1, 3) and changed.work_dir == tmp_path / "elsewhere"
    assert changed.train_minutes == 2.0 and changed.set == "smoke"
    # the original is untouched
    assert params.folds == (0, 1, 2, 3, 4) and params.work_dir == tmp_path / "work"
    # None is a value for replace (e.g. no minutes budget), unlike get_params' overrides.
    assert changed.replace(train_minutes=None).train_minutes is None
    expected = r"unknown parameter\(s\) \['epoch'\] for set 'smoke'; valid: .*'epochs'"
    with pytest.raises(ValueError, match=expected):
        params.replace(epoch=3)


def test_the_recorded_parameter_set_is_every_value_as_json_and_reads_back(tmp_path):
    import json
    from pathlib import Path

    from mstt_lib.params import Params, real_data_params
    from mstt_lib.provenance import record_parameter_set

    for params in (get_params("smoke", folds=[0, 1]), real_data_params("best")):
        record_parameter_set(tmp_path, params)
        text = (tmp_path / "parameter_set.json").read_text()
        # The layout runs recorded before Params (a dict of every value, paths as text, "set" last).
        before = {f: getattr(params, f) for f in (*Params.names(), "set")}
        before = {k: (str(v) if isinstance(v, Path) else v) for k, v in before.items()}
        assert text == json.dumps(before, indent=1, default=str)
        recorded = json.loads(text)
        assert recorded == params.to_dict() and list(recorded)[-1] == "set"
        assert isinstance(recorded["folds"], list) and isinstance(recorded["work_dir"], str)
        assert Params(**recorded) == params


def test_members_must_be_a_whole_number_of_runs_and_leave_the_cohort_seed_alone():
    from mstt_lib.pipeline import member_params

    assert get_params("smoke", members="3").members == 3  # papermill's YAML may give text
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="members"):
            get_params("smoke", members=bad)
    four = member_params(get_params("smoke", members=4, seed=7))
    assert [(m.norm, m.train_seed, m.seed, m.members) for m in four] == [
        ("batch", 7, 7, 1),
        ("batch", 8, 7, 1),
        ("batch", 9, 7, 1),
        ("batch", 10, 7, 1),
    ]
    both = member_params(get_params("smoke", members=4, seed=7, norm="both"))
    assert [(m.norm, m.train_seed, m.seed, m.members) for m in both] == [
        ("batch", 7, 7, 1),
        ("instance", 7, 7, 1),
        ("batch", 8, 7, 1),
        ("instance", 8, 7, 1),
    ]
    assert member_params(get_params("smoke")) == [get_params("smoke")]


def test_the_real_data_members_alternate_normalisations_and_the_synthetic_ones_keep_batchnorm():
    from mstt_lib.pipeline import member_params, train_settings

    assert [m.norm for m in member_params(real_data_params("cpu"))] == ["batch", "instance"] * 2
    assert {m.norm for m in member_params(get_params("cpu", members=4))} == {"batch"}
    assert member_params(get_params("cpu")) == [get_params("cpu")]
    # one run of "both" is its first member: the same training settings, so the same run folder
    one = real_data_params("smoke")
    assert one.norm == "both"
    assert train_settings(one, "unet", 0) == train_settings(one.replace(norm="batch"), "unet", 0)
    with pytest.raises(ValueError, match="norm should be one of batch, instance, both, got 'group'"):
        get_params("smoke", norm="group")
