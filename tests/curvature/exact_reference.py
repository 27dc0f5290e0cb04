"""Plain-autograd references for the dense curvature tests (loops, float64, no torch.func)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from natgrad.curvature.likelihoods import get_likelihood


def tanh_mlp(out_features: int, seed: int = 0, in_features: int = 3, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features)
    )
    return model.double()


def batch(name: str, n: int = 6, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    if name == "categorical":
        targets = torch.randint(0, classes, (n,), generator=generator)
    elif name == "bernoulli":
        targets = torch.randint(0, 2, (n, classes), generator=generator).double()
    else:
        targets = torch.randn(n, classes, generator=generator, dtype=torch.float64)
    return inputs, targets


def params_of(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_grad(scalar: Tensor, model: nn.Module, create_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(
        scalar, params_of(model), create_graph=create_graph, retain_graph=True
    )
    return torch.cat([g.reshape(-1) for g in grads])


def jacobian_rows(model: nn.Module, inputs: Tensor) -> Tensor:
    """J[n, c, :] by one backward pass per output entry."""
    outputs = model(inputs)
    n, c = outputs.shape
    rows = [flat_grad(outputs[i, j], model) for i in range(n) for j in range(c)]
    return torch.stack(rows).reshape(n, c, -1)


def output_hessians(name: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """d^2 nll_n / d f_n^2 by autograd, for every example."""
    likelihood = get_likelihood(name)
    blocks = []
    for i in range(outputs.shape[0]):

        def nll_i(f: Tensor, i: int = i) -> Tensor:
            return likelihood.nll(f.unsqueeze(0), targets[i : i + 1]).sum()

        blocks.append(torch.autograd.functional.hessian(nll_i, outputs[i].detach()))
    return torch.stack(blocks)


def reference_ggn(model: nn.Module, inputs: Tensor, targets: Tensor, name: str) -> Tensor:
    """(1/N) sum_n J_n^T (d^2 nll_n / d f^2) J_n from loops."""
    jac = jacobian_rows(model, inputs)
    hess = output_hessians(name, model(inputs).detach(), targets)
    total = sum(jac[i].T @ hess[i] @ jac[i] for i in range(jac.shape[0]))
    return total / jac.shape[0]


def per_example_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, name: str) -> Tensor:
    """Gradient of nll_n with respect to the parameters, one row per example."""
    likelihood = get_likelihood(name)
    rows = []
    for i in range(inputs.shape[0]):
        nll = likelihood.nll(model(inputs[i : i + 1]), targets[i : i + 1]).sum()
        rows.append(flat_grad(nll, model))
    return torch.stack(rows)


def reference_hessian(model: nn.Module, inputs: Tensor, targets: Tensor, name: str) -> Tensor:
    """Hessian of the mean loss by double backward, one row per parameter."""
    likelihood = get_likelihood(name)
    gradient = flat_grad(likelihood.loss(model(inputs), targets), model, create_graph=True)
    rows = [flat_grad(gradient[k], model) for k in range(gradient.numel())]
    return torch.stack(rows)
