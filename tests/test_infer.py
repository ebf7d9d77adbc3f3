"""Inference: exact test-time augmentation, plane fusion index arithmetic, native-grid output."""

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mstt_lib.infer import predict_batch, predict_volume, to_native, tta_transforms, write_prediction
from mstt_lib.preprocess import isotropic_grid


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
    probability, mask = to_native(logits, affine, native_shape, native_affine)
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
