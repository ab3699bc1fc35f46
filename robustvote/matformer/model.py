"""MatViT: a Vision Transformer for 32×32 images whose every FFN nests four widths.

The architecture is a pre-norm ViT (Dosovitskiy et al., ICLR 2021). Inputs are normalized per
channel and turned into one token per ``patch``×``patch`` patch, either by one strided
convolution (``stem="patch"``, the original ViT) or by a small convolutional stem of stride-2
3×3 convolutions, each followed by BatchNorm and ReLU, and a final 1×1 projection
(``stem="conv"``, after Xiao et al., "Early Convolutions Help Transformers See Better",
NeurIPS 2021). A class token and learned position embeddings are added. Each of the
``depth`` blocks applies multi-head self-attention and a GELU FFN, each behind a LayerNorm
and a residual connection. A linear head reads the final class token.

Nesting follows MatFormer (Devvrit et al., "MatFormer: Nested Transformer for Elastic
Inference", 2023): a submodel keeps the first ``m`` hidden units of each FFN, so the first
layer's weight rows ``[:m]`` and the second layer's weight columns ``[:, :m]``. Attention,
embeddings and the head are shared by all granularities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustvote.errors import ConfigError
from robustvote.matformer.granularity import Granularity, GranularitySpec, parse_granularity

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
STEMS = ("patch", "conv")


@dataclass(frozen=True)
class MatViTConfig:
    """Shape of a MatViT.

    ``d_ff`` is the full (XL) FFN hidden width and must be divisible by 8. ``stem`` is
    ``"patch"`` (one strided convolution) or ``"conv"`` (a convolutional stem; ``patch`` must
    then be a power of two, one stride-2 convolution per factor of two). ``ffn_widths``
    gives each layer's stored hidden width: ``None`` for a nested model (every layer stores
    ``d_ff``), or the per-layer widths of a standalone model extracted at one granularity,
    which is then recorded in ``granularity``. ``mean`` and ``std`` normalize [0, 1] inputs
    per channel inside the model.
    """

    dim: int = 128
    depth: int = 6
    heads: int = 4
    d_ff: int = 512
    patch: int = 4
    stem: str = "patch"
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    ffn_widths: tuple[int, ...] | None = None
    granularity: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "d_ff", "patch", "image_size", "in_channels", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid MatViT {name}={value!r}: expected a positive integer")
        if self.dim % self.heads:
            raise ConfigError(f"MatViT dim={self.dim} is not divisible by heads={self.heads}; choose dim as a multiple of heads")
        if self.d_ff % 8:
            raise ConfigError(f"MatViT d_ff={self.d_ff} is not divisible by 8, so the S width d_ff/8 is not whole; choose a multiple of 8")
        if self.image_size % self.patch:
            raise ConfigError(f"patch size {self.patch} does not divide the image size {self.image_size}")
        if self.stem not in STEMS:
            raise ConfigError(f"unknown MatViT stem {self.stem!r}; expected one of {', '.join(STEMS)}")
        if self.stem == "conv" and (self.patch < 2 or self.patch & (self.patch - 1)):
            raise ConfigError(
                f"the conv stem needs a patch size that is a power of two (2, 4, 8, ...), got {self.patch}; "
                "change --patch or use --stem patch"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ConfigError(f"mean and std need {self.in_channels} values each, got {self.mean} and {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.ffn_widths is not None:
            widths = tuple(int(w) for w in self.ffn_widths)
            if len(widths) != self.depth or any(w < 1 or w > self.d_ff for w in widths):
                raise ConfigError(
                    f"invalid ffn_widths {list(widths)}: expected {self.depth} widths between 1 and d_ff={self.d_ff}"
                )
            object.__setattr__(self, "ffn_widths", widths)
        if self.granularity is not None:
            object.__setattr__(self, "granularity", tuple(str(g) for g in self.granularity))

    @property
    def nested(self) -> bool:
        """Whether every layer stores all ``d_ff`` units, so every granularity can run."""
        return self.ffn_widths is None

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    def layer_widths(self) -> tuple[int, ...]:
        """Return the stored FFN hidden width of each layer."""
        return self.ffn_widths if self.ffn_widths is not None else (self.d_ff,) * self.depth

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        for key in ("mean", "std", "ffn_widths", "granularity"):
            if payload[key] is not None:
                payload[key] = list(payload[key])
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> MatViTConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ConfigError(f"unknown MatViT config field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        values = dict(payload)
        for key in ("mean", "std", "ffn_widths", "granularity"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def conv_stem(config: MatViTConfig) -> nn.Sequential:
    """Return stride-2 3×3 convolutions (BatchNorm, ReLU) down to one pixel per patch, then a 1×1 projection to ``dim``.

    Channels double per convolution and end at ``dim``: for ``patch=8`` and ``dim=128``,
    32, 64, 128.
    """
    count = config.patch.bit_length() - 1
    layers: list[nn.Module] = []
    channels = config.in_channels
    for index in range(count):
        width = max(config.dim >> (count - 1 - index), 8)
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    layers.append(nn.Conv2d(channels, config.dim, 1))
    return nn.Sequential(*layers)


class Attention(nn.Module):
    """Multi-head self-attention on N×T×dim tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(mixed.transpose(1, 2).reshape(n, tokens, dim))


class NestedFFN(nn.Module):
    """A GELU FFN ``dim -> width -> dim`` that can run on its first ``m`` hidden units."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, dim)

    @property
    def width(self) -> int:
        return self.fc1.out_features

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        if hidden is None or hidden == self.width:
            return self.fc2(F.gelu(self.fc1(x)))
        h = F.gelu(F.linear(x, self.fc1.weight[:hidden], self.fc1.bias[:hidden]))
        return F.linear(h, self.fc2.weight[:, :hidden], self.fc2.bias)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, dim: int, heads: int, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = NestedFFN(dim, width)

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x), hidden)


class MatViT(nn.Module):
    """A ViT with nested FFNs: takes N×3×32×32 images in [0, 1], returns N×classes logits."""

    def __init__(self, config: MatViTConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1))
        if config.stem == "conv":
            self.patch_embed: nn.Module = conv_stem(config)
        else:
            self.patch_embed = nn.Conv2d(config.in_channels, config.dim, config.patch, stride=config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, width) for width in config.layer_widths())
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if isinstance(self.patch_embed, nn.Conv2d):
            fan_in = self.patch_embed.in_channels * self.config.patch ** 2
            nn.init.trunc_normal_(self.patch_embed.weight, std=1 / math.sqrt(fan_in))
        else:
            for module in self.patch_embed.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def hidden_widths(self, granularity: GranularitySpec | None) -> tuple[int | None, ...]:
        """Return the FFN hidden units each layer uses (``None`` for all stored units)."""
        if granularity is None:
            return (None,) * self.config.depth
        if not self.config.nested:
            raise ConfigError(
                f"this MatViT was extracted at granularity {','.join(self.config.granularity or ())} and "
                "runs only at its own widths; call it without a granularity"
            )
        return tuple(g.width(self.config.d_ff) for g in parse_granularity(granularity, self.config.depth))

    def forward(self, x: torch.Tensor, granularity: GranularitySpec | None = None) -> torch.Tensor:
        """Classify N×3×H×W images in [0, 1].

        ``granularity`` is one of S, M, L, XL for every layer, or one letter per layer
        (Mix'n'Match). ``None`` uses every stored hidden unit, which is XL for a nested model.
        """
        widths = self.hidden_widths(granularity)
        x = (x - self.mean) / self.std
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block, hidden in zip(self.blocks, widths):
            tokens = block(tokens, hidden)
        return self.head(self.norm(tokens[:, 0]))


class GranularityView(nn.Module):
    """A fixed-granularity view of a nested MatViT, callable like any classifier."""

    def __init__(self, model: MatViT, granularity: Sequence[Granularity]) -> None:
        super().__init__()
        self.model = model
        self.granularity = tuple(granularity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, granularity=self.granularity)
