"""A T1-only cohort in the IBSI layout runs through every stage with 3 input channels.

Five small synthetic cases stand in for the real data (which tests elsewhere use when it
is there): the case table, registration skipped, the slice cache, cross-validation
training and scoring, the model trained on all cases, and ``mstt-predict`` on the folder.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mstt_lib import pipeline
from mstt_lib.evaluate import evaluate_external
from mstt_lib.io import save_nifti
from mstt_lib.params import real_data_params
from mstt_lib.postprocess import read_choice
from mstt_lib.predict import predict_folder

AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 20.0], [0, 0, 4.0, -10.0], [0, 0, 0, 1]])  # LPS


@pytest.fixture(scope="module")
def ibsi_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("sts") / "sts-ibsi-t1"
    rng = np.random.default_rng(0)
    for index in range(5):
        x, y, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(8), indexing="ij")
        mask = ((x - 10 - index) ** 2 + (y - 9) ** 2 < 25) & (z > 1) & (z < 7)
        image = 100 + 300 * mask + rng.normal(0, 10, mask.shape)
        save_nifti(image.astype(np.float32), AFFINE, root / f"STS_{index:03d}" / "MR_T1_image.nii.gz")
        save_nifti(mask.astype(np.uint8), AFFINE, root / f"STS_{index:03d}" / "MR_T1_mask.nii.gz")
    return root


def _params(cohort, work):
    return real_data_params(
        "smoke",
        cohort=str(cohort),
        work_dir=str(work),
        folds=(0,),
        epochs=1,
        samples_per_epoch=4,
        val_samples=4,
        batch_size=2,
        image_size=32,
        min_tumour_voxels=1,
        workers=1,
        final_minutes=0.02,  # the final run's budget: a second, so it trains for one epoch
    )


def test_t1_only_cases_train_score_and_predict_with_three_channels(ibsi_cohort, tmp_path, monkeypatch, capfd):
    params = _params(ibsi_cohort, tmp_path / "work")
    registered, quality = pipeline.registered_cohort(params, progress=False)
    assert list(registered["case_id"]) == [f"STS_{i:03d}" for i in range(5)]
    assert (quality["status"] == "ok").all() and not (tmp_path / "work" / "registration").exists()
    cache = pipeline.slice_cache(params, progress=False)
    assert cache.manifest["channels"] == ["T1[index-1]", "T1[index]", "T1[index+1]"]

    results = pipeline.cross_validation_results(params, progress=False)
    assert len(results) == 1 and results["model"].tolist() == ["unet"]  # fold 0 holds one case of five
    assert {"dice", "hd95_mm", "surface_dice", "prediction", "native_mask"} <= set(results.columns)
    with monkeypatch.context() as patch:  # every case scored: a rerun reads the table, loads no model
        patch.setattr("mstt_lib.predictor.Predictor.load_runs", lambda *a, **k: pytest.fail("model loaded"))
        capfd.readouterr()
        again = pipeline.cross_validation_results(params)
    assert again.equals(results)
    assert "evaluating" not in capfd.readouterr().err  # nothing to score: no empty progress bar

    ensemble = pipeline.fold_ensemble(params, "unet", results)
    decision = json.loads((ensemble / "postprocessing.json").read_text())
    run = pipeline.final_run(params, "unet", postprocessing=decision, progress=False)
    assert run.name.startswith("unet-all-")
    assert read_choice(run) == read_choice(ensemble)  # mstt-predict thresholds as CV chose
    assert "cross-validation" in json.loads((run / "postprocessing.json").read_text())["chosen_on"]
    assert json.loads((run / "preprocessing.json").read_text())["modalities"] == ["T1"]
    status = predict_folder(
        [run], ibsi_cohort, tmp_path / "predicted", tta="none", planes=("axial",), progress=False
    )
    assert status["status"].str.startswith("ok").all() and len(status) == 5
    predicted = nib.load(tmp_path / "predicted" / "STS_002.nii.gz")
    np.testing.assert_allclose(predicted.affine, AFFINE)  # on the case's own grid
    assert predicted.shape == (24, 20, 8)


def test_a_run_continued_in_its_folder_is_scored_again_not_read_from_the_old_table(ibsi_cohort, tmp_path):
    """A constant-rate run given more epochs trains on in the same folder (``_epochs_continue``):
    its evaluation folder is the same too, and the old weights' scores must not be reused."""
    params = _params(ibsi_cohort, tmp_path / "work").replace(schedule="constant")
    first = pipeline.cross_validation_results(params, progress=False)
    probability = first["prediction"][0].replace(".nii.gz", "_probability.nii.gz")
    before = nib.load(probability).get_fdata()
    more = pipeline.cross_validation_results(params.replace(epochs=2), progress=False)
    [run] = (tmp_path / "work" / "runs").rglob("unet-fold0-*")  # one folder: the run went on
    assert json.loads((run / "run.json").read_text())["epochs"] == 2
    assert more["prediction"][0] == first["prediction"][0]
    assert not np.array_equal(nib.load(probability).get_fdata(), before)  # predicted by the new weights
    assert more["weights"][0] != first["weights"][0]  # and the table says which weights scored it


def test_variants_of_a_set_are_scored_as_one_averaged_model(ibsi_cohort, tmp_path):
    params = _params(ibsi_cohort, tmp_path / "work")
    instance = params.replace(norm="instance", seed=1)
    alone = [pipeline.cross_validation_results(p, progress=False) for p in (params, instance)]
    both = pipeline.cross_validation_results([params, instance], progress=False)
    assert list(both["case_id"]) == list(alone[0]["case_id"]) and "-average-" in both["prediction"][0]

    def probability(results):
        return nib.load(results["prediction"][0].replace(".nii.gz", "_probability.nii.gz")).get_fdata()

    first, second, average = map(probability, [*alone, both])
    assert not np.allclose(average, first, atol=1e-3) and not np.allclose(average, second, atol=1e-3)
    # logits averaged, then resampled: between the members' probabilities, up to interpolation
    low, high = np.minimum(first, second) - 1e-3, np.maximum(first, second) + 1e-3
    assert ((average >= low) & (average <= high)).mean() > 0.95
    with pytest.raises(ValueError, match="list of its variants"):
        pipeline.cross_validation_results([], progress=False)
    with pytest.raises(ValueError, match="slice caches"):
        pipeline.cross_validation_results([params, params.replace(spacing_mm=4.0)], progress=False)


def test_members_are_averaged_into_each_fold_model_and_the_final_model(ibsi_cohort, tmp_path):
    from mstt_lib.ensemble import resolve_runs

    single = _params(ibsi_cohort, tmp_path / "work")
    params = single.replace(members=2)
    members = pipeline.member_params(params)
    assert [(m.norm, m.train_seed, m.seed) for m in members] == [("batch", 0, 0), ("instance", 0, 0)]
    cache = pipeline.slice_cache(params, progress=False)
    assert pipeline.run_dir(members[0], "unet", 0, cache) == pipeline.run_dir(single, "unet", 0, cache)

    results = pipeline.cross_validation_results(params, progress=False)
    assert "-average-" in results["prediction"][0]  # the two members' logits averaged, as variants are
    assert results.equals(pipeline.cross_validation_results(members, progress=False))

    ensemble = pipeline.fold_ensemble(params, "unet", results)
    listed = json.loads((ensemble / "ensemble.json").read_text())["runs"]
    assert listed == [pipeline.run_dir(m, "unet", 0, cache).name for m in members]
    decision = json.loads((ensemble / "postprocessing.json").read_text())
    final = pipeline.final_run(params, "unet", postprocessing=decision, progress=False)
    assert final.name.startswith("unet-all-ensemble-")
    runs, choice = resolve_runs([final, *final.parent.glob("unet-all-*")])  # a shell pattern: each once
    assert len(runs) == 2 and {json.loads((r / "params.json").read_text())["norm"] for r in runs} == {
        "batch",
        "instance",
    }
    assert choice == read_choice(ensemble) and all(read_choice(r) == choice for r in runs)
    status = predict_folder(
        [final], ibsi_cohort, tmp_path / "predicted", tta="none", planes=("axial",), progress=False
    )
    assert status["status"].str.startswith("ok").all() and len(status) == 5

    external = pipeline.external_results(
        params.replace(tta="none", planes=("axial",)), ibsi_cohort, progress=False
    )
    assert len(external) == 5 and (external["domain"] == "external").all()
    (scored,) = (tmp_path / "work" / "evaluation" / "sts-ibsi-t1").glob("external-unet-*")
    assert len(json.loads((scored / "STS_000.json").read_text())["runs"]) == 2  # both members
    broken = tmp_path / "broken" / "STS_009"  # no case to score: an error, not an empty table
    broken.mkdir(parents=True)
    (broken / "MR_T1_image.nii.gz").write_bytes(b"not an image")
    (broken / "MR_T1_mask.nii.gz").write_bytes(b"not a mask")
    with pytest.raises(
        ValueError, match=r"no case can be segmented by runs of T1 \(1 skipped; the first: case STS_009"
    ):
        evaluate_external(
            runs, broken.parent, tmp_path / "none", tta="none", planes=("axial",), progress=False
        )
