"""Model construction: shapes, local weights, their adaptation to 6 channels, clear errors."""

import pytest
import torch

from mstt_lib.models import MODELS, build_model, build_unet


@pytest.mark.parametrize("channels", [3, 6])
def test_unet_maps_images_to_one_logit_channel(channels):
    model = build_model("unet", channels, encoder="resnet18")
    assert model(torch.rand(2, channels, 64, 64)).shape == (2, 1, 64, 64)
    assert model.pretrained is None


def _encoder_file(tmp_path):
    reference = build_unet(3, "resnet18")
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.encoder.state_dict(), path)
    return reference, path


def test_local_imagenet_weights_load_and_are_tiled_to_six_channels(tmp_path):
    reference, path = _encoder_file(tmp_path)
    model = build_unet(6, "resnet18", weights=path)
    original = reference.encoder.conv1.weight
    adapted = model.encoder.conv1.weight
    assert adapted.shape == (64, 6, 7, 7)
    torch.testing.assert_close(adapted[:, :3], original * 0.5)
    torch.testing.assert_close(adapted[:, 3:], original * 0.5)
    torch.testing.assert_close(model.encoder.layer1[0].conv1.weight, reference.encoder.layer1[0].conv1.weight)
    assert model.pretrained == str(path)
    # the tiled filters answer a doubled RGB image as the 3-channel encoder answers the image
    image = torch.rand(1, 3, 64, 64)
    model.eval(), reference.eval()
    features = model.encoder(torch.cat([image, image], 1))[-1]
    torch.testing.assert_close(features, reference.encoder(image)[-1], rtol=1e-4, atol=1e-4)


def test_a_weights_file_for_another_encoder_is_a_clear_error(tmp_path):
    _, path = _encoder_file(tmp_path)
    with pytest.raises(ValueError, match="does not fit") as info:
        build_unet(6, "resnet34", weights=path)
    assert str(path) in str(info.value)


def test_a_missing_weights_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_unet(6, "resnet18", weights=tmp_path / "nowhere.pth")


def test_unknown_model_and_encoder_list_the_choices():
    with pytest.raises(ValueError, match="litemedsam"):
        build_model("segformer")
    with pytest.raises(ValueError, match="encoder"):
        build_unet(6, "no_such_encoder")
    with pytest.raises(ValueError) as info:
        build_model("segformer")
    assert all(name in str(info.value) for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_every_listed_model_builds_and_maps_six_channels_to_one_logit_map(name):
    model = build_model(name, in_channels=6, encoder="resnet18").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 6, 256, 256))
    assert out.shape == (1, 1, 256, 256)


def test_imagenet_weights_come_through_the_hub_download_and_are_hashed(tmp_path, monkeypatch):
    """``"imagenet"`` asks smp's hub repository for the file (here a local stand-in) and loads it."""
    import huggingface_hub
    from safetensors.torch import save_file

    from mstt_lib.train import weights_record

    reference = build_unet(3, "resnet18")
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.encoder.state_dict().items()}, str(weights))
    asked = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        asked.append((repo_id, filename))
        return str(weights) if filename == "model.safetensors" else str(tmp_path / "config.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = build_unet(6, "resnet18", weights="imagenet")
    assert asked[-1] == ("smp-hub/resnet18.imagenet", "model.safetensors")
    torch.testing.assert_close(model.encoder.conv1.weight[:, :3], reference.encoder.conv1.weight * 0.5)
    record = weights_record("imagenet", "resnet18")
    import hashlib

    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights_record(None)["weights"] == "random initialisation"


def test_imagenet_weights_offline_name_the_local_file_option(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match=r"unet_weights=/path/to/resnet18\.pth"):
        build_unet(6, "resnet18", weights="imagenet")


def test_random_first_convolution_is_the_authors_choice(tmp_path):
    reference, path = _encoder_file(tmp_path)
    tiled = build_unet(6, "resnet18", weights=path, first_conv="tile")
    random = build_unet(6, "resnet18", weights=path, first_conv="random")
    assert random.encoder.conv1.weight.shape == (64, 6, 7, 7)
    assert not torch.allclose(random.encoder.conv1.weight[:, :3], tiled.encoder.conv1.weight[:, :3])
    # the rest of the encoder is the pretrained one in both
    torch.testing.assert_close(
        random.encoder.layer1[0].conv1.weight, reference.encoder.layer1[0].conv1.weight
    )


def test_four_decoder_stages_use_four_encoder_stages_and_load_imagenet_weights(tmp_path):
    _, path = _encoder_file(tmp_path)
    model = build_unet(3, "resnet18", weights=path, decoder_channels=(32, 16, 8, 8))
    assert model.encoder.output_stride == 16  # the fifth stage (stride 32) is not used
    assert model(torch.rand(1, 3, 48, 48)).shape == (1, 1, 48, 48)  # a multiple of 16 suffices
    widths = [block.conv2[0].out_channels for block in model.decoder.blocks]
    assert widths == [32, 16, 8, 8]


@pytest.mark.parametrize("channels", [(), (8, 8), (64, 32, 16, 8, 8, 4), (16, 0, 8)])
def test_decoder_channels_outside_three_to_five_stages_are_a_clear_error(channels):
    with pytest.raises(ValueError, match="decoder_channels"):
        build_unet(3, "resnet18", decoder_channels=channels)


@pytest.mark.parametrize("decoder", [(256, 128, 64, 32, 16), (64, 32, 16, 8), (32, 16, 8)])
def test_parameters_used_are_those_that_get_a_gradient(decoder):
    from mstt_lib.models import parameters_used

    model = build_unet(3, "resnet18", decoder_channels=decoder)
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    with_gradient = sum(p.numel() for p in model.parameters() if p.grad is not None)
    assert parameters_used(model) == with_gradient
    assert (with_gradient < sum(p.numel() for p in model.parameters())) == (len(decoder) < 5)
    assert with_gradient == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_instance_norm_normalises_each_slice_by_itself_and_keeps_loaded_scales(tmp_path):
    reference, path = _encoder_file(tmp_path)
    with torch.no_grad():
        reference.encoder.bn1.weight.uniform_(0.5, 1.5)
    torch.save(reference.encoder.state_dict(), path)
    model = build_unet(3, "resnet18", weights=path, decoder_channels=(32, 16, 8, 8), norm="instance")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model.encoder.bn1.weight, reference.encoder.bn1.weight)
    # in training mode too, a slice's output does not depend on the other slices of its batch
    model.train()
    image, other = torch.rand(1, 3, 48, 48), torch.rand(3, 3, 48, 48) * 5
    torch.testing.assert_close(model(torch.cat([image, other]))[:1], model(image), rtol=1e-4, atol=1e-4)
    batch_norm = build_unet(3, "resnet18", decoder_channels=(32, 16, 8, 8)).train()
    assert not torch.allclose(batch_norm(torch.cat([image, other]))[:1], batch_norm(image), atol=1e-3)
    # the unused fifth stage stays frozen
    assert model(image).sum().backward() is None
    assert all(p.grad is None for p in model.encoder.layer4.parameters())


def test_an_unknown_normalisation_is_a_clear_error():
    with pytest.raises(ValueError, match="norm should be one of"):
        build_unet(3, "resnet18", norm="group")
