"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; Grosse & Martens 2016).

Each tracked layer (nn.Linear, nn.Conv2d; see ``natgrad.curvature.layers``) has the
Fisher block A ⊗ G. One step:

1. forward/backward of the closure's loss (parameter gradients V, plus eta * theta for
   weight decay eta);
2. when statistics are due, batch factors A, G (``natgrad.curvature.kronecker``),
   checked finite, then averaged: new = eps_k old + (1 - eps_k) batch,
   eps_k = min(1 - 1/k, stat_decay);
3. when inverses are due, damped inverses or eigendecompositions
   (``natgrad.precondition``) with gamma = sqrt(lambda + eta) and the trace-norm pi;
4. the proposal Delta = -(G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1} per layer;
5. the update: fixed lr and momentum (v <- mu v - Delta, theta <- theta - lr v), with
   optional KL clipping, or alpha and mu from the quadratic model
   (``adapt_step=True``);
6. every T1 steps, optionally, the Levenberg-Marquardt damping rule.

Parameters of other modules go to a first-order fallback optimizer (heavy-ball
Momentum by default) with the same lr, momentum and weight decay.

Closure contract: ``closure()`` returns ``(loss, outputs)`` with ``outputs = model(x)``
and ``loss`` the batch mean of the per-example NLL; the optimizer zeroes the
gradients and runs the backward passes itself. Host syncs: one per statistics step
(the finiteness check of the batch factors), the Cholesky/eigen calls of an inverse
step, and one per damping adaptation (the reduction ratio); the plain step has none.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

from natgrad.curvature.capture import (
    CurvatureCapture,
    TrackedLayer,
    find_tracked_layers,
    unwrap_model,
)
from natgrad.curvature.dense import parameter_dict
from natgrad.curvature.kronecker import (
    FISHER_KINDS,
    KroneckerFactors,
    all_finite,
    ema_decay,
    layer_batch_factors,
    output_gradients,
    update_running_factors,
)
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.curvature.output_space import fisher_output_curvature
from natgrad.optim.registry import (
    BuildContext,
    Hyperparameter,
    OptimizerSpec,
    register_optimizer,
)
from natgrad.optim.step_rules import (
    LM_INTERVAL,
    kl_clip_scale,
    levenberg_marquardt_damping,
    levenberg_marquardt_omega,
    quadratic_model_coefficients,
    quadratic_model_value,
    reduction_ratio,
)
from natgrad.precondition.damping import damping_gamma
from natgrad.precondition.inverse import check_inverse_method, decompose, precondition

Closure = Callable[[], tuple[Tensor, Tensor]]
FallbackFactory = Callable[..., torch.optim.Optimizer]
_DECOMPOSITION_PREFIX = "inverse."


@dataclass(frozen=True)
class DampingConfig:
    """Levenberg-Marquardt damping adaptation: every ``interval`` steps, clipped to bounds."""

    interval: int = LM_INTERVAL
    min_damping: float = 1e-8
    max_damping: float = 1e8

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"DampingConfig.interval must be >= 1, got {self.interval}")
        if not 0.0 <= self.min_damping <= self.max_damping:
            raise ValueError(
                "DampingConfig needs 0 <= min_damping <= max_damping, got "
                f"{self.min_damping} and {self.max_damping}"
            )


def _default_fallback(params, lr: float, momentum: float, weight_decay: float):
    from natgrad.optim.first_order import Momentum

    return Momentum(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _check_range(name: str, value: float, low: float, high: float, *, closed_high: bool) -> None:
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")


def _check_arguments(args: dict) -> None:
    for name in ("lr", "damping", "weight_decay"):
        if not args[name] >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {args[name]!r}")
    _check_range("momentum", args["momentum"], 0.0, 1.0, closed_high=True)
    _check_range("stat_decay", args["stat_decay"], 0.0, 1.0, closed_high=False)
    for name in ("stat_fraction", "model_fraction"):
        if not 0.0 < args[name] <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {args[name]!r}")
    for name in ("stat_every", "inv_every", "model_min_examples"):
        if not (isinstance(args[name], int) and args[name] >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {args[name]!r}")
    if args["fisher"] not in FISHER_KINDS:
        raise ValueError(f"fisher must be one of {', '.join(FISHER_KINDS)}; got {args['fisher']!r}")
    if args["kl_clip"] is not None and not args["kl_clip"] > 0.0:
        raise ValueError(f"kl_clip must be None or > 0, got {args['kl_clip']!r}")


def _module_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else "(root)"


def _slice_batch(inputs: tuple, batch_size: int, count: int) -> tuple:
    """The first ``count`` examples of every tensor argument with a batch dimension."""
    return tuple(
        x[:count] if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == batch_size else x
        for x in inputs
    )


def _dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_k <x_k, y_k> in float32 without an elementwise temporary."""
    return sum(
        torch.vdot(x.reshape(-1).float(), y.reshape(-1).float())
        for x, y in zip(xs, ys, strict=True)
    )


def _layer_dot(xs: list[Tensor | None], ys: list[Tensor | None]) -> Tensor:
    """sum over layers of <X, Y> (float32) for per-layer matrices; None counts as zero."""
    terms = [
        _matrix_dot(x.float(), y.float())
        for x, y in zip(xs, ys, strict=True)
        if x is not None and y is not None
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _matrix_dot(x: Tensor, y: Tensor) -> Tensor:
    """<X, Y> for two matrices: a flat vdot when both are contiguous, else an elementwise
    sum, so that no operand is copied to flatten it."""
    if x.is_contiguous() and y.is_contiguous():
        return torch.vdot(x.reshape(-1), y.reshape(-1))
    return (x * y).sum()


class KFAC(torch.optim.Optimizer):
    """K-FAC with factored Tikhonov damping; second-order, so ``step`` takes a closure.

    Args:
        model: the network (a DistributedDataParallel wrapper is unwrapped); every
            nn.Linear and nn.Conv2d (groups = 1) is tracked unless named in ``exclude``.
        lr, momentum: fixed step rule theta <- theta - lr v, v <- momentum v + U with U
            the preconditioned gradient (ignored when ``adapt_step``).
        damping: lambda >= 0; gamma = sqrt(lambda + weight_decay) damps each factor.
        weight_decay: eta, adds eta * theta to the gradient and to the damping.
        likelihood: "categorical", "gaussian" or "bernoulli" (or a Likelihood).
        fisher: "mc" (sampled targets), "exact" (output-Hessian square root) or
            "empirical" (the closure's labels).
        stat_decay: EMA decay of the factors in [0, 1) (warm-up min(1 - 1/k, decay)).
        stat_every, inv_every: periods (steps) of statistics and of inverses.
        stat_fraction: statistics on the first ceil(stat_fraction * m) examples.
        model_fraction, model_min_examples: the Fisher products of the quadratic model
            (``adapt_step`` and the damping rule) on the first
            max(ceil(model_fraction * m), model_min_examples) examples (at most m); the
            floor keeps the 2x2 model from being estimated on a handful of examples at
            small batch sizes, where its step overshoots and training diverges; the
            gradient is always the whole batch's.
        inverse: "cholesky" or "eigen" (damping can change without a new decomposition).
        adapt_damping: Levenberg-Marquardt rule every ``damping_config.interval`` steps.
        adapt_step: alpha and mu from the quadratic model with exact GGN products.
        kl_clip: C for the norm constraint nu = min(1, sqrt(C / (lr^2 sum <V, U>))).
        exclude: qualified module names left to the fallback optimizer.
        fallback: factory ``(params, lr=, momentum=, weight_decay=)`` for parameters that
            are not in tracked layers; default natgrad.optim.Momentum.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        momentum: float = 0.0,
        damping: float = 1e-3,
        weight_decay: float = 0.0,
        likelihood="categorical",
        fisher: str = "mc",
        stat_decay: float = 0.95,
        stat_every: int = 1,
        inv_every: int = 20,
        stat_fraction: float = 1.0,
        model_fraction: float = 1.0,
        model_min_examples: int = 128,
        inverse: str = "cholesky",
        adapt_damping: bool = False,
        adapt_step: bool = False,
        kl_clip: float | None = None,
        exclude: Sequence[str] = (),
        fallback: FallbackFactory | None = None,
        damping_config: DampingConfig = DampingConfig(),
    ) -> None:
        _check_arguments(locals())
        check_inverse_method(inverse)
        self.likelihood = get_likelihood(likelihood)
        self.model = model
        self.fisher, self.inverse_method = fisher, inverse
        self.stat_decay, self.stat_every, self.inv_every = stat_decay, stat_every, inv_every
        self.stat_fraction, self.kl_clip = stat_fraction, kl_clip
        self.model_fraction, self.model_min_examples = model_fraction, model_min_examples
        self.adapt_damping, self.adapt_step = adapt_damping, adapt_step
        self.damping_config = damping_config
        self.layers = self._find_layers(model, tuple(exclude))
        params = [p for p in unwrap_model(model).parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, damping=damping, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.fallback = self._build_fallback(fallback or _default_fallback)
        self.capture = CurvatureCapture(model, self.layers)
        self.generator = self._sampling_generator(params)
        self._batched_jvp = True
        self.steps = 0
        self.stat_updates = 0
        self.skipped_statistics = 0

    # ------------------------------------------------------------ construction

    @staticmethod
    def _sampling_generator(params: list[Tensor]) -> torch.Generator:
        """The optimizer's own RNG for sampled targets, seeded from the global torch RNG.

        Its state is part of :meth:`state_dict`, so a resumed run draws the same targets.
        """
        device = params[0].device if params else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (1,)))
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _find_layers(model: nn.Module, exclude: tuple[str, ...]) -> list[TrackedLayer]:
        names = {name for name, _ in unwrap_model(model).named_modules()}
        unknown = [name for name in exclude if name not in names]
        if unknown:
            raise ValueError(f"exclude names no module of the model: {', '.join(unknown)}")
        return find_tracked_layers(model, exclude)

    def _build_fallback(self, factory: FallbackFactory) -> torch.optim.Optimizer | None:
        tracked = {id(p) for layer in self.layers for p in layer.params}
        named = [
            (name, p)
            for name, p in unwrap_model(self.model).named_parameters()
            if p.requires_grad and id(p) not in tracked
        ]
        if not named:
            return None
        modules = sorted({_module_of(name) for name, _ in named})
        warnings.warn(
            "KFAC: no Kronecker factors for module(s) "
            f"{', '.join(modules)}; their parameters use the first-order fallback",
            UserWarning,
            stacklevel=3,
        )
        group = self.defaults
        return factory(
            [p for _, p in named],
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
        )

    # ------------------------------------------------------------ the step

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One K-FAC update; returns the closure's loss (detached tensor, no host sync)."""
        if closure is None:
            raise ValueError("KFAC.step needs a closure returning (loss, outputs)")
        group = self.param_groups[0]
        self.steps += 1
        stats_due = (self.steps - 1) % self.stat_every == 0
        loss, batch_inputs, batch_factors = self._forward_backward(closure, stats_due)
        with torch.no_grad(), self._no_autocast():
            if batch_factors is not None:
                self.update_statistics(batch_factors)
            gamma = damping_gamma(group["damping"], group["weight_decay"])
            self.update_inverses(gamma, force=(self.steps - 1) % self.inv_every == 0)
            grads = self.gradient_matrices(group["weight_decay"])
            proposals = self.precondition(grads, gamma)
            updates, predicted = self._step_rule(group, grads, proposals, batch_inputs)
            adapt_due = self.adapt_damping and self.steps % self.damping_config.interval == 0
            if adapt_due and predicted is None:  # the model M is taken at theta, before the update
                predicted = self._predicted_change(grads, updates, batch_inputs, group)
            self.apply_updates(updates)
        if adapt_due:  # rho compares h(theta + d) with M(d): before the fallback moves others
            self._adapt_damping(closure, loss, predicted, group)
        self._fallback_step(group)
        return loss.detach()

    def _no_autocast(self):
        device_type = self.param_groups[0]["params"][0].device.type
        return torch.autocast(device_type=device_type, enabled=False)

    def _forward_backward(
        self, closure: Closure, stats_due: bool
    ) -> tuple[Tensor, tuple, list[KroneckerFactors] | None]:
        """Run the closure, its backward, and (when due) the statistics backward."""
        for p in self.param_groups[0]["params"]:
            p.grad = None
        reuse = stats_due and (self.stat_fraction == 1.0 or self.fisher == "empirical")
        with torch.enable_grad():
            with self.capture.capturing() if reuse else nullcontext():
                loss, outputs = closure()
            batch_inputs = self.capture.root_inputs
            batch_size = outputs.shape[0]
            count = math.ceil(self.stat_fraction * batch_size)
            factors = None
            if reuse:
                factors = self._statistics_from_main(loss, outputs, count)
            else:
                loss.backward()
                if stats_due:
                    sub_inputs = _slice_batch(batch_inputs, batch_size, count)
                    factors = self._statistics_from_subbatch(sub_inputs)
        self.capture.clear()
        return loss, batch_inputs, factors

    def _statistics_from_main(
        self, loss: Tensor, outputs: Tensor, count: int
    ) -> list[KroneckerFactors]:
        """Statistics from the main forward (all examples, or the first ``count`` for empirical)."""
        layer_outputs = [layer.layer_output for layer in self.layers]
        if self.fisher == "empirical":
            grads = self._backward_with_output_grads(loss, layer_outputs)
            scale = outputs.shape[0]  # d(mean loss)/ds = g_n / N
            per_layer = [[g[:count].float() * scale] for g in grads]
        else:
            per_layer = output_gradients(
                self.fisher, self.likelihood, outputs, layer_outputs, self.generator
            )
            loss.backward()
        with torch.no_grad(), self._no_autocast():
            return [
                layer_batch_factors(layer, layer.layer_input[:count], grads, count)
                for layer, grads in zip(self.layers, per_layer, strict=True)
            ]

    @staticmethod
    def _backward_with_output_grads(loss: Tensor, layer_outputs: list[Tensor]) -> list[Tensor]:
        """loss.backward(), recording the gradient at each layer output on the way."""
        recorded: list[Tensor | None] = [None] * len(layer_outputs)
        handles = []
        for index, output in enumerate(layer_outputs):

            def record(grad: Tensor, index: int = index) -> None:
                recorded[index] = grad.detach()

            handles.append(output.register_hook(record))
        try:
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
        return [
            g if g is not None else torch.zeros_like(o)
            for g, o in zip(recorded, layer_outputs, strict=True)
        ]

    def _statistics_from_subbatch(self, sub_inputs: tuple) -> list[KroneckerFactors]:
        """A separate forward on the first examples with capture on, then sampled/exact g."""
        with self.capture.capturing():
            sub_outputs = unwrap_model(self.model)(*sub_inputs)
        layer_outputs = [layer.layer_output for layer in self.layers]
        per_layer = output_gradients(
            self.fisher, self.likelihood, sub_outputs, layer_outputs, self.generator
        )
        count = sub_outputs.shape[0]
        with torch.no_grad(), self._no_autocast():
            return [
                layer_batch_factors(layer, layer.layer_input, grads, count)
                for layer, grads in zip(self.layers, per_layer, strict=True)
            ]

    # ------------------------------------------------------------ statistics and inverses

    def update_statistics(self, batch_factors: list[KroneckerFactors]) -> bool:
        """EMA of the factors from one batch; skipped (with a warning) if any entry is not finite.

        The finiteness check is the one host sync of a statistics step.
        """
        if not bool(all_finite(batch_factors)):
            self.skipped_statistics += 1
            if self.skipped_statistics == 1:
                warnings.warn(
                    "KFAC: non-finite curvature statistics skipped (further skips are silent)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        self.stat_updates += 1
        decay = ema_decay(self.stat_updates, self.stat_decay)
        for layer, batch in zip(self.layers, batch_factors, strict=True):
            state = self.state[layer.module.weight]
            running = KroneckerFactors(state["A"], state["G"]) if "A" in state else None
            running = update_running_factors(running, batch, decay)
            state["A"], state["G"] = running.A, running.G
        return True

    def update_inverses(self, gamma: float, force: bool) -> None:
        """Decompose every layer's damped factors when ``force``d, or when none exists yet."""
        for layer in self.layers:
            state = self.state[layer.module.weight]
            if "A" not in state:
                continue
            if not force and _DECOMPOSITION_PREFIX + "ready" in state:
                continue
            result = decompose(self.inverse_method, state["A"], state["G"], gamma)
            for key, tensor in result.items():
                state[_DECOMPOSITION_PREFIX + key] = tensor
            state[_DECOMPOSITION_PREFIX + "ready"] = torch.ones((), device=state["A"].device)

    def _decomposition(self, layer: TrackedLayer) -> dict[str, Tensor] | None:
        state = self.state[layer.module.weight]
        if _DECOMPOSITION_PREFIX + "ready" not in state:
            return None
        start = len(_DECOMPOSITION_PREFIX)
        return {k[start:]: v for k, v in state.items() if k.startswith(_DECOMPOSITION_PREFIX)}

    # ------------------------------------------------------------ preconditioning

    def gradient_matrices(self, weight_decay: float) -> list[Tensor | None]:
        """V per layer (out x in[+1]) from the parameter gradients plus eta * theta."""
        matrices: list[Tensor | None] = []
        for layer in self.layers:
            module = layer.module
            if module.weight.grad is None:
                matrices.append(None)
                continue
            weight_grad = module.weight.grad.add(module.weight, alpha=weight_decay)
            bias_grad = None
            if module.bias is not None:
                bias = module.bias
                bias_grad = (bias.grad if bias.grad is not None else torch.zeros_like(bias)).add(
                    bias, alpha=weight_decay
                )
            matrices.append(layer.handler.gradient_matrix(module, weight_grad, bias_grad))
        return matrices

    def precondition(self, grads: list[Tensor | None], gamma: float) -> list[Tensor | None]:
        """U = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1} per layer (V before any factors)."""
        result: list[Tensor | None] = []
        for layer, V in zip(self.layers, grads, strict=True):
            decomposition = None if V is None else self._decomposition(layer)
            if V is None or decomposition is None:
                result.append(None if V is None else V.float())
                continue
            result.append(precondition(self.inverse_method, decomposition, V, gamma))
        return result

    # ------------------------------------------------------------ step rules

    def _step_rule(
        self, group: dict, grads: list, proposals: list, batch_inputs: tuple
    ) -> tuple[list[Tensor | None], Tensor | None]:
        if self.adapt_step:
            return self._quadratic_model_updates(group, grads, proposals, batch_inputs)
        return self._fixed_updates(group, grads, proposals), None

    def _fixed_updates(self, group: dict, grads: list, proposals: list) -> list[Tensor | None]:
        """d = -lr v with v <- momentum v + nu U (nu = KL-clip scale, 1 without clipping)."""
        lr, momentum = group["lr"], group["momentum"]
        if self.kl_clip is not None:
            inner = _layer_dot(grads, proposals)
            scale = kl_clip_scale(inner, lr, self.kl_clip)
            proposals = [None if U is None else U * scale for U in proposals]
        updates: list[Tensor | None] = []
        for layer, U in zip(self.layers, proposals, strict=True):
            if U is None:
                updates.append(None)
                continue
            state = self.state[layer.module.weight]
            velocity = state.get("velocity")
            if velocity is None:
                velocity = state["velocity"] = U.clone()
            else:
                velocity.mul_(momentum).add_(U)
            updates.append(velocity * -lr)
        return updates

    def _directions_as_param_list(self, matrices: list[Tensor | None]) -> list[Tensor]:
        """Per-layer matrices as a list shaped like the trainable parameters (zeros elsewhere)."""
        by_param: dict[int, Tensor] = {}
        for layer, matrix in zip(self.layers, matrices, strict=True):
            if matrix is None:
                continue
            weight, bias = layer.handler.split_matrix(layer.module, matrix)
            by_param[id(layer.module.weight)] = weight
            if bias is not None:
                by_param[id(layer.module.bias)] = bias
        params = [p for p in unwrap_model(self.model).parameters() if p.requires_grad]
        return [by_param.get(id(p), torch.zeros_like(p)).to(p.dtype) for p in params]

    def _model_inputs(self, batch_inputs: tuple) -> tuple:
        """The quadratic model's examples: the first max(ceil(model_fraction * m), floor)."""
        batch_size = next(
            (x.shape[0] for x in batch_inputs if isinstance(x, Tensor) and x.dim() > 0), None
        )
        if batch_size is None or self.model_fraction == 1.0:
            return batch_inputs
        count = max(math.ceil(self.model_fraction * batch_size), self.model_min_examples)
        if count >= batch_size:
            return batch_inputs
        return _slice_batch(batch_inputs, batch_size, count)

    def _output_directions(
        self, vectors: list[list[Tensor]], inputs: tuple
    ) -> tuple[list[Tensor], Tensor]:
        """J u for each parameter-shaped vector u (forward mode only) and the outputs.

        All tangents go through one jvp, vectorized over the tangents, so the primal
        forward runs once and each layer's tangent products are one larger matmul; a
        model that vmap cannot batch gets one jvp per tangent instead. Buffers (e.g.
        BatchNorm running statistics) enter as copies made inside the transformed
        function, so the model's own buffers are left unchanged.
        """
        model = unwrap_model(self.model)
        params = parameter_dict(model)
        buffers = dict(model.named_buffers())

        def outputs_of(values: dict[str, Tensor]) -> Tensor:
            copies = {name: buffer.clone() for name, buffer in buffers.items()}
            return functional_call(model, {**values, **copies}, inputs).flatten(1)

        if self._batched_jvp:
            stacked = {
                name: torch.stack([vector[i] for vector in vectors])
                for i, name in enumerate(params)
            }
            try:
                outputs, pushed = vmap(
                    lambda tangents: jvp(outputs_of, (params,), (tangents,)),
                    out_dims=(None, 0),
                    randomness="same",
                )(stacked)
                return list(pushed.float().unbind(0)), outputs
            except RuntimeError:
                self._batched_jvp = False
        pushed, outputs = [], None
        for vector in vectors:
            tangents = dict(zip(params, vector, strict=True))
            outputs, jv = jvp(outputs_of, (params,), (tangents,))
            pushed.append(jv.float())
        return pushed, outputs

    def _gram(self, directions: list[list[Tensor | None]], batch_inputs: tuple, grads: list):
        """[u_i^T F u_j], [u_i^T u_j], [grad^T u_i] for the per-layer directions u_i.

        u_i^T F u_j = <J u_i, M J u_j> with M the output-space Fisher (= GGN) of the mean
        loss on the quadratic model's examples (REFERENCES.md s.2): forward-mode products
        only, no backward pass and no parameter-space product. The plain inner products
        are taken on the per-layer matrices (directions are zero outside tracked layers).
        """
        flat = [self._directions_as_param_list(u) for u in directions]
        with torch.enable_grad():
            pushed, outputs = self._output_directions(flat, self._model_inputs(batch_inputs))
        curvature = fisher_output_curvature(self.likelihood, outputs, kind="exact")
        curved = [curvature.product(jv) for jv in pushed]
        size = len(directions)
        fisher_gram = torch.stack(
            [
                torch.stack([_dot([pushed[i]], [curved[j]]) for j in range(size)])
                for i in range(size)
            ]
        )
        fisher_gram = 0.5 * (fisher_gram + fisher_gram.T)
        inner = {
            (i, j): _layer_dot(directions[i], directions[j])
            for i in range(size)
            for j in range(i, size)
        }
        inner_gram = torch.stack(
            [torch.stack([inner[min(i, j), max(i, j)] for j in range(size)]) for i in range(size)]
        )
        grad_dots = torch.stack([_layer_dot(grads, directions[i]) for i in range(size)])
        return fisher_gram, inner_gram, grad_dots

    def _quadratic_model_updates(
        self, group: dict, grads: list, proposals: list, batch_inputs: tuple
    ) -> tuple[list[Tensor | None], Tensor]:
        """d = alpha Delta + mu delta0 minimizing M(d) (REFERENCES.md s.3); also M(d) - M(0)."""
        deltas = [None if U is None else -U for U in proposals]
        previous = [self.state[layer.module.weight].get("previous_update") for layer in self.layers]
        has_previous = any(p is not None for p in previous)
        if has_previous:
            previous = [
                p if p is not None or d is None else torch.zeros_like(d)
                for p, d in zip(previous, deltas, strict=True)
            ]
        directions = [deltas, previous] if has_previous else [deltas]
        fisher_gram, inner_gram, grad_dots = self._gram(directions, batch_inputs, grads)
        if not has_previous:
            fisher_gram = torch.block_diag(fisher_gram, torch.ones_like(fisher_gram))
            inner_gram = torch.block_diag(inner_gram, torch.ones_like(inner_gram))
            grad_dots = torch.cat([grad_dots, torch.zeros_like(grad_dots)])
        total_damping = group["damping"] + group["weight_decay"]
        alpha, mu = quadratic_model_coefficients(
            fisher_gram, inner_gram, grad_dots, total_damping, has_previous
        )
        updates: list[Tensor | None] = []
        for layer, delta, prev in zip(self.layers, deltas, previous, strict=True):
            if delta is None:
                updates.append(None)
                continue
            update = alpha * delta if not has_previous else alpha * delta + mu * prev
            self.state[layer.module.weight]["previous_update"] = update
            updates.append(update)
        coefficients = torch.stack([alpha, mu])
        model_gram = fisher_gram + group["weight_decay"] * inner_gram
        return updates, quadratic_model_value(coefficients, model_gram, grad_dots)

    def _predicted_change(
        self, grads: list, updates: list, batch_inputs: tuple, group: dict
    ) -> Tensor:
        """M(d) - M(0) = 1/2 d^T (F + eta I) d + grad^T d for the update d taken (no lambda)."""
        fisher_gram, inner_gram, grad_dots = self._gram([updates], batch_inputs, grads)
        model_gram = fisher_gram + group["weight_decay"] * inner_gram
        return quadratic_model_value(torch.ones(1, device=grad_dots.device), model_gram, grad_dots)

    def _adapt_damping(
        self, closure: Closure, loss: Tensor, predicted: Tensor, group: dict
    ) -> None:
        """Levenberg-Marquardt on rho = (h(theta + d) - h(theta)) / (M(d) - M(0)); one host sync."""
        with torch.no_grad():
            new_loss, _ = closure()
        rho = float(reduction_ratio(new_loss.detach().float(), loss.detach().float(), predicted))
        self.last_rho = rho
        config = self.damping_config
        group["damping"] = levenberg_marquardt_damping(
            group["damping"],
            rho,
            levenberg_marquardt_omega(config.interval),
            config.min_damping,
            config.max_damping,
        )

    # ------------------------------------------------------------ parameter updates

    def apply_updates(self, updates: list[Tensor | None]) -> None:
        """theta <- theta + d for each tracked layer (d in matrix form)."""
        for layer, update in zip(self.layers, updates, strict=True):
            if update is None:
                continue
            weight_step, bias_step = layer.handler.split_matrix(layer.module, update)
            layer.module.weight.add_(weight_step.to(layer.module.weight.dtype))
            if bias_step is not None:
                layer.module.bias.add_(bias_step.to(layer.module.bias.dtype))

    def _fallback_step(self, group: dict) -> None:
        if self.fallback is None:
            return
        for fallback_group in self.fallback.param_groups:
            for key in ("lr", "momentum", "weight_decay"):
                fallback_group[key] = group[key]
        self.fallback.step()

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """torch.optim state (factors, decompositions, velocities) plus counters and fallback."""
        state = super().state_dict()
        state["kfac"] = {
            "steps": self.steps,
            "stat_updates": self.stat_updates,
            "skipped_statistics": self.skipped_statistics,
            "generator": self.generator.get_state(),
            "fallback": None if self.fallback is None else self.fallback.state_dict(),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved; resuming then equals the uninterrupted run."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac", None)
        super().load_state_dict(state_dict)
        self._restore_state_dtypes(state_dict["state"])
        if extra is None:
            return
        self.steps = extra["steps"]
        self.stat_updates = extra["stat_updates"]
        self.skipped_statistics = extra["skipped_statistics"]
        if "generator" in extra:
            self.generator.set_state(extra["generator"].cpu())
        if self.fallback is not None and extra["fallback"] is not None:
            self.fallback.load_state_dict(extra["fallback"])

    def _restore_state_dtypes(self, saved: dict) -> None:
        """Undo torch's cast of floating state to the parameter dtype on load.

        Factors, inverses and velocities are kept in float32 even for bf16/fp16 models;
        ``torch.optim.Optimizer.load_state_dict`` would cast them to the parameter dtype.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entries in saved.items():
            param = params[int(index)]
            for key, value in entries.items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[param][key] = value.to(device=param.device)


# ---------------------------------------------------------------- registration

from natgrad.optim.schedules import (  # noqa: E402
    SCHEDULE_HYPERPARAMETERS,
)

KFAC_HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("lr", 0.1, "learning rate >= 0 (ignored with adapt_step)"),
    Hyperparameter("momentum", 0.9, "momentum in [0, 1] (ignored with adapt_step)"),
    Hyperparameter("damping", 3e-3, "Tikhonov damping lambda >= 0"),
    Hyperparameter(
        "weight_decay", None, "L2 coefficient eta >= 0 (None = workload default); damps too"
    ),
    Hyperparameter("fisher", "mc", "curvature statistics: mc | exact | empirical"),
    Hyperparameter("stat_decay", 0.95, "EMA decay of the Kronecker factors in [0, 1)"),
    Hyperparameter("stat_every", 2, "steps between statistics updates (int >= 1)"),
    Hyperparameter("inv_every", 20, "steps between inverses (int >= 1)"),
    Hyperparameter("stat_fraction", 0.125, "fraction of the batch for statistics in (0, 1]"),
    Hyperparameter(
        "model_fraction", 0.125, "fraction of the batch for the quadratic model in (0, 1]"
    ),
    Hyperparameter(
        "model_min_examples", 128, "at least this many examples for the quadratic model"
    ),
    Hyperparameter("inverse", "cholesky", "inverse method: cholesky | eigen"),
    Hyperparameter("adapt_damping", False, "Levenberg-Marquardt damping every 5 steps"),
    Hyperparameter("adapt_step", False, "alpha and mu from the quadratic model"),
    Hyperparameter(
        "kl_clip", 1e-3, "KL-clip constant C > 0, or None for no clipping", nullable=True
    ),
)

# The full algorithm of Martens & Grosse (2015, s.6-7): alpha and mu from the quadratic
# model and Levenberg-Marquardt damping from lambda_0 = 1, with the expensive parts
# amortized (statistics every 2 steps on 1/8 of the batch, the model's Fisher products
# on 1/8 of the batch). Inverses come every 5 steps rather than 20: on
# fmnist_autoencoder that cuts the steps to a given loss by about a third early in
# training, for about 5% more time per step (docs/RESULTS.md, "K-FAC"); lr, momentum
# and kl_clip are unused.
_ADAPTIVE_DEFAULTS = {
    "damping": 1.0,
    "inv_every": 5,
    "adapt_damping": True,
    "adapt_step": True,
    "kl_clip": None,
}
KFAC_ADAPTIVE_HYPERPARAMETERS: tuple[Hyperparameter, ...] = tuple(
    replace(h, default=_ADAPTIVE_DEFAULTS[h.name], nullable=h.nullable or h.name == "kl_clip")
    if h.name in _ADAPTIVE_DEFAULTS
    else h
    for h in KFAC_HYPERPARAMETERS
)


def build_kfac(model: nn.Module, ctx: BuildContext, kwargs: dict) -> KFAC:
    """Registry factory: K-FAC with the workload's likelihood."""
    return KFAC(model, likelihood=ctx.likelihood, **kwargs)


register_optimizer(
    OptimizerSpec(
        name="kfac",
        description="K-FAC with factored Tikhonov damping (Martens & Grosse 2015)",
        factory=build_kfac,
        hyperparameters=KFAC_HYPERPARAMETERS + SCHEDULE_HYPERPARAMETERS,
        second_order=True,
    )
)

register_optimizer(
    OptimizerSpec(
        name="kfac_adaptive",
        description="K-FAC with the quadratic-model step and Levenberg-Marquardt damping",
        factory=build_kfac,
        hyperparameters=KFAC_ADAPTIVE_HYPERPARAMETERS + SCHEDULE_HYPERPARAMETERS,
        second_order=True,
    )
)

__all__ = [
    "KFAC",
    "DampingConfig",
    "build_kfac",
    "KFAC_HYPERPARAMETERS",
    "KFAC_ADAPTIVE_HYPERPARAMETERS",
]
