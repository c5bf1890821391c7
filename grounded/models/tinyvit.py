"""TinyViT image encoder for SAM (MobileSAM's ``mobile_sam.pt``, Light HQ-SAM's ``sam_hq_vit_tiny.pth``).

transformers has no TinyViT, so this is a small inference-only port of the encoder (Microsoft's TinyViT as
adapted by MobileSAM and SysCV/sam-hq: convolutional stem, an MBConv stage, three windowed-attention stages with
learned attention biases and a depthwise "local" convolution, and SAM's neck), hosted inside transformers'
``SamModel`` / ``SamHQModel`` in place of ``vision_encoder``: the prompt encoder and mask decoder stay
transformers' own. Module and parameter names follow the official files, so their ``image_encoder.*`` tensors
load one to one as ``vision_encoder.*`` (the unused ImageNet classifier head is left out).

A converted folder (:func:`save_tinyvit_sam`) holds ``config.json`` (a SAM / HQ-SAM config with a
``grounded_image_encoder`` entry describing the TinyViT), the processor files and ``tinyvit_sam.safetensors``
(all weights). It has no ``model.safetensors``: plain ``AutoModel.from_pretrained`` refuses it rather than
building a randomly initialised ViT; :func:`load_tinyvit_sam` (used by the SAM adapter) rebuilds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WEIGHTS_NAME",
    "TinyViTConfig",
    "TinyViTEncoder",
    "build_tinyvit_sam",
    "is_tinyvit_config",
    "load_tinyvit_sam",
    "save_tinyvit_sam",
    "tinyvit_config_from_state_dict",
]

WEIGHTS_NAME = "tinyvit_sam.safetensors"
CONFIG_KEY = "grounded_image_encoder"


@dataclass
class TinyViTConfig:
    """Sizes of a TinyViT-for-SAM encoder (defaults: TinyViT-5M as in MobileSAM and Light HQ-SAM)."""

    embed_dims: list[int] = field(default_factory=lambda: [64, 128, 160, 320])
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [2, 4, 5, 10])
    window_sizes: list[int] = field(default_factory=lambda: [7, 7, 14, 7])
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    image_size: int = 1024
    out_channels: int = 256
    in_channels: int = 3


class Conv2dBN(nn.Sequential):
    """A bias-free convolution followed by batch norm (children ``c`` and ``bn``, as in the official files)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3×3 convolutions (÷4 resolution)."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(cin, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, 3×3 depthwise, 1×1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Tokens → 1×1 conv, 3×3 depthwise conv (stride 2, or 1 before SAM's last stage), 1×1 conv → tokens."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) → (B, H'·W', C')
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """First stage: MBConv blocks on a feature map, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2) if self.downsample is None else self.downsample(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Multi-head self-attention within a window, with a learned bias per head and (|Δy|, |Δx|) offset."""

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # offsets numbered in the order the official code first meets them: row-major over window positions
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        offset = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        order: dict[int, int] = {}
        numbering = [order.setdefault(o, len(order)) for o in offset.flatten().tolist()]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(order)))
        self.register_buffer(
            "attention_bias_idxs", torch.tensor(numbering).view(window * window, -1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3, self.head_dim)
        # the official layout is per head [q | k | v], not [all q | all k | all v]
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5 + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows), residual; depthwise local conv; MLP, residual."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        (h, w), w_ = size, self.window
        batch, tokens, dim = x.shape
        if h == w_ and w == w_:
            attended = self.attn(x)
        else:
            grid = x.view(batch, h, w, dim)
            pad_h, pad_w = (-h) % w_, (-w) % w_
            if pad_h or pad_w:
                grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))
            nh, nw = (h + pad_h) // w_, (w + pad_w) // w_
            windows = grid.view(batch, nh, w_, nw, w_, dim).transpose(2, 3).reshape(-1, w_ * w_, dim)
            windows = self.attn(windows)
            grid = (
                windows.view(batch, nh, nw, w_, w_, dim).transpose(2, 3).reshape(batch, nh * w_, nw * w_, dim)
            )
            attended = grid[:, :h, :w].reshape(batch, tokens, dim)
        x = x + attended
        x = (
            self.local_conv(x.transpose(1, 2).reshape(batch, dim, h, w))
            .view(batch, dim, tokens)
            .transpose(1, 2)
        )
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then patch merging (except the last stage)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        local_conv: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        if self.downsample is None:
            return x
        return self.downsample(x.transpose(1, 2).reshape(x.shape[0], -1, *size))


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a (B, C, H, W) map (eps 1e-6, as in SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class TinyViTEncoder(nn.Module):
    """TinyViT image encoder in place of SAM's ViT: ``forward(pixel_values)`` gives the (B, 256, 64, 64) image
    embeddings and, for HQ-SAM, the second stage's output (B, 64, 64, C) as the one intermediate feature map
    Light HQ-SAM's decoder fuses (its ``vit_dim`` is that stage's width)."""

    def __init__(self, config: TinyViTConfig, hq: bool = False) -> None:
        super().__init__()
        self.config, self.hq = config, hq
        dims, stages = config.embed_dims, len(config.depths)
        self.patch_embed = PatchEmbed(config.in_channels, dims[0])
        side = config.image_size // 4
        self.sizes: list[tuple[int, int]] = []
        self.layers = nn.ModuleList()
        for i in range(stages):
            self.sizes.append((side, side))
            downsample = None
            if i < stages - 1:
                # SAM keeps the last two stages at the same resolution (1024 / 16 = 64)
                stride = 1 if i == stages - 2 else 2
                downsample = PatchMerging(dims[i], dims[i + 1], stride)
                side = (side - 1) // stride + 1
            if i == 0:
                layer: nn.Module = ConvLayer(
                    dims[0], config.depths[0], config.mbconv_expand_ratio, downsample
                )
            else:
                layer = BasicLayer(
                    dims[i],
                    config.depths[i],
                    config.num_heads[i],
                    config.window_sizes[i],
                    config.mlp_ratio,
                    config.local_conv_size,
                    downsample,
                )
            self.layers.append(layer)
        self.out_size = side
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_channels, 1, bias=False),
            LayerNorm2d(config.out_channels),
            nn.Conv2d(config.out_channels, config.out_channels, 3, padding=1, bias=False),
            LayerNorm2d(config.out_channels),
        )

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> Any:
        from transformers.models.sam.modeling_sam import SamVisionEncoderOutput
        from transformers.models.sam_hq.modeling_sam_hq import SamHQVisionEncoderOutput

        x = self.patch_embed(pixel_values)
        intermediate: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x, self.sizes[i])
            if i == 1:
                intermediate.append(x.view(x.shape[0], self.out_size, self.out_size, -1))
        batch, _, dim = x.shape
        grid = x.view(batch, self.out_size, self.out_size, dim).permute(0, 3, 1, 2)
        embeddings = self.neck(grid)
        if self.hq:
            return SamHQVisionEncoderOutput(
                last_hidden_state=embeddings, intermediate_embeddings=intermediate
            )
        return SamVisionEncoderOutput(last_hidden_state=embeddings)


# ------------------------------------------------------------------------------------------------ SAM hosting
def tinyvit_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "image_encoder."
) -> TinyViTConfig:
    """TinyViT sizes read off the official tensors (the input size is not stored: SAM's 1024)."""

    def blocks(stage: int) -> int:
        pattern = re.compile(rf"{re.escape(prefix)}layers\.{stage}\.blocks\.(\d+)\.")
        return 1 + max(int(m.group(1)) for k in state_dict if (m := pattern.match(k)))

    stages = 1 + max(
        int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}layers\.(\d+)\.", k))
    )
    depths = [blocks(i) for i in range(stages)]
    dims = [int(state_dict[f"{prefix}patch_embed.seq.2.c.weight"].shape[0])]
    dims += [
        int(state_dict[f"{prefix}layers.{i}.blocks.0.attn.norm.weight"].shape[0]) for i in range(1, stages)
    ]
    biases = [state_dict[f"{prefix}layers.{i}.blocks.0.attn.attention_biases"] for i in range(1, stages)]
    windows = [round(int(b.shape[1]) ** 0.5) for b in biases]
    return TinyViTConfig(
        embed_dims=dims,
        depths=depths,
        num_heads=[1, *(int(b.shape[0]) for b in biases)],
        window_sizes=[windows[0], *windows],
        mlp_ratio=int(state_dict[f"{prefix}layers.1.blocks.0.mlp.fc1.weight"].shape[0]) / dims[1],
        mbconv_expand_ratio=int(state_dict[f"{prefix}layers.0.blocks.0.conv1.c.weight"].shape[0]) / dims[0],
        local_conv_size=int(state_dict[f"{prefix}layers.1.blocks.0.local_conv.c.weight"].shape[-1]),
        out_channels=int(state_dict[f"{prefix}neck.0.weight"].shape[0]),
    )


def build_tinyvit_sam(encoder: TinyViTConfig, hq: bool, vit_dim: int | None = None) -> Any:
    """A ``SamModel`` / ``SamHQModel`` (random weights) whose ``vision_encoder`` is a :class:`TinyViTEncoder`.

    The transformers config keeps a one-layer placeholder ViT (only its output width and patch grid matter to
    the prompt encoder) and records the TinyViT under ``grounded_image_encoder``.
    """
    from transformers import (
        SamConfig,
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQVisionConfig,
        SamModel,
        SamVisionConfig,
    )

    vision: dict[str, Any] = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "global_attn_indexes": [0],
        "mlp_dim": 16,
        "output_channels": encoder.out_channels,
        "image_size": encoder.image_size,
        "patch_size": 16,
    }
    extra: dict[str, Any] = {CONFIG_KEY: {"type": "tinyvit", **asdict(encoder)}}
    config: Any
    if hq:
        config = SamHQConfig(
            vision_config=SamHQVisionConfig(**vision),
            mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=vit_dim or encoder.embed_dims[2]),
            **extra,
        )
    else:
        config = SamConfig(vision_config=SamVisionConfig(**vision), **extra)
    model: Any = (SamHQModel if hq else SamModel)(config)
    model.vision_encoder = TinyViTEncoder(encoder, hq=hq)
    return model.eval()


def is_tinyvit_config(config: Any) -> bool:
    entry = getattr(config, CONFIG_KEY, None)
    return isinstance(entry, Mapping) and entry.get("type") == "tinyvit"


def _encoder_config(config: Any) -> TinyViTConfig:
    entry = dict(getattr(config, CONFIG_KEY))
    entry.pop("type", None)
    return TinyViTConfig(**entry)


def save_tinyvit_sam(model: Any, folder: str | Path) -> None:
    """Write ``config.json`` and ``tinyvit_sam.safetensors`` (processor files are saved separately)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    model.config.save_pretrained(folder)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def load_tinyvit_sam(folder: str | Path) -> Any:
    """Rebuild a model written by :func:`save_tinyvit_sam` (strict: every weight used, every parameter set)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if not is_tinyvit_config(config):
        raise ValueError(f"{folder} is not a TinyViT SAM folder (no {CONFIG_KEY} entry in config.json)")
    hq = config.model_type == "sam_hq"
    model = build_tinyvit_sam(_encoder_config(config), hq, config.mask_decoder_config.vit_dim if hq else None)
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    return model.eval()
