"""The scalar equations behind K-FAC's step rules: quadratic-model alpha/mu,
Levenberg-Marquardt damping, KL clipping. The rule objects that apply them to a
model's layers are in :mod:`natgrad.optim.kfac_step_rules`.

These are small pure functions on scalars (0-d tensors where they come from the
device, so that the plain path needs no host sync). docs/REFERENCES.md s.3 gives the
equations; Martens & Grosse (2015) s.6.4 and s.7, Ba et al. (2017) s.5 the sources.
"""

from __future__ import annotations

import torch
from torch import Tensor

LM_INTERVAL = 5
LM_DECAY_PER_STEP = 19.0 / 20.0
LM_LOWER_RHO = 0.25
LM_UPPER_RHO = 0.75


def levenberg_marquardt_omega(interval: int = LM_INTERVAL) -> float:
    """omega = (19/20)^T1, the damping factor applied every T1 steps."""
    return LM_DECAY_PER_STEP**interval


def levenberg_marquardt_damping(
    damping: float,
    rho: float,
    omega: float,
    min_damping: float,
    max_damping: float,
) -> float:
    """The Levenberg-Marquardt rule on the reduction ratio rho.

    rho > 3/4: lambda <- omega lambda; rho < 1/4 (or rho not finite): lambda <- lambda / omega;
    otherwise unchanged; the result is clipped to [min_damping, max_damping].
    """
    if rho > LM_UPPER_RHO:
        damping = damping * omega
    elif not rho >= LM_LOWER_RHO:  # also catches NaN
        damping = damping / omega
    return min(max(damping, min_damping), max_damping)


def reduction_ratio(new_loss: Tensor, old_loss: Tensor, predicted_change: Tensor) -> Tensor:
    """rho = (h(theta + d) - h(theta)) / (M(d) - M(0))."""
    return (new_loss - old_loss) / predicted_change


def quadratic_model_value(
    coefficients: Tensor, curvature_gram: Tensor, grad_dots: Tensor
) -> Tensor:
    """M(d) - M(0) = 1/2 c^T K c + c^T b; d = sum c_i u_i, K_ij = u_i^T C u_j, b_i = grad^T u_i."""
    return 0.5 * coefficients @ curvature_gram @ coefficients + coefficients @ grad_dots


def quadratic_model_coefficients(
    fisher_gram: Tensor,
    inner_gram: Tensor,
    grad_dots: Tensor,
    total_damping: float,
    has_previous: bool,
) -> Tensor:
    """(alpha, mu) minimizing M(alpha Delta + mu delta0) (Martens & Grosse 2015, s.7).

    M(d) = 1/2 d^T (F + (lambda+eta) I) d + grad^T d.

    ``fisher_gram`` is the 2x2 matrix [u_i^T F u_j] and ``inner_gram`` [u_i^T u_j] for
    u = (Delta, delta0); ``grad_dots`` is [grad^T Delta, grad^T delta0]. The minimizer solves
    K c = -b with K = fisher_gram + (lambda+eta) inner_gram. Without a previous update
    (step 1, delta0 = 0) mu = 0 and
    alpha = -grad^T Delta / (Delta^T F Delta + (lambda+eta) ||Delta||^2).
    """
    curvature_gram = fisher_gram + total_damping * inner_gram
    if not has_previous:
        alpha = -grad_dots[0] / curvature_gram[0, 0]
        return torch.stack([alpha, torch.zeros_like(alpha)])
    return torch.linalg.solve(curvature_gram, -grad_dots)


def kl_clip_scale(grad_dot_update: Tensor, lr: float, kl_clip: float) -> Tensor:
    """nu = min(1, sqrt(C / (lr^2 * sum_layers <V, Delta>))) (Ba et al. 2017; kfac-pytorch).

    V is the gradient, Delta = (damped Kronecker inverse) V the preconditioned gradient, so
    lr^2 <V, Delta> approximates the KL change lr^2 Delta^T F Delta of the step -lr Delta.
    A non-positive product (or lr = 0) leaves the step unscaled.
    """
    budget = lr * lr * grad_dot_update
    safe = torch.where(budget > 0, budget, torch.ones_like(budget))
    scale = torch.sqrt(kl_clip / safe).clamp(max=1.0)
    return torch.where(budget > 0, scale, torch.ones_like(scale))


__all__ = [
    "LM_INTERVAL",
    "levenberg_marquardt_omega",
    "levenberg_marquardt_damping",
    "reduction_ratio",
    "quadratic_model_value",
    "quadratic_model_coefficients",
    "kl_clip_scale",
]
