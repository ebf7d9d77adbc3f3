"""Training: a tiny configuration overfits, resuming gives the same weights, clear errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mstt_lib.devices import resolve_device
from mstt_lib.io import save_nifti
from mstt_lib.provenance import kept_epochs
from mstt_lib.slices import SliceCache, build_cache
from mstt_lib.train import TrainSettings, _Loss, augmentations, describe_sampling, sample_rows, train


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> SliceCache:
    """Three 32 x 32 x 24 cases at 1 mm with a bright ball (the tumour) in different places."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (32, 32, 24)], indexing="ij"), -1)
    rows = []
    for k, centre in enumerate([(12, 14, 12), (20, 18, 11), (15, 20, 13)]):
        ball = np.linalg.norm(grid - np.array(centre), axis=-1) < 7
        t1 = 0.4 + 0.05 * rng.standard_normal(ball.shape) + 0.3 * ball
        t2 = 0.3 + 0.05 * rng.standard_normal(ball.shape) + 0.5 * ball
        case = f"CASE_{k}"
        paths = {}
        for name, data in (("t1", t1), ("t2", t2), ("mask", ball.astype(np.uint8))):
            paths[name] = str(
                save_nifti(
                    data.astype(np.float32 if name != "mask" else np.uint8),
                    np.eye(4),
                    root / case / f"{name}.nii.gz",
                )
            )
        rows.append({"case_id": case, **paths})
    return SliceCache(build_cache(pd.DataFrame(rows), root / "cache", workers=1, progress=False))


TINY = dict(
    model="unet",
    encoder="resnet18",
    decoder_channels=(64, 32, 16, 8),
    image_size=32,
    min_tumour_voxels=20,
    batch_size=8,
    lr=3e-3,
    loss="dice_bce",
    planes=("axial",),
    device="cpu",
)


def test_a_tiny_unet_overfits_a_handful_of_cases_within_seconds(cache, tmp_path):
    cases = cache.case_ids
    settings = TrainSettings(**TINY, epochs=25, augment=False)
    history = train(settings, cache, cases, cases, tmp_path / "run", progress=False)
    assert history["val_dice"].iloc[-1] > 0.9, history.tail(3)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    for name in ("params.json", "checkpoint.pt", "history.csv", "model.pt"):
        assert (tmp_path / "run" / name).is_file()
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 25


def test_resuming_after_an_interruption_gives_the_same_weights(cache, tmp_path):
    cases = cache.case_ids
    base = dict(TINY, augment=True, samples_per_epoch=16, val_samples=8)
    train(TrainSettings(**base, epochs=3), cache, cases[:2], cases[2:], tmp_path / "straight", progress=False)
    # "killed" after its first epoch, then started again with the full plan
    train(TrainSettings(**base, epochs=1), cache, cases[:2], cases[2:], tmp_path / "resumed", progress=False)
    history = train(
        TrainSettings(**base, epochs=3), cache, cases[:2], cases[2:], tmp_path / "resumed", progress=False
    )
    assert list(history["epoch"]) == [1, 2, 3]
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # and the runs really learned something different from their start
    other = TrainSettings(**{**base, "seed": 1}, epochs=3)
    train(other, cache, cases[:2], cases[2:], tmp_path / "other", progress=False)
    different = torch.load(tmp_path / "other" / "model.pt", weights_only=True)
    assert any(not torch.equal(straight[k], different[k]) for k in straight)


def test_checkpoints_follow_the_first_epoch_then_the_interval_and_the_last(cache, tmp_path, monkeypatch):
    import mstt_lib.train as train_module

    written = []
    save = torch.save

    def spy(state, path):
        if "optimiser" in state:
            written.append(state["epoch"])
        save(state, path)

    monkeypatch.setattr(train_module.torch, "save", spy)
    settings = TrainSettings(**TINY, epochs=4, samples_per_epoch=8, val_samples=8, augment=False)
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 1e9)
    train(settings, cache, cache.case_ids[:2], cache.case_ids[2:], tmp_path / "long", progress=False)
    assert written == [0, 3]  # epochs are 0-based: after the first and after the last
    assert len(pd.read_csv(tmp_path / "long" / "history.csv")) == 4
    written.clear()
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 0.0)
    train(settings, cache, cache.case_ids[:2], cache.case_ids[2:], tmp_path / "every", progress=False)
    assert written == [0, 1, 2, 3]


def test_a_run_folder_with_other_settings_is_refused(cache, tmp_path):
    cases = cache.case_ids
    train(
        TrainSettings(**TINY, epochs=1, augment=False), cache, cases, cases, tmp_path / "run", progress=False
    )
    with pytest.raises(ValueError, match="lr"):
        train(
            TrainSettings(**{**TINY, "lr": 0.5}, epochs=1),
            cache,
            cases,
            cases,
            tmp_path / "run",
            progress=False,
        )


def test_augmentations_keep_shape_range_and_mask_alignment():
    transform = augmentations(64)
    image = np.zeros((80, 70, 6), np.float32)
    image[20:40, 30:50] = 1.0
    mask = (image[..., 0] > 0).astype(np.uint8)
    for seed in range(10):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (64, 64, 6) and out["mask"].shape == (64, 64)
        assert set(np.unique(out["mask"])) <= {0, 1}
        # geometric transforms move image and mask together: the bright square stays on the mask
        bright = out["image"][..., 0] > out["image"][..., 0].mean()
        overlap = 2 * (bright & (out["mask"] > 0)).sum() / (bright.sum() + out["mask"].sum())
        assert overlap > 0.7, (seed, overlap)


def test_asking_for_cuda_without_it_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(
    ("machine", "avx512_bf16", "amx", "onednn", "expected"),
    [
        ("x86_64", False, False, True, False),  # AVX512 alone: oneDNN emulates bfloat16
        ("x86_64", True, False, True, True),
        ("x86_64", False, True, True, True),
        ("aarch64", False, False, True, True),  # elsewhere oneDNN's word holds
        ("aarch64", False, False, False, False),
    ],
)
def test_bfloat16_is_used_only_where_the_cpu_computes_it_natively(
    monkeypatch, machine, avx512_bf16, amx, onednn, expected
):
    from mstt_lib import devices
    from mstt_lib.train import mixed_precision

    monkeypatch.setattr(devices.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert devices.cpu_bfloat16() is expected
    assert mixed_precision(torch.device("cpu")) == (torch.bfloat16 if expected else None)


def test_foreground_sampling_mixes_tumour_free_slices_in_the_asked_proportion():
    rows = pd.DataFrame(
        {"case_id": "A", "plane": "axial", "index": range(100), "tumour_voxels": [50] * 10 + [0] * 90}
    )
    paper = sample_rows(rows, 20, None, None, seed=0, epoch=0)
    assert len(paper) == 10 and (paper["tumour_voxels"] > 20).all()  # tumour slices only, each once
    assert sorted(paper["index"]) == list(range(10))
    mixed = sample_rows(rows, 20, 0.5, 2000, seed=0, epoch=0)
    share = (mixed["tumour_voxels"] > 20).mean()
    # half forced onto tumour, the other half uniform over all slices (10 % tumour): 0.55 expected
    assert 0.5 < share < 0.6, share
    assert mixed.equals(sample_rows(rows, 20, 0.5, 2000, seed=0, epoch=0))  # reproducible
    assert not mixed.equals(sample_rows(rows, 20, 0.5, 2000, seed=0, epoch=1))  # a new draw per epoch
    none_forced = sample_rows(rows, 20, 0.0, 2000, seed=0, epoch=0)
    assert (none_forced["tumour_voxels"] > 20).mean() < 0.15


def test_poly_schedule_best_checkpoint_and_the_run_record(cache, tmp_path):
    cases = cache.case_ids
    settings = TrainSettings(
        **{**TINY, "lr": 3e-2},  # a rate high enough that validation Dice goes up and down
        epochs=6,
        augment=False,
        samples_per_epoch=16,
        foreground_fraction=0.5,
        schedule="poly",
        keep="best",
    )
    history = train(settings, cache, cases[:2], cases[2:], tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    steps = settings.steps_per_epoch(0) * 6
    # the learning rate decayed to (1 - (steps - 1) / steps) ** 0.9 of its start at the last step
    assert state["optimiser"]["param_groups"][0]["lr"] == pytest.approx(3e-2 * (1 / steps) ** 0.9)
    best_epoch = int(history.loc[history["val_dice"].idxmax(), "epoch"])
    assert state["best"]["epoch"] == best_epoch
    kept = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert all(torch.equal(kept[k], best[k]) for k in kept)
    if best_epoch != 6:  # then the kept weights are not the last ones
        assert any(not torch.equal(kept[k], state["model"][k]) for k in kept)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["steps"] == steps and record["epochs"] == 6
    assert record["samples_seen"] == steps * TINY["batch_size"]
    assert record["weights"] == "random initialisation" and record["device"] == "cpu"
    assert record["kept"] == f"best (epoch {best_epoch})"
    # chapter 4's table of kept epochs reads the record the trainer wrote
    shown = kept_epochs(history.assign(run="run"), [tmp_path / "run"])
    assert shown["epoch"].tolist() == [best_epoch] and shown["kept"].tolist() == ["best"]
    assert list(history["steps"]) == [settings.steps_per_epoch(0) * (e + 1) for e in range(6)]


def test_a_minutes_budget_sets_the_epochs_and_a_resumed_run_keeps_them(cache, tmp_path):
    cases = cache.case_ids
    settings = TrainSettings(**TINY, epochs=1, augment=False, samples_per_epoch=16, train_minutes=0.05)
    history = train(settings, cache, cases[:2], cases[2:], tmp_path / "run", progress=False)
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert budget["epochs"] == len(history) >= 1 and budget["step_seconds"] > 0
    if budget["epochs"] > 1:  # more than the minimum only when the measured first epoch allows it
        assert budget["epochs"] * budget["first_epoch_seconds"] <= 0.05 * 60
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["train_minutes_budget"] == 0.05 and record["epochs"] == budget["epochs"]
    # started again (as after an interruption), it keeps the length it was given
    again = train(settings, cache, cases[:2], cases[2:], tmp_path / "run", progress=False)
    assert len(again) == budget["epochs"]


def test_a_minutes_budget_is_measured_again_on_the_first_epoch(cache, tmp_path, monkeypatch):
    """A few timed steps can misjudge the speed (another process, set-up costs): the whole
    first epoch sets the length instead."""
    import mstt_lib.train as training

    monkeypatch.setattr(training, "_time_steps", lambda *args, **kwargs: 1.0)  # far too slow
    cases = cache.case_ids
    settings = TrainSettings(**TINY, epochs=1, augment=False, samples_per_epoch=8, train_minutes=0.05)
    history = train(settings, cache, cases[:2], cases[2:], tmp_path / "run", progress=False)
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert budget["step_seconds"] == 1.0  # the few steps said one epoch fills the budget
    first = budget["first_epoch_seconds"]
    assert first == history["seconds"].iloc[0]
    assert budget["epochs"] == len(history) == max(1, int(0.05 * 60 // first))


def test_a_fixed_input_model_trains_on_resized_slices_as_it_predicts(cache):
    """LiteMedSAM's samples are whole slices resized to its input (inference resizes too)."""
    from mstt_lib.train import SliceDataset

    rows = cache.select(cache.case_ids[:1], ("coronal",), 20)
    resized = SliceDataset(cache, rows, 64, augment=False, resize=True)
    image, mask = resized[0]
    assert image.shape == (6, 64, 64) and mask.shape == (1, 64, 64)
    original, original_mask = cache.sample(*rows.iloc[0][["case_id", "plane", "index"]], None)
    assert original.shape[-2:] == (32, 24)  # a coronal slice of the 32 x 32 x 24 volume
    # the whole slice is there, stretched: the tumour keeps its share of the slice's area
    assert abs(float(mask.mean()) - float(original_mask.mean())) < 0.02
    cropped = SliceDataset(cache, rows, 64, augment=True, seed=0, resize=True)
    assert cropped[0][0].shape == (6, 64, 64)


def test_a_run_with_a_shallower_decoder_is_rebuilt_as_trained_when_loaded(cache, tmp_path):
    from mstt_lib.infer import load_run

    cases = cache.case_ids
    shallower = {**TINY, "decoder_channels": (32, 16, 8, 8)}
    settings = TrainSettings(**shallower, epochs=1, augment=False, samples_per_epoch=8)
    train(settings, cache, cases, cases, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["decoder_channels"] == [32, 16, 8, 8]
    model, training, _ = load_run(tmp_path / "run")  # strict load: the wrong decoder would not fit
    assert [block.conv2[0].out_channels for block in model.decoder.blocks] == [32, 16, 8, 8]
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())


def _two_tumour_slices() -> tuple[torch.Tensor, torch.Tensor]:
    """A large tumour found exactly and a small one missed entirely (logits +-20)."""
    target = torch.zeros(2, 1, 32, 32)
    target[0, 0, 4:28, 4:28] = 1  # 576 pixels
    target[1, 0, 10:12, 10:12] = 1  # 4 pixels
    logits = torch.full_like(target, -20.0)
    logits[0, 0, 4:28, 4:28] = 20.0
    return logits, target


def test_slice_dice_counts_a_missed_small_tumour_as_much_as_a_found_large_one():
    logits, target = _two_tumour_slices()
    bce = _Loss("bce")(logits, target).item()
    batch_dice = _Loss("dice_bce")(logits, target).item() - bce
    slice_dice = _Loss("slice_dice_bce")(logits, target).item() - bce
    assert batch_dice == pytest.approx(1 - (2 * 576 + 1) / (576 + 580 + 1), abs=1e-4)  # about 0.003
    assert slice_dice == pytest.approx((0 + (1 - 1 / 5)) / 2, abs=1e-4)  # the missed slice's 0.8, halved


def test_slice_dice_leaves_tumour_free_slices_to_bce():
    logits, target = _two_tumour_slices()
    empty = torch.zeros_like(target)
    assert _Loss("slice_dice_bce")(logits, empty).item() == pytest.approx(_Loss("bce")(logits, empty).item())
    with_empty = _Loss("slice_dice_bce")(torch.cat([logits, logits[:1]]), torch.cat([target, empty[:1]]))
    bce = _Loss("bce")(torch.cat([logits, logits[:1]]), torch.cat([target, empty[:1]]))
    # still the mean over the two tumour slices
    assert (with_empty - bce).item() == pytest.approx(0.4, abs=1e-4)


def test_an_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="slice_dice_bce"):
        _Loss("dice")


def test_the_sampling_sentence_gives_the_share_of_tumour_slices_that_sample_rows_draws():
    rows = pd.DataFrame({"tumour_voxels": [0] * 80 + [50] * 20})  # a fifth are tumour slices
    drawn = sample_rows(rows, 25, 0.5, 20000, seed=0, epoch=0)
    share = (drawn["tumour_voxels"] > 25).mean()
    assert share == pytest.approx(0.6, abs=0.02)  # 0.5 + 0.5 * 0.2
    text = describe_sampling(0.2, 0.5)
    assert "20% of all slices" in text and "about 60% of the samples" in text and "other 40%" in text
    paper = describe_sampling(0.2, None)
    assert "tumour slices only" in paper and "20% of all slices" in paper
    assert (sample_rows(rows, 25, None, None, seed=0, epoch=0)["tumour_voxels"] > 25).all()
