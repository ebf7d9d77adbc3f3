"""The two segmentation models of the paper, built in one line each.

``build_model("unet", in_channels=6)`` gives segmentation-models-pytorch's U-Net
(the paper's encoder is ``se_resnext50_32x4d``); ``build_model("litemedsam", ...)``
the project's LiteMedSAM (``mstt_lib.litemedsam``). Both map (B, C, H, W) images in
[0, 1] to (B, 1, H, W) logits. U-Net encoder weights are ``"imagenet"`` (downloaded
and cached the way segmentation-models-pytorch does it, from its Hugging Face hub
repository; offline, an error names the local-file option), a local file the user
gives, or None: random initialisation, stated in ``model.pretrained`` (None).

ImageNet encoder weights have 3 input channels. For 6 (T1 and T2, three slices each)
the first convolution is adapted the way segmentation-models-pytorch does it: the
RGB filters are tiled over the new channels and scaled by 3 / in_channels, so a
6-channel image made of two copies of an RGB image gives the pretrained response.
``first_conv="random"`` instead gives a randomly initialised first convolution, as
the authors' code did.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "MODELS",
    "DECODER_CHANNELS",
    "NORMS",
    "build_model",
    "build_unet",
    "imagenet_weights_file",
    "load_encoder_weights",
    "parameters_used",
]

MODELS = ("unet", "litemedsam")
DECODER_CHANNELS = (256, 128, 64, 32, 16)
"""segmentation-models-pytorch's U-Net decoder (5 stages: the encoder's full depth)."""

NORMS = ("batch", "instance")
"""The U-Net's normalisation layers: smp's BatchNorm, or InstanceNorm as nnU-Net uses."""


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    return state


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load 3-channel pretrained weights (a state_dict or safetensors file) into an encoder.

    Keys may carry an ``encoder.`` prefix (a whole smp model's file). A file that does
    not fit gets a ``ValueError`` naming the file and the first offending keys.
    """
    state = _read_state_dict(path)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    # Classifier heads (fc, last_linear) of ImageNet files are not part of the encoder.
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "last_linear.", "classifier."))]
    if missing or unexpected or mismatched:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:4]}" if missing else "",
                f"unexpected {unexpected[:4]}" if unexpected else "",
                f"shape mismatch {mismatched[:3]}" if mismatched else "",
            )
            if part
        )
        raise ValueError(f"{path} does not fit this encoder: {details}")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


def imagenet_weights_file(encoder: str) -> Path:
    """The local copy of smp's ImageNet weights for ``encoder``, downloaded on first use.

    The same repository, revision and cache as ``smp.Unet(encoder_weights="imagenet")``
    (``hf_hub_download``), so a user's existing cache is reused and the file can be hashed.
    """
    from huggingface_hub import hf_hub_download
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if settings is None:
        raise ValueError(f"segmentation-models-pytorch has no ImageNet weights for encoder {encoder!r}")
    try:
        hf_hub_download(settings["repo_id"], filename="config.json", revision=settings["revision"])
        return Path(
            hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"])
        )
    except Exception as error:  # offline, proxy, hub errors: all end the same way for a user
        raise RuntimeError(
            f"could not download the ImageNet weights of encoder {encoder!r} from {settings['repo_id']} "
            f"({type(error).__name__}); without a network, give a local 3-channel encoder file instead: "
            f"unet_weights=/path/to/{encoder}.pth (a state_dict) or .safetensors"
        ) from None


def build_unet(
    in_channels: int = 6,
    encoder: str = "se_resnext50_32x4d",
    weights: str | os.PathLike | None = None,
    first_conv: str = "tile",
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
    norm: str = "batch",
) -> nn.Module:
    """U-Net with a ``encoder`` backbone; ``weights`` is a 3-channel ImageNet encoder file.

    ``decoder_channels`` (deepest first) also sets how many encoder stages are used: four
    leave out the last stage, whose 512-channel weights dominate a step on small CPU crops.
    ``norm="instance"`` puts InstanceNorm (nnU-Net's) in place of every BatchNorm: each slice
    normalised by itself, no running statistics; loaded ImageNet BatchNorm scales and shifts
    become its affine parameters.
    """
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders._utils import patch_first_conv

    if first_conv not in ("tile", "random"):
        raise ValueError(f"first_conv should be 'tile' or 'random', got {first_conv!r}")
    if norm not in NORMS:
        raise ValueError(f"norm should be one of {NORMS}, got {norm!r}")
    if not 3 <= len(decoder_channels) <= 5 or any(int(c) < 1 for c in decoder_channels):
        raise ValueError(f"decoder_channels should be 3 to 5 positive numbers, got {tuple(decoder_channels)}")
    try:
        model = smp.Unet(
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=3,
            classes=1,
            encoder_depth=len(decoder_channels),
            decoder_channels=tuple(decoder_channels),
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"unknown U-Net encoder {encoder!r}: {error}") from None
    if weights == "imagenet":
        weights = imagenet_weights_file(encoder)
    if weights is not None:
        load_encoder_weights(model.encoder, weights)
    if in_channels != 3:
        patch_first_conv(
            model.encoder,
            new_in_channels=in_channels,
            pretrained=weights is not None and first_conv == "tile",
        )
    if norm == "instance":
        _use_instance_norm(model)
    # Frozen: data-parallel training (DDP) expects a gradient for every weight that trains.
    for stage in _unused_stages(model):
        stage.requires_grad_(False)
    model.pretrained = None if weights is None else str(weights)
    return model


def _use_instance_norm(module: nn.Module) -> None:
    """Every BatchNorm2d below ``module`` becomes an InstanceNorm2d with its affine parameters
    (smp builds BatchNorm throughout and has no option for another normalisation)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            instance = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True)
            with torch.no_grad():
                instance.weight.copy_(child.weight)
                instance.bias.copy_(child.bias)
            setattr(module, name, instance)
        else:
            _use_instance_norm(child)


def _unused_stages(model: nn.Module) -> list[nn.Module]:
    """An smp encoder built with fewer stages keeps the deeper ones (so ImageNet files still
    load) but never runs them."""
    encoder = getattr(model, "encoder", None)
    depth = getattr(encoder, "_depth", None)
    if depth is None or not hasattr(encoder, "get_stages"):
        return []
    return [m for stride, modules in encoder.get_stages().items() if stride > 2**depth for m in modules]


def parameters_used(model: nn.Module) -> int:
    """The parameters a model's output depends on (not the unused stages of an smp encoder)."""
    unused = sum(p.numel() for m in _unused_stages(model) for p in m.parameters())
    return sum(p.numel() for p in model.parameters()) - unused


def build_model(
    name: str,
    in_channels: int = 6,
    encoder: str = "se_resnext50_32x4d",
    weights: str | os.PathLike | None = None,
    first_conv: str = "tile",
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
    norm: str = "batch",
) -> nn.Module:
    """``"unet"`` or ``"litemedsam"`` for ``in_channels`` inputs; U-Net weights ``"imagenet"``
    or a local file, LiteMedSAM weights a local file.

    For LiteMedSAM ``weights`` is the released ``lite_medsam.pth`` (and ``encoder`` is unused).

    >>> build_model("unet", in_channels=6, encoder="resnet18")(torch.zeros(1, 6, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
    """
    if name == "unet":
        return build_unet(in_channels, encoder, weights, first_conv, decoder_channels, norm)
    if name == "litemedsam":
        from mstt_lib.litemedsam import LiteMedSAM, load_checkpoint

        model = LiteMedSAM(in_channels=in_channels)
        if weights is not None:
            load_checkpoint(model, weights)
        return model
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
