"""Model builders for the registered workloads."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Flatten, then linear layers with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def simple_cnn(in_channels: int = 1, image_size: int = 28, classes: int = 10) -> nn.Sequential:
    """Choi et al.'s simple CNN (after Shallue et al.): the exact architecture used.

    conv 5x5, 32 channels, padding 2, ReLU, max-pool 2x2 ->
    conv 5x5, 64 channels, padding 2, ReLU, max-pool 2x2 ->
    flatten (64 * 7 * 7 = 3136) -> linear 1024, ReLU -> linear ``classes`` (logits).
    """
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * pooled * pooled, 1024),
        nn.ReLU(),
        nn.Linear(1024, classes),
    )


AUTOENCODER_SIZES = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]


def deep_autoencoder(sizes: list[int] | None = None) -> nn.Sequential:
    """The K-FAC paper's deep autoencoder: tanh hidden units, a linear code layer.

    784-1000-500-250-30-250-500-1000-784; the output is 784 logits of a Bernoulli
    likelihood (sigmoid cross-entropy summed over pixels).
    """
    sizes = sizes or AUTOENCODER_SIZES
    code_index = sizes.index(min(sizes))
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        is_code = index + 1 == code_index
        is_output = index == len(sizes) - 2
        if not (is_code or is_output):
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose q, k, v and output projections are nn.Linear modules
    called as modules (so K-FAC's hooks see them), softmax(q k^T / sqrt(d_head)) v."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.output = nn.Linear(width, width)

    def _split(self, x):
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x):
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(x.shape)
        return self.output(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) (GELU)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A small ViT: non-overlapping patches as tokens, a learned position embedding,
    pre-norm blocks, a final LayerNorm, the mean over tokens and a linear head."""

    def __init__(
        self,
        image_size: int = 28,
        patch: int = 7,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        classes: int = 10,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by the patch {patch}")
        self.patch = patch
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(patch * patch, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def patches(self, images):
        """(N, 1, H, W) (or (N, H*W) square) -> (N, tokens, patch * patch), row-major."""
        batch = images.shape[0]
        side = math.isqrt(images[0].numel())
        grid = side // self.patch
        x = images.reshape(batch, grid, self.patch, grid, self.patch)
        return x.permute(0, 1, 3, 2, 4).reshape(batch, grid * grid, self.patch * self.patch)

    def forward(self, images):
        x = self.embed(self.patches(images)) + self.position
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def vision_transformer(**kwargs) -> VisionTransformer:
    """The fmnist_vit model: 7x7 patches (16 tokens), width 64, 2 blocks of 4 heads."""
    return VisionTransformer(**kwargs)
