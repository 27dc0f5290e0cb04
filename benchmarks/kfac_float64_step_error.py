"""K-FAC's factors and preconditioning are float32, also for a float64 model: the relative
error of one K-FAC step against the same step computed in float64.

The reference follows the equations of docs/REFERENCES.md s.3 directly: per layer,
A = E[a_bar a_bar^T], G = E[sum_k g_k g_k^T] with g_k the layer-output gradients of the
columns of S (S S^T = H_out, categorical likelihood, exact Fisher), V the gradient of the
mean loss, and U = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1}; K-FAC's step (lr 1,
momentum 0, one batch of statistics) is -U.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/kfac_float64_step_error.py
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

import natgrad


def _model(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)
    )
    x = torch.randn(256, 20, dtype=torch.float64)
    y = torch.randint(0, 5, (256,))
    return model.double(), x, y


def reference_step(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, damping: float):
    """-U per Linear layer, everything in float64."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    records: dict[nn.Module, tuple] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, s: records.__setitem__(m, (a[0], s))) for m in linears
    ]
    outputs = model(x)
    for hook in hooks:
        hook.remove()
    probs = torch.softmax(outputs.detach(), dim=1)
    sqrt_p = probs.sqrt()
    S = torch.diag_embed(sqrt_p) - probs[:, :, None] * sqrt_p[:, None, :]  # S S^T = H_out
    loss = nn.functional.cross_entropy(outputs, y)
    grads = torch.autograd.grad(
        loss, [p for m in linears for p in (m.weight, m.bias)], retain_graph=True
    )
    n, gamma = x.shape[0], math.sqrt(damping)
    steps = []
    for index, layer in enumerate(linears):
        a, s = records[layer]
        a_bar = torch.cat([a.detach(), torch.ones(n, 1, dtype=a.dtype)], dim=1)
        A = a_bar.T @ a_bar / n
        G = torch.zeros(s.shape[1], s.shape[1], dtype=s.dtype)
        for k in range(S.shape[2]):
            (g,) = torch.autograd.grad(outputs, s, grad_outputs=S[:, :, k], retain_graph=True)
            G += g.T @ g / n
        pi = math.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
        V = torch.cat([grads[2 * index], grads[2 * index + 1][:, None]], dim=1)
        eye_A, eye_G = torch.eye(A.shape[0], dtype=A.dtype), torch.eye(G.shape[0], dtype=G.dtype)
        U = torch.linalg.solve(G + gamma / pi * eye_G, V) @ torch.linalg.inv(A + pi * gamma * eye_A)
        steps.append(-U)
    return steps


def kfac_step(model: nn.Sequential, x, y, damping: float, inverse: str):
    opt = natgrad.KFAC(
        model,
        lr=1.0,
        momentum=0.0,
        damping=damping,
        fisher="exact",
        stat_decay=0.0,
        inverse=inverse,
    )

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    linears = [m for m in model if isinstance(m, nn.Linear)]
    before = [torch.cat([m.weight.detach(), m.bias.detach()[:, None]], 1).clone() for m in linears]
    opt.step(closure)
    after = [torch.cat([m.weight.detach(), m.bias.detach()[:, None]], 1) for m in linears]
    return [a - b for a, b in zip(after, before, strict=True)], opt


def main() -> None:
    warnings.simplefilter("ignore")
    print("damping  inverse   factor dtype  relative step error (float64 model)")
    for damping in (1e-8, 1e-4, 1e-2):
        for inverse in ("cholesky", "eigen"):
            errors = []
            for seed in range(3):
                model, x, y = _model(seed)
                want = reference_step(model, x, y, damping)
                got, opt = kfac_step(model, x, y, damping, inverse)
                diff = [float((g - w).norm() ** 2) for g, w in zip(got, want, strict=True)]
                size = [float(w.norm() ** 2) for w in want]
                errors.append((sum(diff) / sum(size)) ** 0.5)
            dtype = opt.preconditioners[0].A.dtype
            print(
                f"{damping:7.0e}  {inverse:8}  {str(dtype):12}  max {max(errors):.1e} over 3 seeds"
            )


if __name__ == "__main__":
    main()
