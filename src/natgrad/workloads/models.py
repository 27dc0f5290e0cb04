"""Model builders for the registered workloads."""

from __future__ import annotations

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
