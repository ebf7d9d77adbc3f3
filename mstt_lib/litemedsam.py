"""LiteMedSAM (MedSAM's light model), built so that the released ``lite_medsam.pth`` loads strictly.

Why our own implementation:

- timm's TinyViT (``tiny_vit_5m_224``) has the right sizes but other module names and strides, so it
  cannot load the checkpoint. LiteMedSAM's TinyViT has a 1 x 1, stride-1 stem, patch merging with
  strides 2, 2, 1, and a neck to 256 channels: a 256 x 256 image gives a (B, 256, 64, 64) embedding.
  The module names below follow MedSAM/MobileSAM's TinyViT, so every state_dict name and shape equals
  the checkpoint's (435 entries, 9.8 M values; ``attention_bias_idxs`` is not persistent there).
- segment_anything's ``MaskDecoder`` repeats the image embeddings once per prompt, which turns a batch
  of B images with one box each into B * B pairs. ``PairedMaskDecoder`` pairs image i with prompt i.

The checkpoint cannot be downloaded here: ``load_checkpoint`` loads it from a path the user gives;
without one the model is randomly initialised and ``model.pretrained`` is None.
"""

import itertools
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_PREFIXES",
    "IMAGE_SIZE",
    "LiteMedSAM",
    "PairedMaskDecoder",
    "TinyViT",
    "load_checkpoint",
]

IMAGE_SIZE = 256
"""Side of the square input image in pixels; the image embedding is IMAGE_SIZE // 4."""

CHECKPOINT_PREFIXES = ("image_encoder", "mask_decoder", "prompt_encoder")
"""The sub-modules (state_dict prefixes) that the released checkpoint holds, in its order."""


class Conv2dBN(nn.Module):
    """Bias-free convolution followed by BatchNorm (state_dict names ``c`` and ``bn``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.bn(self.c(x))
        # Evaluation: BatchNorm folded into the convolution (one pass less over large feature maps).
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        bias = self.bn.bias - self.bn.running_mean * scale
        return F.conv2d(x, weight, bias, self.c.stride, self.c.padding, groups=self.c.groups)


class PatchEmbed(nn.Module):
    """LiteMedSAM's stem: two 1 x 1, stride-1 Conv2dBN with GELU between (resolution unchanged)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1 x 1 expand, 3 x 3 depthwise, 1 x 1 project, plus the input."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.conv2(self.act(self.conv1(x))))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Channel change and downsampling: 1 x 1 conv, 3 x 3 depthwise conv of the given stride, 1 x 1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention in a window, with a learned bias per head and relative offset."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window_size), repeat=2))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [
            offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets))
            for p in points
            for q in points
        ]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        # Not persistent: the released checkpoint does not hold it.
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) tokens of B windows of N = window_size**2 tokens -> (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * c // self.num_heads)
        q, k, v = qkv.permute(0, 2, 1, 3).chunk(3, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """LayerNorm, then a two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded to whole windows), a 3 x 3 depthwise conv, then the MLP."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        ws = self.window_size
        tokens = x.permute(0, 2, 3, 1)
        pad_b, pad_r = -h % ws, -w % ws
        windows = F.pad(tokens, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        windows = windows.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        attended = (
            self.attn(windows).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        )
        tokens = tokens + attended[:, :h, :w]
        tokens = self.local_conv(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(tokens)
        return tokens.permute(0, 3, 1, 2)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then patch merging (none after the last stage)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM's image encoder: (B, in_chans, 256, 256) in [0, 1] -> (B, 256, 64, 64).

    Resolutions through the stages at 256 x 256 input: stem 256, stage 0 256 -> merge /2 -> stage 1
    128 -> /2 -> stage 2 64 -> /1 -> stage 3 64; the neck maps 320 to 256 channels.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        merge_strides: tuple[int, ...] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        merges = [PatchMerging(embed_dims[i], embed_dims[i + 1], s) for i, s in enumerate(merge_strides)]
        self.layers = nn.ModuleList([ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, merges[0])])
        for i in range(1, len(depths)):
            downsample = merges[i] if i < len(merges) else None
            self.layers.append(
                BasicLayer(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    downsample,
                )
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        # channels_last: faster convolutions on the CPU, and the blocks' (B, H, W, C) views need no copies.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


class PairedMaskDecoder(MaskDecoder):
    """segment_anything's MaskDecoder, with image embedding i paired with prompt i.

    The original repeats every image embedding once per prompt (B images x B prompts -> B * B). Here
    a batch of B embeddings goes with B prompts; a single embedding is still shared by all prompts.
    Parameter names are the parent's.
    """

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Masks (B, num_mask_tokens, 4h, 4w) and IoU predictions (B, num_mask_tokens)."""
        n_prompts, n_images = sparse_prompt_embeddings.shape[0], image_embeddings.shape[0]
        if n_images not in (1, n_prompts):
            raise ValueError(
                f"got {n_images} image embeddings for {n_prompts} prompts; expected 1 or {n_prompts}"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            (output_tokens.unsqueeze(0).expand(n_prompts, -1, -1), sparse_prompt_embeddings), dim=1
        )
        src = image_embeddings.expand(n_prompts, -1, -1, -1) + dense_prompt_embeddings
        pos_src = image_pe.expand(n_prompts, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


class LiteMedSAM(nn.Module):
    """LiteMedSAM for automatic segmentation: every image is prompted with the whole-image box.

    Parameters
    ----------
    in_channels
        Input channels. For anything but 3, a randomly initialised 7 x 7 convolution
        (``input_adapter``) maps them to 3 in front of the image encoder, as the authors' 6-channel
        code does; it is outside the checkpoint's prefixes, so ``load_checkpoint`` leaves it as is.

    Attributes
    ----------
    pretrained
        Path of the loaded checkpoint, or None for random initialisation (no checkpoint given).

    Images are expected in [0, 1] per channel (MedSAM min-max scales them); no further normalisation
    happens inside.
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels should be at least 1, got {in_channels}")
        self.in_channels = in_channels
        self.input_adapter = nn.Identity() if in_channels == 3 else nn.Conv2d(in_channels, 3, 7, padding=3)
        self.image_encoder = TinyViT()
        self.mask_decoder = PairedMaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=256,
            image_embedding_size=(IMAGE_SIZE // 4, IMAGE_SIZE // 4),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        )
        self.pretrained: str | None = None

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The state_dict in the released checkpoint's layout (the three prefixes, no adapter)."""
        return {
            f"{prefix}.{name}": tensor
            for prefix in CHECKPOINT_PREFIXES
            for name, tensor in getattr(self, prefix).state_dict().items()
        }

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, 1, 256, 256) for images (B, in_channels, 256, 256) in [0, 1].

        The box prompt is [0, 0, 255, 255] for every image; the decoder runs with
        ``multimask_output=False`` (its first mask token, as MedSAM does) and the 64 x 64 low-resolution
        logits are upsampled bilinearly to the input size.
        """
        expected = (self.in_channels, IMAGE_SIZE, IMAGE_SIZE)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images should have shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}"
            )
        embeddings = self.image_encoder(self.input_adapter(images))
        height, width = images.shape[-2:]
        boxes = images.new_tensor([[0, 0, width - 1, height - 1]]).expand(images.shape[0], 4)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)


def load_checkpoint(model: LiteMedSAM, path: str | Path) -> None:
    """Load a plain LiteMedSAM state_dict (e.g. ``lite_medsam.pth``) strictly into ``model``.

    Fills the image encoder, prompt encoder and mask decoder; ``input_adapter`` keeps its values.
    Sets ``model.pretrained`` to the path. Raises FileNotFoundError if the file does not exist and
    ValueError, naming the file and the offending keys, if its names or shapes do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiteMedSAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} could not be read as a state_dict (torch.load, weights_only=True)") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        found = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a plain state_dict (name -> tensor); found {found}")
    expected = {name: tuple(t.shape) for name, t in model.checkpoint_state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {shape}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    problems = [
        f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{path} does not fit LiteMedSAM: " + "; ".join(problems))
    for prefix in CHECKPOINT_PREFIXES:
        start = len(prefix) + 1
        part = {name[start:]: t for name, t in state.items() if name.startswith(prefix + ".")}
        getattr(model, prefix).load_state_dict(part, strict=True)
    model.pretrained = str(path)
