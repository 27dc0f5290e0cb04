"""Exact natural gradient (and damped Newton) for small models.

One step solves the damped system with the exact curvature of the mini-batch loss,

    delta = (C + (lambda + eta) I)^{-1} (g + eta theta),
    v <- mu v + delta,    theta <- theta - lr v,

with C the exact, Monte Carlo or empirical Fisher (``curvature="fisher"``) or the
Hessian (``curvature="hessian"``) of the closure's loss, lambda the damping, eta the
weight decay and mu the momentum (docs/REFERENCES.md s.2; Martens 2020). With lr = 1 and
mu = 0 this is theta <- theta - (C + lambda I)^{-1} grad; for linear least squares with
the gaussian likelihood and lambda -> 0 it reaches the solution in one step.

Closure contract (DESIGN.md): ``closure()`` takes no arguments, runs ``outputs =
model(x)`` and returns ``(loss, outputs)`` with ``loss`` the batch mean of the
per-example negative log-likelihood of ``outputs``. The optimizer zeroes the gradients
and runs the backward passes itself. It needs nothing else:
- the inputs x are captured by a forward pre-hook on ``model`` during the closure (the
  last forward call counts; the model takes its inputs as positional tensors whose first
  dimension is the batch, and must treat examples independently);
- the exact and Monte Carlo Fisher need only the outputs and the likelihood;
- the empirical Fisher uses r_n = N dL/df_n, the per-example output gradients of the
  closure's loss (no labels needed);
- the Hessian uses the closure's loss graph: H = J^T (d^2L/df^2) J + sum w_nc d^2 f_nc
  with w = dL/df, so any twice-differentiable per-example loss works.
Only the dependence of the loss on the parameters through ``outputs`` is curvature;
any extra penalty inside the loss contributes its gradient but no curvature.

Solvers: "dense" forms the (P, P) matrix (``natgrad.curvature.dense``) and uses a
Cholesky solve; "cg" runs conjugate gradients on matrix-free products
(``natgrad.curvature.products``) from zero, stopping at ||r|| <= cg_tol ||b|| or
cg_max_iter iterations (truncated CG, the usual Hessian-free practice); "auto" picks
dense up to ``DENSE_AUTO_LIMIT`` parameters. If C + lambda I is singular but positive
semidefinite the dense solver falls back to the minimum-norm (pseudo-inverse) solution;
if it is indefinite (a Hessian with too little damping) both solvers raise
``IndefiniteCurvatureError`` before touching the parameters, and a non-finite update
raises ``FloatingPointError``; parameters never become NaN through a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from natgrad.curvature.dense import (
    dense_output_weighted_hessian,
    flatten_tensors,
    jacobian_sandwich,
    output_jacobian,
    unflatten_like,
)
from natgrad.curvature.likelihoods import Likelihood, get_likelihood
from natgrad.curvature.output_space import (
    OutputCurvature,
    empirical_curvature_from_output_gradients,
    fisher_output_curvature,
    loss_output_curvature,
)
from natgrad.curvature.products import CurvatureOperator
from natgrad.optim.closure import (
    check_model_argument,
    check_outputs_made_by,
    closure_result,
)

Closure = Callable[[], tuple[Tensor, Tensor]]
FISHER_KINDS = ("exact", "mc", "empirical")
CURVATURES = ("fisher", "hessian")
SOLVERS = ("dense", "cg", "auto")
DENSE_AUTO_LIMIT = 4096


class IndefiniteCurvatureError(RuntimeError):
    """The damped curvature C + lambda I is not positive definite; raise the damping."""


def solve_damped_dense(matrix: Tensor, shift: float, rhs: Tensor) -> Tensor:
    """x = (C + shift I)^{-1} b for symmetric C, by Cholesky.

    Falls back to the eigendecomposition when Cholesky fails: a positive semidefinite
    singular system gets the minimum-norm solution sum_{e_i > tol} u_i u_i^T b / e_i;
    an indefinite one raises ``IndefiniteCurvatureError``.
    """
    system = 0.5 * (matrix + matrix.T)
    system = system + shift * torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    eigenvalues, eigenvectors = torch.linalg.eigh(system)
    scale = float(eigenvalues.abs().max())
    tolerance = system.shape[0] * torch.finfo(system.dtype).eps * max(scale, 1e-30)
    smallest = float(eigenvalues.min())
    if smallest < -tolerance:
        raise IndefiniteCurvatureError(
            f"curvature + damping is indefinite (smallest eigenvalue {smallest:.3g}); "
            f"use damping > {shift - smallest:.3g} or curvature='fisher'"
        )
    keep = eigenvalues > tolerance
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, 1.0), 0.0)
    return eigenvectors @ (inverse * (eigenvectors.T @ rhs))


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """Approximately solve A x = b for symmetric positive definite A from x0 = 0.

    Stops when ||b - A x|| <= tol ||b|| or after ``max_iter`` iterations (Hestenes &
    Stiefel 1952); raises ``IndefiniteCurvatureError`` on a direction with p^T A p <= 0.
    Returns (x, iterations).
    """
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    residual_sq = residual @ residual
    threshold = (tol * rhs.norm()) ** 2
    for iteration in range(max_iter):
        if residual_sq <= threshold:
            return solution, iteration
        product = matvec(direction)
        curvature = direction @ product
        if curvature <= 0:
            raise IndefiniteCurvatureError(
                f"CG met a direction of non-positive curvature (p^T A p = {float(curvature):.3g});"
                " increase damping or use curvature='fisher'"
            )
        step = residual_sq / curvature
        solution = solution + step * direction
        residual = residual - step * product
        new_residual_sq = residual @ residual
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return solution, max_iter


def _check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class NaturalGradient(torch.optim.Optimizer):
    """Natural gradient / damped Newton with exact curvature; ``step`` takes a closure.

    Args: model (its trainable parameters are optimized, in the natgrad parameter
    ordering); lr >= 0; damping lambda >= 0; likelihood name or object ("categorical",
    "gaussian", "bernoulli"); fisher "exact" | "mc" | "empirical"; curvature "fisher" |
    "hessian"; solver "dense" | "cg" | "auto"; momentum mu in [0, 1]; weight_decay eta
    >= 0; mc_samples >= 1 targets per example for fisher="mc"; cg_tol > 0 relative
    residual; cg_max_iter >= 1; seed of the Monte Carlo target generator.
    See the module docstring for the update and the closure contract.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1.0,
        damping: float = 1e-3,
        likelihood: str | Likelihood = "categorical",
        fisher: str = "exact",
        curvature: str = "fisher",
        solver: str = "dense",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        mc_samples: int = 1,
        cg_tol: float = 1e-6,
        cg_max_iter: int = 100,
        seed: int = 0,
    ) -> None:
        check_model_argument(model, "NaturalGradient")
        self.likelihood = get_likelihood(likelihood)
        _check_nonnegative("lr", lr)
        _check_nonnegative("damping", damping)
        _check_nonnegative("weight_decay", weight_decay)
        if not (isinstance(momentum, int | float) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        _check_choice("fisher", fisher, FISHER_KINDS)
        _check_choice("curvature", curvature, CURVATURES)
        _check_choice("solver", solver, SOLVERS)
        _check_positive_int("mc_samples", mc_samples)
        _check_positive_int("cg_max_iter", cg_max_iter)
        if not (isinstance(cg_tol, int | float) and cg_tol > 0):
            raise ValueError(f"cg_tol must be > 0, got {cg_tol!r}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        defaults = dict(
            lr=lr,
            damping=damping,
            momentum=momentum,
            weight_decay=weight_decay,
            mc_samples=mc_samples,
            cg_tol=cg_tol,
            cg_max_iter=cg_max_iter,
        )
        super().__init__(params, defaults)
        self._groups_fixed = True
        self.model = model
        self.fisher = fisher
        self.curvature = curvature
        self.solver = solver
        self.generator = torch.Generator(device=params[0].device).manual_seed(seed)
        self.last_cg_iterations = 0

    def add_param_group(self, param_group: dict) -> None:
        """Only at construction: the step solves for all the model's trainable parameters
        at once, as one group."""
        if getattr(self, "_groups_fixed", False):
            raise ValueError(
                "NaturalGradient does not support add_param_group: it optimizes the model it "
                "was built with as one parameter group; change param_groups[0]['lr'|"
                "'damping'|'momentum'|'weight_decay'] or build a new NaturalGradient"
            )
        super().add_param_group(param_group)

    @contextmanager
    def _capturing_inputs(self, store: list):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if kwargs:
                raise ValueError(
                    "NaturalGradient needs the model's forward to take positional tensor "
                    f"inputs only; got keyword arguments {sorted(kwargs)}"
                )
            store[:] = [tuple(a.detach() for a in args)]

        handle = self.model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _run_closure(self, closure: Closure) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        store: list = []
        with torch.enable_grad(), self._capturing_inputs(store):
            loss, outputs = closure_result(closure, "NaturalGradient")
        if not store:
            raise RuntimeError("the closure did not call the model's forward")
        check_outputs_made_by(outputs, self.param_groups[0]["params"], "NaturalGradient")
        return loss, outputs, store[0]

    def _output_curvature(
        self, loss: Tensor, outputs: Tensor, samples: int
    ) -> tuple[OutputCurvature, Tensor | None]:
        """M of C = J^T M J (+ residual term for the Hessian), and the residual weights."""
        if self.curvature == "hessian":
            return loss_output_curvature(loss, outputs)
        if self.fisher == "empirical":
            (gradient,) = torch.autograd.grad(loss, outputs, retain_graph=True)
            per_example = gradient.reshape(gradient.shape[0], -1) * gradient.shape[0]
            return empirical_curvature_from_output_gradients(per_example), None
        flat_outputs = outputs.detach().reshape(outputs.shape[0], -1)
        curvature = fisher_output_curvature(
            self.likelihood, flat_outputs, self.fisher, samples=samples, generator=self.generator
        )
        return curvature, None

    def _gradient(self, params: list[Tensor], weight_decay: float) -> Tensor:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        gradient = flatten_tensors(grads)
        if weight_decay:
            gradient = gradient + weight_decay * flatten_tensors([p.detach() for p in params])
        return gradient

    def _use_dense(self, size: int) -> bool:
        return self.solver == "dense" or (self.solver == "auto" and size <= DENSE_AUTO_LIMIT)

    def _solve(
        self,
        inputs: tuple[Tensor, ...],
        output_curvature: OutputCurvature,
        residual_weights: Tensor | None,
        gradient: Tensor,
        group: dict,
    ) -> Tensor:
        """(C + (lambda + eta) I)^{-1} gradient with the configured solver."""
        shift = group["damping"] + group["weight_decay"]
        if self._use_dense(gradient.numel()):
            jacobian = output_jacobian(self.model, inputs)
            matrix = jacobian_sandwich(jacobian, output_curvature)
            if residual_weights is not None:
                matrix = matrix + dense_output_weighted_hessian(
                    self.model, inputs, residual_weights
                )
            self.last_cg_iterations = 0
            return solve_damped_dense(matrix, shift, gradient)
        operator = CurvatureOperator(
            self.model, inputs, output_curvature, residual_weights, damping=shift
        )
        solution, self.last_cg_iterations = conjugate_gradient(
            operator.matvec, gradient, group["cg_tol"], group["cg_max_iter"]
        )
        return solution

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One natural-gradient step; returns the closure's loss (detached)."""
        if closure is None:
            raise ValueError("NaturalGradient.step needs a closure returning (loss, outputs)")
        group = self.param_groups[0]
        params = group["params"]
        for p in params:
            p.grad = None
        loss, outputs, inputs = self._run_closure(closure)
        with torch.enable_grad():
            output_curvature, residual = self._output_curvature(loss, outputs, group["mc_samples"])
            loss.backward(retain_graph=self.curvature == "hessian")
        with torch.no_grad():
            gradient = self._gradient(params, group["weight_decay"])
        direction = self._solve(inputs, output_curvature, residual, gradient, group)
        if not bool(torch.isfinite(direction).all()):
            raise FloatingPointError("non-finite natural-gradient direction; parameters unchanged")
        with torch.no_grad():
            self._apply(params, unflatten_like(direction, params), group)
        return loss.detach()

    def _apply(self, params: list[Tensor], directions: list[Tensor], group: dict) -> None:
        """v <- mu v + delta; theta <- theta - lr v (no buffer when mu = 0)."""
        for p, delta in zip(params, directions, strict=True):
            update = delta
            if group["momentum"]:
                state = self.state[p]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = delta.clone()
                else:
                    buffer.mul_(group["momentum"]).add_(delta)
                state["momentum_buffer"] = buffer
                update = buffer
            p.add_(update, alpha=-group["lr"])

    def state_dict(self) -> dict:
        """torch.optim state plus the Monte Carlo generator state, for exact resumption."""
        state = super().state_dict()
        state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("generator_state", None)
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self.generator.set_state(generator_state)


__all__ = [
    "NaturalGradient",
    "IndefiniteCurvatureError",
    "solve_damped_dense",
    "conjugate_gradient",
]
