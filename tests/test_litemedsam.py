"""LiteMedSAM: the released checkpoint's layout, strict loading, output shapes, batching, gradients."""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mstt_lib.litemedsam import LiteMedSAM, PairedMaskDecoder, load_checkpoint

REFERENCE_JSON = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "litemedsam_state_dict_shapes.json"
)
# The reference JSON's layout, pinned so the layout test also runs where the shared folder is absent:
# sha256 of json.dumps(sorted(name -> shape items)), its number of entries and of values.
RELEASED_SHA256 = "7ff46e59cdc7ae10b7e15bbcd7089e914e64b6582ebe164411c7b9035405fb7a"
RELEASED_ENTRIES = 435
RELEASED_VALUES = 9_801_439


def _layout(model: LiteMedSAM) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in model.checkpoint_state_dict().items()}


def _fingerprint(layout: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(layout.items())).encode()).hexdigest()


def _released_layout() -> dict[str, list[int]]:
    """The reference JSON; where absent, the model's own layout (pinned by the layout test)."""
    if REFERENCE_JSON.is_file():
        return json.loads(REFERENCE_JSON.read_text())
    return _layout(LiteMedSAM())


def _random_checkpoint(path: Path, layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Random tensors of the released shapes (BatchNorm's counters as int64), saved to path."""
    state = {
        name: torch.randint(0, 1000, shape) if name.endswith("num_batches_tracked") else torch.rand(shape)
        for name, shape in layout.items()
    }
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def model() -> LiteMedSAM:
    torch.manual_seed(0)
    return LiteMedSAM().eval()


def test_checkpoint_layout_has_exactly_the_released_names_and_shapes(model):
    layout = _layout(model)
    if REFERENCE_JSON.is_file():
        reference = json.loads(REFERENCE_JSON.read_text())
        missing, extra = sorted(reference.keys() - layout.keys()), sorted(layout.keys() - reference.keys())
        assert not missing and not extra, f"missing {missing[:10]}, unexpected {extra[:10]}"
        wrong = {name: (layout[name], shape) for name, shape in reference.items() if layout[name] != shape}
        assert not wrong, f"(model, checkpoint) shapes differ: {wrong}"
        assert _fingerprint(reference) == RELEASED_SHA256
    assert len(layout) == RELEASED_ENTRIES
    assert sum(math.prod(shape) for shape in layout.values()) == RELEASED_VALUES
    assert _fingerprint(layout) == RELEASED_SHA256


def test_index_buffers_are_not_persistent_as_in_the_checkpoint(model):
    buffers = dict(model.image_encoder.named_buffers())
    assert "layers.1.blocks.0.attn.attention_bias_idxs" in buffers
    assert not any("attention_bias_idxs" in name for name in model.state_dict())


def test_random_checkpoint_of_the_released_layout_loads_strictly(tmp_path):
    path = tmp_path / "lite_medsam.pth"
    saved = _random_checkpoint(path, _released_layout())
    model = LiteMedSAM(in_channels=6)
    adapter_before = model.input_adapter.weight.detach().clone()
    assert model.pretrained is None

    load_checkpoint(model, path)

    loaded = model.checkpoint_state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    assert torch.equal(model.input_adapter.weight, adapter_before)
    assert model.pretrained == str(path)


@pytest.mark.parametrize(
    "change",
    [
        ("image_encoder.patch_embed.seq.0.c.weight", [32, 6, 1, 1]),
        ("mask_decoder.iou_token.weight", None),
        ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", None),
    ],
    ids=["shape_changed", "key_missing", "gaussian_matrix_missing"],
)
def test_checkpoint_that_does_not_fit_raises_value_error_naming_key_and_file(tmp_path, change):
    key, shape = change
    layout = _released_layout()
    if shape is None:
        del layout[key]
    else:
        layout[key] = shape
    path = tmp_path / "broken.pth"
    _random_checkpoint(path, layout)
    model = LiteMedSAM()
    with pytest.raises(ValueError, match=re.escape(key)) as excinfo:
        load_checkpoint(model, path)
    assert str(path) in str(excinfo.value)
    assert model.pretrained is None


def test_unexpected_key_and_unreadable_file_raise_value_error(tmp_path):
    layout = _released_layout() | {"image_encoder.head.weight": [1000, 320]}
    path = tmp_path / "extra.pth"
    _random_checkpoint(path, layout)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): image_encoder\.head\.weight"):
        load_checkpoint(LiteMedSAM(), path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(str(garbage))):
        load_checkpoint(LiteMedSAM(), garbage)


def test_missing_checkpoint_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "nowhere" / "lite_medsam.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_checkpoint(LiteMedSAM(), path)


@pytest.mark.parametrize("in_channels", [3, 6])
def test_output_is_one_logit_map_per_image_and_embedding_is_64x64(in_channels):
    torch.manual_seed(0)
    model = LiteMedSAM(in_channels=in_channels).eval()
    embeddings = []
    model.image_encoder.register_forward_hook(lambda module, args, out: embeddings.append(out))
    with torch.no_grad():
        logits = model(torch.rand(2, in_channels, 256, 256))
    assert logits.shape == (2, 1, 256, 256)
    assert embeddings[0].shape == (2, 256, 64, 64)
    assert torch.isfinite(logits).all()


def test_wrong_input_shape_is_rejected_quoting_it(model):
    with pytest.raises(ValueError, match=re.escape("got (2, 3, 128, 128)")):
        model(torch.rand(2, 3, 128, 128))


def test_each_image_in_a_batch_gets_the_output_it_gets_alone(model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        batch = model(images)
        alone = torch.cat([model(images[:1]), model(images[1:])])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3), "outputs should differ between images"


def test_decoder_shares_one_embedding_across_prompts_and_rejects_other_counts(model):
    decoder: PairedMaskDecoder = model.mask_decoder
    torch.manual_seed(2)
    embedding, pe = torch.randn(1, 256, 8, 8), torch.randn(1, 256, 8, 8)
    sparse, dense = torch.randn(3, 2, 256), torch.randn(3, 256, 8, 8)
    with torch.no_grad():
        shared, _ = decoder(embedding, pe, sparse, dense, multimask_output=False)
        repeated, _ = decoder(embedding.expand(3, -1, -1, -1), pe, sparse, dense, multimask_output=False)
        torch.testing.assert_close(shared, repeated)
        assert shared.shape == (3, 1, 32, 32)
        with pytest.raises(ValueError, match="2 image embeddings for 3 prompts"):
            decoder(embedding.expand(2, -1, -1, -1), pe, sparse, dense, multimask_output=False)


def test_gradients_reach_the_input_adapter_and_the_first_encoder_conv():
    torch.manual_seed(0)
    model = LiteMedSAM(in_channels=6).train()
    images, target = torch.rand(1, 6, 256, 256), (torch.rand(1, 1, 256, 256) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(images), target).backward()
    for name, param in [
        ("input_adapter.weight", model.input_adapter.weight),
        ("image_encoder.patch_embed.seq.0.c.weight", model.image_encoder.patch_embed.seq[0].c.weight),
    ]:
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
