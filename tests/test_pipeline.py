"""The pipeline layer's run folders: which settings make another run, and when a run continues."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mstt_lib.params import get_params
from mstt_lib.pipeline import _needs_training, run_dir, train_settings


def test_a_decaying_schedule_of_another_length_is_another_run(tmp_path):
    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    poly = get_params("smoke", work_dir=str(tmp_path))
    assert poly.schedule == "poly"
    longer = poly.replace(epochs=poly.epochs * 2)
    assert run_dir(poly, "unet", 0, cache) != run_dir(longer, "unet", 0, cache)
    budget = poly.replace(schedule="constant", train_minutes=1.0)
    assert run_dir(budget, "unet", 0, cache) != run_dir(budget.replace(epochs=99), "unet", 0, cache)


def test_more_epochs_at_a_constant_rate_continue_the_finished_run(tmp_path):
    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    constant = get_params("smoke", work_dir=str(tmp_path), schedule="constant")
    more = constant.replace(epochs=constant.epochs + 4)
    folder = run_dir(constant, "unet", 0, cache)
    assert folder == run_dir(more, "unet", 0, cache)
    assert _needs_training(folder, train_settings(constant, "unet", 0))  # nothing trained yet
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    (folder / "run.json").write_text(json.dumps({"epochs": constant.epochs}))
    assert not _needs_training(folder, train_settings(constant, "unet", 0))
    assert _needs_training(folder, train_settings(more, "unet", 0))
    poly = get_params("smoke", work_dir=str(tmp_path))
    assert not _needs_training(folder, train_settings(poly.replace(epochs=99), "unet", 0))
    # once it went on to more epochs, the fewer-epoch set is a run of its own (weights cannot go back)
    (folder / "run.json").write_text(json.dumps({"epochs": more.epochs}))
    assert run_dir(more, "unet", 0, cache) == folder and not _needs_training(
        folder, train_settings(more, "unet", 0)
    )
    fewer = run_dir(constant, "unet", 0, cache)
    assert fewer != folder and fewer.parent == folder.parent and fewer.name.startswith("unet-fold0-")
    assert _needs_training(fewer, train_settings(constant, "unet", 0))
    # a continuation stopped after more epochs than its last finish: its checkpoint's history counts
    (folder / "run.json").write_text(json.dumps({"epochs": 1}))
    (folder / "history.csv").write_text(
        "epoch,train_loss\n" + "".join(f"{e},0.5\n" for e in range(1, more.epochs + 1))
    )
    assert run_dir(constant, "unet", 0, cache) == fewer


def test_other_folds_are_other_runs_and_the_default_folds_keep_older_run_names(tmp_path):
    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    params = get_params("smoke", work_dir=str(tmp_path))
    folder = run_dir(params, "unet", 0, cache)
    assert folder.name == "unet-fold0-" + _digest_without(params, cache, "norm")
    others = [params.replace(fold_seed=1), params.replace(n_folds=3), params.replace(fold_scheme="kfold")]
    names = {run_dir(other, "unet", 0, cache) for other in others}
    assert folder not in names and len(names) == 3
    assert run_dir(params.replace(fold_seed=1), "unet", None, cache) == run_dir(params, "unet", None, cache)


def test_a_fold_seed_or_count_of_its_own_deals_its_own_splits_file(tmp_path):
    import pandas as pd

    from mstt_lib.pipeline import splits

    cases = pd.DataFrame({"case_id": [f"C{i:02d}" for i in range(12)], "tissue": ["lipoma"] * 12})
    params = get_params("smoke", work_dir=str(tmp_path))
    default, reseeded, three = (
        splits(p, cases) for p in (params, params.replace(fold_seed=1), params.replace(n_folds=3))
    )
    assert len(list((tmp_path / "splits").glob("*.json"))) == 3
    assert reseeded != default and len(three) == 3 and len(default) == 5
    assert splits(params, cases) == default  # the default's file, read back


def test_the_run_on_every_case_has_its_own_name_and_settings(tmp_path):
    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    params = get_params("smoke", work_dir=str(tmp_path))
    every_case = run_dir(params, "unet", None, cache)
    assert every_case.name.startswith("unet-all-") and train_settings(params, "unet", None).fold is None
    assert every_case.name[len("unet-all-") :] != run_dir(params, "unet", 0, cache).name[len("unet-fold0-") :]


def test_stage_folder_digests_follow_the_settings_not_their_order():
    from mstt_lib.io import short_digest

    assert short_digest({"a": 1, "b": [2, 3]}) == short_digest({"b": [2, 3], "a": 1})
    assert short_digest({"a": 1, "b": [2, 3]}) != short_digest({"a": 1, "b": [3, 2]})
    assert len(short_digest("x")) == 12 and short_digest(Path("p/q")) == short_digest("p/q")


def _mask_file(path: Path, shape, box, spacing: float = 1.0) -> Path:
    import nibabel as nib
    import numpy as np

    data = np.zeros(shape, np.uint8)
    data[box] = 1
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def test_the_conversion_check_scores_converted_masks_and_names_a_grid_mismatch(tmp_path):
    import pandas as pd

    from mstt_lib.pipeline import conversion_check

    half = (slice(0, 4), slice(0, 8), slice(0, 8))
    reference = {c: _mask_file(tmp_path / f"{c}_ref.nii.gz", (8, 8, 8), half) for c in "ABC"}
    converted = pd.DataFrame(
        {
            "case_id": ["A", "B", "C"],
            "mask": [
                _mask_file(tmp_path / "A.nii.gz", (8, 8, 8), (slice(0, 2), slice(0, 8), slice(0, 8))),
                _mask_file(tmp_path / "B.nii.gz", (8, 8, 9), half),
                _mask_file(tmp_path / "C.nii.gz", (8, 8, 8), half, spacing=1.2),  # same shape, other grid
            ],
        }
    )
    cases = pd.DataFrame({"case_id": list("BAC"), "mask": [str(reference[c]) for c in "BAC"]})
    table = conversion_check(converted, cases).set_index("case_id")
    assert table.loc["A", "same grid"] and abs(table.loc["A", "Dice against the IBSI mask"] - 2 / 3) < 1e-9
    for mismatch in "BC":
        assert not table.loc[mismatch, "same grid"]
        assert pd.isna(table.loc[mismatch, "Dice against the IBSI mask"])


def test_predicted_dice_adds_each_predictions_dice_to_the_status_table(tmp_path):
    import pandas as pd

    from mstt_lib.pipeline import predicted_dice

    box = (slice(0, 4), slice(0, 8), slice(0, 8))
    _mask_file(tmp_path / "A.nii.gz", (8, 8, 8), box)
    truth = _mask_file(tmp_path / "A_truth.nii.gz", (8, 8, 8), (slice(0, 8), slice(0, 8), slice(0, 8)))
    status = predicted_dice(pd.DataFrame({"case_id": ["A"], "status": ["ok"]}), tmp_path, {"A": truth})
    assert list(status.columns) == ["case_id", "status", "dice"] and abs(status["dice"][0] - 2 / 3) < 1e-9


def test_the_decoder_makes_another_run_and_smps_default_keeps_older_run_names(tmp_path):
    from mstt_lib.models import DECODER_CHANNELS

    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    # poly: the epochs stay in the digest
    paper = get_params("paper", work_dir=str(tmp_path), schedule="poly")
    assert paper.decoder_channels == DECODER_CHANNELS
    assert run_dir(paper, "unet", 0, cache).name == "unet-fold0-" + _digest_without(
        paper, cache, "decoder_channels", "norm"
    )
    narrow = paper.replace(decoder_channels=(128, 64, 32, 16))
    assert run_dir(narrow, "unet", 0, cache) != run_dir(paper, "unet", 0, cache)


def test_instance_norm_makes_another_run_and_batch_norm_keeps_older_run_names(tmp_path):
    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    params = get_params("smoke", work_dir=str(tmp_path))
    assert params.norm == "batch"
    assert run_dir(params, "unet", 0, cache).name == "unet-fold0-" + _digest_without(params, cache, "norm")
    instance = params.replace(norm="instance")
    assert train_settings(instance, "unet", 0).norm == "instance"
    assert run_dir(instance, "unet", 0, cache) != run_dir(params, "unet", 0, cache)


def _digest_without(params, cache, *keys):
    """The digest of the settings without ``keys``: the name runs had before they were settings."""
    from dataclasses import asdict

    from mstt_lib.io import short_digest

    settings = asdict(train_settings(params, "unet", 0))
    for key in keys:
        settings.pop(key)
    settings["cache"] = Path(cache.folder).name
    return short_digest(settings)


def test_the_sets_share_the_default_synthetic_cohort_and_other_phantoms_get_their_own_folder(tmp_path):
    from mstt_lib.params import PARAMETER_SETS
    from mstt_lib.phantom import PhantomSettings
    from mstt_lib.pipeline import cohort_dir, phantom_settings

    folders = {cohort_dir(get_params(name, data_dir=tmp_path)) for name in PARAMETER_SETS}
    assert folders == {tmp_path / f"synthetic-v{PhantomSettings().version}"}
    # other phantoms never land in (and remake) the default folder, whose registrations would go stale
    matrix = cohort_dir(get_params("smoke", data_dir=tmp_path, phantom_matrix=96))
    seed = cohort_dir(get_params("smoke", data_dir=tmp_path, seed=1))
    assert len({*folders, matrix, seed}) == 3
    assert matrix.name.startswith("synthetic-v") and matrix.parent == tmp_path
    assert phantom_settings(get_params("cpu", n_cases=10)).n_cases == 10
    assert cohort_dir(get_params("cpu", data_dir=tmp_path, n_cases=10)) == cohort_dir(
        get_params("smoke", data_dir=tmp_path, n_cases=10)
    )


def test_cohort_statistics_measure_once_and_take_the_labels_from_the_case_table_now(tmp_path, monkeypatch):
    import pandas as pd

    from mstt_lib import analysis
    from mstt_lib.pipeline import cohort_statistics

    box = (slice(2, 6), slice(2, 6), slice(2, 6))
    cases = pd.DataFrame(
        {
            "case_id": ["001", "002"],  # ids of digits stay text when the cached table is read back
            "tissue": ["Lipoma", "Myxoid"],
            "site": ["thigh", "arm"],
            "mask": [str(_mask_file(tmp_path / f"{c}.nii.gz", (8, 8, 8), box)) for c in ("001", "002")],
        }
    )
    params = get_params("smoke", work_dir=str(tmp_path / "work"), workers=1)
    first = cohort_statistics(params, cases, progress=False)
    monkeypatch.setattr(analysis, "map_cases", lambda *a, **k: pytest.fail("measured again"))
    relabelled = cases.assign(tissue=["Vascular", "Myxoid"])  # a corrected label, same files
    again = cohort_statistics(params, relabelled, progress=False)
    assert list(again["tissue"]) == ["Vascular", "Myxoid"] and list(again.columns) == list(first.columns)
    pd.testing.assert_frame_equal(again.drop(columns="tissue"), first.drop(columns="tissue"))


def test_a_local_weights_file_replaced_at_the_same_path_starts_another_run(tmp_path):
    import os

    cache = SimpleNamespace(folder=str(tmp_path / "cache" / "0123"))
    weights = tmp_path / "encoder.pth"
    weights.write_bytes(b"first")
    params = get_params("smoke", work_dir=str(tmp_path), unet_weights=str(weights))
    first = run_dir(params, "unet", 0, cache)
    assert run_dir(params, "unet", 0, cache) == first
    weights.write_bytes(b"other weights")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert run_dir(params, "unet", 0, cache) != first
    assert run_dir(
        params.replace(unet_weights=None), "unet", 0, cache
    ).name == "unet-fold0-" + _digest_without(params.replace(unet_weights=None), cache, "norm")
    # a run named before the file's identity joined the name is kept if it recorded these bytes
    import hashlib

    before = first.parent / ("unet-fold0-" + _digest_without(params, cache, "norm"))
    before.mkdir(parents=True)
    (before / "run.json").write_text(json.dumps({"weights_sha256": "0" * 64}))
    assert run_dir(params, "unet", 0, cache) != before  # trained from other bytes
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    (before / "run.json").write_text(json.dumps({"weights_sha256": sha}))
    assert run_dir(params, "unet", 0, cache) == before


def test_a_label_corrected_in_an_nnunet_datasets_case_table_is_seen_within_the_kernel(
    phantom_subset, tmp_path
):
    """open_cohort keeps checked cohorts in memory; a changed mstt_cases.csv must not be served."""
    import os

    import pandas as pd

    from mstt_lib.cohort import NNUNET_METADATA, read_cohort, write_nnunet
    from mstt_lib.pipeline import open_cohort

    table, problems = read_cohort(phantom_subset(2))
    assert not problems
    dataset = tmp_path / "Dataset501_MSTT"
    write_nnunet(table, dataset)
    params = get_params("smoke", cohort=str(dataset), work_dir=str(tmp_path / "work"))
    first, _ = open_cohort(params, progress=False)
    metadata = pd.read_csv(dataset / NNUNET_METADATA)
    metadata.loc[0, "tissue"] = "Vascular" if metadata.loc[0, "tissue"] != "Vascular" else "Fat"
    metadata.to_csv(dataset / NNUNET_METADATA, index=False)
    stat = (dataset / NNUNET_METADATA).stat()  # a later time, whatever the clock's resolution
    os.utime(dataset / NNUNET_METADATA, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again, _ = open_cohort(params, progress=False)
    assert again.loc[0, "tissue"] == metadata.loc[0, "tissue"] != first.loc[0, "tissue"]
