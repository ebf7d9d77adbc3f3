"""Inference: exact test-time augmentation, plane fusion index arithmetic, native-grid output."""

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mstt_lib.geometry import isotropic_grid
from mstt_lib.infer import (
    EMPTY_LOGIT,
    body_levels,
    empty_slices,
    fixed_input_size,
    predict_batch,
    predict_volume,
    to_native,
    tta_transforms,
    write_prediction,
)


class Pointwise(nn.Module):
    """A 1x1 convolution: it commutes with every flip and rotation of the image plane."""

    def __init__(self, channels: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.conv(x)


class CentreChannel(nn.Module):
    """Returns the sample's centre slice of the first modality (channel 1) as the logits."""

    def forward(self, x):
        return x[:, 1:2]


class Asymmetric(nn.Module):
    """Depends on position: flipping its input changes its output."""

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1]).view(1, 1, 1, -1)
        return x[:, :1] * ramp


@pytest.mark.parametrize("mode", ["none", "paper", "all8"])
def test_each_transform_is_undone_exactly(mode):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    transforms = tta_transforms(mode)
    assert len(transforms) == {"none": 1, "paper": 4, "all8": 8}[mode]
    outputs = set()
    for forward, inverse in transforms:
        torch.testing.assert_close(inverse(forward(x)), x, rtol=0, atol=0)
        outputs.add(forward(x).numpy().tobytes())
    assert len(outputs) == len(transforms), "the transforms should all differ"


@pytest.mark.parametrize("mode", ["paper", "all8"])
def test_a_model_that_commutes_with_flips_gives_the_same_output_with_tta(mode):
    model = Pointwise(6).eval()
    images = torch.rand(3, 6, 16, 16)
    torch.testing.assert_close(predict_batch([model], images, mode), predict_batch([model], images, "none"))


def test_tta_changes_the_output_of_a_model_that_does_not_commute():
    images = torch.rand(2, 6, 8, 8)
    assert not torch.allclose(
        predict_batch([Asymmetric()], images, "paper"), predict_batch([Asymmetric()], images, "none")
    )


def test_an_ensemble_averages_its_models_logits():
    a, b = Pointwise(6).eval(), Pointwise(6).eval()
    with torch.no_grad():
        b.conv.weight.mul_(3)
    images = torch.rand(1, 6, 8, 8)
    expected = (predict_batch([a], images, "none") + predict_batch([b], images, "none")) / 2
    torch.testing.assert_close(predict_batch([a, b], images, "none"), expected)


@pytest.mark.parametrize(
    "planes", [("axial",), ("coronal",), ("sagittal",), ("axial", "coronal", "sagittal")]
)
def test_plane_fusion_rebuilds_a_volume_exactly_from_centre_channels(planes):
    volume = np.random.default_rng(0).random((2, 7, 9, 5)).astype(np.float32)  # different size per axis
    fused = predict_volume([CentreChannel()], volume, planes, tta="all8", size=16, batch_size=3)
    np.testing.assert_allclose(fused, volume[0], rtol=1e-6, atol=1e-6)


def test_plane_fusion_records_the_time_of_each_plane_and_rejects_unknown_planes():
    volume = np.zeros((2, 4, 4, 4), np.float32)
    timings = {}
    predict_volume([CentreChannel()], volume, ("axial", "sagittal"), "none", 8, 2, timings=timings)
    assert set(timings) == {"axial", "sagittal"}
    with pytest.raises(ValueError, match="planes"):
        predict_volume([CentreChannel()], volume, ("transverse",), "none", 8)


class BrightSpot(nn.Module):
    """Fully convolutional stand-in: tumour where the 3 x 3 mean of the centre slice is above 0.5.

    Records the shape of every input it is given.
    """

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return 20 * (F.avg_pool2d(x[:, 1:2], 3, stride=1, padding=1) - 0.5)


def _field_of_view(centre_row: int, centre_column: int) -> np.ndarray:
    """A (2, 400, 400, 6) volume on a 1 mm grid (a 400 mm field of view): body at 0.3, a bright
    7 x 7 x 6 tumour at the given position of the axial plane."""
    volume = np.full((2, 400, 400, 6), 0.3, np.float32)
    volume[:, centre_row - 3 : centre_row + 4, centre_column - 3 : centre_column + 4] = 0.9
    return volume


@pytest.mark.parametrize("tta", ["none", "paper"])
def test_a_tumour_at_the_edge_of_a_400_mm_field_of_view_is_segmented_as_when_centred(tta):
    planes = ("axial", "coronal", "sagittal")
    centred = predict_volume([BrightSpot()], _field_of_view(200, 200), planes, tta, 256, batch_size=4)
    edge = predict_volume([BrightSpot()], _field_of_view(200, 394), planes, tta, 256, batch_size=4)
    # 194 columns further: the same logits there, nothing cut away (a 256 centre crop would)
    np.testing.assert_array_equal(edge[:, 391:398], centred[:, 197:204])
    shifted = np.zeros_like(centred, dtype=bool)
    shifted[:, 194:] = centred[:, :206] > 0
    assert (centred > 0).sum() > 7 * 7 * 4
    np.testing.assert_array_equal(edge > 0, shifted)  # the whole mask, and nothing else


def test_the_unet_sees_each_slice_at_its_own_size_padded_to_its_stride():
    model = BrightSpot()
    predict_volume([model], _field_of_view(200, 200)[:, :, :150], ("axial", "coronal"), "none", 64, 8)
    # axial slices 400 x 150 -> 416 x 160; coronal slices 400 x 6 -> 416 x 32
    assert {shape[-2:] for shape in model.seen} == {(416, 160), (416, 32)}


def test_a_slice_smaller_than_the_training_crops_is_padded_centred_to_their_side():
    model = BrightSpot()
    model.min_input_size = 96  # trained on 96-pixel crops
    volume = np.zeros((1, 40, 70, 3), np.float32)
    volume[0, 18:25, 30:37] = 0.9
    logits = predict_volume([model], volume, ("axial",), "none", 64, 8)
    assert {shape[-2:] for shape in model.seen} == {(96, 96)}  # not 64 x 96, the stride's minimum
    assert logits.shape == volume.shape[1:]
    # the output is cut back to where the slice lay: the block's inside, and nothing off it
    assert (logits[19:24, 31:36] > 0).all() and (logits > 0).sum() == (logits[18:25, 30:37] > 0).sum()
    model.seen.clear()
    model.min_input_size = 100  # not a multiple of the stride: the next one
    predict_batch([model], torch.zeros(1, 3, 150, 20), "none")
    assert model.seen == [(1, 3, 160, 128)]


def test_load_run_gives_a_unet_its_training_crop_side(tmp_path):
    from mstt_lib.infer import load_run, min_input_size
    from mstt_lib.models import build_model

    channels = ["T1[index-1]", "T1[index]", "T1[index+1]"]
    torch.save(build_model("unet", 3, "resnet18").state_dict(), tmp_path / "model.pt")
    (tmp_path / "params.json").write_text('{"model": "unet", "encoder": "resnet18", "image_size": 96}')
    preprocessing = {
        "modalities": ["T1"],
        "spacing_mm": 2.0,
        "low_percentile": 0.05,
        "high_percentile": 99.95,
        "channels": channels,
    }
    (tmp_path / "preprocessing.json").write_text(__import__("json").dumps(preprocessing))
    model, training, _ = load_run(tmp_path)
    assert min_input_size(model) == 96 == training["image_size"]
    assert min_input_size(BrightSpot()) == 0


class FixedInput(nn.Module):
    """Stand-in for LiteMedSAM: accepts only 256 x 256 inputs; returns the centre slice."""

    fixed_input_size = 256

    def forward(self, x):
        assert x.shape[-2:] == (256, 256), x.shape
        return x[:, 1:2]


@pytest.mark.parametrize("tta", ["none", "paper"])
def test_a_fixed_input_model_gets_slices_resized_and_its_output_returns_to_the_slices_grid(tta):
    volume = np.zeros((1, 300, 120, 3), np.float32)
    volume[0, 200:260, 20:50] = 1.0  # an off-centre block on a non-square slice
    fused = predict_volume([FixedInput()], volume, ("axial",), tta, 128, batch_size=2, skip_empty=False)
    assert fused.shape == volume.shape[1:]
    found = fused > 0.5
    truth = volume[0] > 0.5
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.97
    np.testing.assert_allclose(np.argwhere(found).mean(0), np.argwhere(truth).mean(0), atol=0.5)


def test_litemedsam_is_recognised_as_a_fixed_input_model_and_the_unet_is_not():
    from mstt_lib.litemedsam import LiteMedSAM
    from mstt_lib.models import build_model

    model = LiteMedSAM(in_channels=3).eval()
    assert fixed_input_size(model) == 256
    assert fixed_input_size(build_model("unet", 3, "resnet18")) is None
    logits = predict_batch([model], torch.rand(1, 3, 40, 70), "none")  # its own 256 x 256 inside
    assert logits.shape == (1, 1, 40, 70)


def test_empty_slices_are_those_whose_three_slices_hold_no_body():
    volume = np.random.default_rng(0).uniform(0, 0.05, (2, 20, 12, 10)).astype(np.float32)  # air noise
    volume[0, 8:11, 3:9, :] = 0.6  # body in sagittal slices 8-10
    volume[1, 8:11, 3:9, :] = 0.3
    volume[0, 15, 5, 5] = 0.6  # and one voxel in the T1 of slice 15
    assert np.all((body_levels(volume) > 0.05) & (body_levels(volume) <= 0.15))
    empty = empty_slices(volume, "sagittal")
    assert np.flatnonzero(~empty).tolist() == [7, 8, 9, 10, 11, 14, 15, 16]  # neighbours' samples too
    assert empty_slices(volume, "axial").sum() == 0


def test_a_volume_without_air_has_no_empty_slice_even_where_its_tissue_is_dim():
    volume = np.random.default_rng(0).uniform(0.6, 1.0, (1, 30, 20, 8)).astype(np.float32)
    volume[0, :12] = 0.2  # dim tissue (e.g. muscle in T1) filling sagittal slices 0-11
    assert not empty_slices(volume, "sagittal").any()


def test_skipping_empty_slices_changes_no_labelled_voxel_and_runs_fewer_samples():
    rng = np.random.default_rng(1)
    volume = rng.uniform(0, 0.05, (2, 40, 36, 12)).astype(np.float32)
    volume[:, 10:30, 8:28, 2:10] = rng.uniform(0.3, 0.5, (2, 20, 20, 8))  # body
    volume[:, 18:24, 15:20, 4:8] = 0.9  # tumour
    skipped, everything = BrightSpot(), BrightSpot()
    with_skip = predict_volume([skipped], volume, tta="paper", batch_size=4)
    without = predict_volume([everything], volume, tta="paper", batch_size=4, skip_empty=False)
    np.testing.assert_array_equal(with_skip > 0, without > 0)
    assert (with_skip > 0).sum() > 0
    samples = lambda model: sum(shape[0] for shape in model.seen)  # noqa: E731
    assert samples(skipped) < 0.7 * samples(everything)
    # a slice that was skipped holds the background logit in its plane
    assert with_skip[0, 0, 0] <= EMPTY_LOGIT / 3


class Counting(nn.Module):
    """A position-dependent model (not flip-invariant) that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        rows = torch.linspace(0, 1, x.shape[-2]).view(1, 1, -1, 1)
        columns = torch.linspace(0, 2, x.shape[-1]).view(1, 1, 1, -1)
        return x[:, :1] * rows + x[:, 1:2] * columns


@pytest.mark.parametrize("shape,passes", [((32, 32), 1), ((40, 20), 2)])
def test_all_tta_transforms_share_a_forward_pass_per_output_shape(shape, passes):
    images = torch.rand(3, 6, *shape)
    model = Counting()
    batched = predict_batch([model], images, "all8")
    assert model.passes == passes  # rot90 of a non-square slice: a second shape, a second pass
    # the same as running each transform alone on the padded slice and undoing it
    rows, columns = -shape[0] % 32, -shape[1] % 32
    padded = F.pad(images, (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2))
    expected = sum(inverse(model(forward(padded))) for forward, inverse in tta_transforms("all8")) / 8
    expected = expected[..., rows // 2 : rows // 2 + shape[0], columns // 2 : columns // 2 + shape[1]]
    torch.testing.assert_close(batched, expected)


def test_a_slice_too_large_for_one_pass_goes_in_tiles_that_give_the_whole_slice_result():
    model = Pointwise(6).eval()
    images = torch.rand(2, 6, 200, 150)
    whole = predict_batch([model], images, "paper")
    shapes = []
    handle = model.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    tiled = predict_batch([model], images, "paper", max_pixels=64 * 64)
    handle.remove()
    assert max(s[-2] * s[-1] for s in shapes) <= 64 * 64 and len(shapes) > 8
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


NATIVE_GRIDS = {
    "LPS": np.diag([-0.8, -0.8, 4.0, 1.0]),
    "RAS": np.diag([0.7, 0.7, 5.0, 1.0]),
}
rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
oblique = np.eye(4)
oblique[:3, :3] = rotation @ np.diag([0.9, 0.9, 4.5])
oblique[:3, 3] = [10, -20, 5]
NATIVE_GRIDS["oblique"] = oblique


@pytest.mark.parametrize("name", list(NATIVE_GRIDS))
def test_prediction_nifti_has_the_native_shape_and_affine(name, tmp_path):
    native_affine, native_shape = NATIVE_GRIDS[name], (40, 36, 9)
    shape, affine = isotropic_grid(native_shape, native_affine, 1.0)
    # logits: positive inside a ball at a known world position
    centre_world = native_affine[:3, :3] @ np.array([20, 18, 4]) + native_affine[:3, 3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    logits = 8.0 - np.linalg.norm(world - centre_world, axis=-1)
    probability = to_native(logits, affine, native_shape, native_affine)
    mask = probability >= 0.5
    path = write_prediction(tmp_path, "CASE", probability, native_affine, {"tta": "none"})
    image = nib.load(path)
    assert image.shape == native_shape
    np.testing.assert_allclose(image.affine, native_affine, atol=1e-5)
    assert nib.load(tmp_path / "CASE_probability.nii.gz").shape == native_shape
    data = np.asarray(image.dataobj)
    np.testing.assert_array_equal(data, mask.astype(np.uint8))
    # the ball is where it was put, in world coordinates
    found = np.argwhere(data > 0).mean(0)
    found_world = native_affine[:3, :3] @ found + native_affine[:3, 3]
    assert np.linalg.norm(found_world - centre_world) < 1.5


def test_inference_threads_are_capped_at_the_usable_cores_and_never_raised(monkeypatch):
    """Side-by-side runs on one core each stay on one core when they score (set_num_threads(1)),
    and a count above the usable cores comes down to them."""
    from mstt_lib.infer import inference_threads, set_inference_threads

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        set_inference_threads()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(inference_threads() + 3)
        set_inference_threads()
        assert torch.get_num_threads() == inference_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's own count is left alone
        torch.set_num_threads(inference_threads() + 3)
        set_inference_threads()
        assert torch.get_num_threads() == inference_threads() + 3
    finally:
        torch.set_num_threads(before)
