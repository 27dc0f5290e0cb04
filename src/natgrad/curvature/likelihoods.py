"""Likelihoods: the predictive distributions p(y | f(x)) that define the Fisher.

Each likelihood maps network outputs ``f`` of shape (N, C) to a distribution over
targets. The loss convention of natgrad is the batch mean of the per-example negative
log-likelihood; the Fisher is E_x[J^T H_out J] with H_out the Hessian of the
per-example negative log-likelihood with respect to the outputs (docs/REFERENCES.md s.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Likelihood:
    """Base class: per-example NLL, target sampling, and the output Hessian."""

    name: str = ""

    def nll(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-example negative log-likelihood, shape (N,)."""
        raise NotImplementedError

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The natgrad loss: the batch mean of the per-example NLL."""
        return self.nll(outputs, targets).mean()

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Targets drawn from p(y | outputs), one per example (no gradient).

        An example whose outputs are not finite (a diverged model, a NaN input) gets a
        target from a fixed distribution instead of an error: its gradients are not finite
        either, so the statistics of that step are skipped (with a warning) downstream.
        """
        raise NotImplementedError

    def output_hessian(self, outputs: Tensor) -> Tensor:
        """H_out per example: d^2 nll / d outputs^2, shape (N, C, C)."""
        raise NotImplementedError

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        """A factor S per example with S S^T = H_out, shape (N, C, K)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Categorical(Likelihood):
    """Softmax cross-entropy on logits; targets are class indices."""

    name: str = "categorical"

    def nll(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.softmax(outputs.detach().float(), dim=-1)
        probs = torch.nan_to_num(probs, nan=1.0)  # a non-finite row: uniform
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def output_hessian(self, outputs: Tensor) -> Tensor:
        p = torch.softmax(outputs.detach(), dim=-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        # diag(p) - p p^T = (diag(sqrt p) - p sqrt(p)^T)(diag(sqrt p) - sqrt(p) p^T)
        p = torch.softmax(outputs.detach(), dim=-1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(-1) * sqrt_p.unsqueeze(-2)


@dataclass(frozen=True)
class Gaussian(Likelihood):
    """Unit-variance Gaussian: nll = 1/2 ||y - f||^2 summed over outputs (constant dropped)."""

    name: str = "gaussian"

    def nll(self, outputs: Tensor, targets: Tensor) -> Tensor:
        diff = (outputs - targets).flatten(1)
        return 0.5 * diff.pow(2).sum(dim=1)

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean = outputs.detach()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise

    def output_hessian(self, outputs: Tensor) -> Tensor:
        n, c = outputs.shape[0], outputs[0].numel()
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return eye.expand(n, c, c).clone()

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        return self.output_hessian(outputs)


@dataclass(frozen=True)
class Bernoulli(Likelihood):
    """Sigmoid cross-entropy on logits, summed over outputs; targets in [0, 1]."""

    name: str = "bernoulli"

    def nll(self, outputs: Tensor, targets: Tensor) -> Tensor:
        per_unit = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        return per_unit.flatten(1).sum(dim=1)

    def sample(self, outputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.nan_to_num(torch.sigmoid(outputs.detach()), nan=0.5)
        return torch.bernoulli(probs, generator=generator)

    def output_hessian(self, outputs: Tensor) -> Tensor:
        p = torch.sigmoid(outputs.detach()).flatten(1)
        return torch.diag_embed(p * (1 - p))

    def output_hessian_sqrt(self, outputs: Tensor) -> Tensor:
        p = torch.sigmoid(outputs.detach()).flatten(1)
        return torch.diag_embed((p * (1 - p)).sqrt())


LIKELIHOODS: dict[str, Likelihood] = {
    "categorical": Categorical(),
    "gaussian": Gaussian(),
    "bernoulli": Bernoulli(),
}


def get_likelihood(name: str | Likelihood) -> Likelihood:
    """Look a likelihood up by name; ValueError lists the valid names."""
    if isinstance(name, Likelihood):
        return name
    try:
        return LIKELIHOODS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(LIKELIHOODS))
        raise ValueError(f"unknown likelihood {name!r}; valid: {valid}") from None


__all__ = ["Likelihood", "Categorical", "Gaussian", "Bernoulli", "LIKELIHOODS", "get_likelihood"]
