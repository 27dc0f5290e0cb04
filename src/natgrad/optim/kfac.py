"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; Grosse & Martens 2016).

The thin front that composes the parts along the data flow of one step:

1. ``natgrad.curvature.statistics``: the closure's forward/backward (parameter
   gradients V, plus eta * theta for weight decay eta) and, when due, the batch factors
   A, G of every tracked layer (every call recorded; "expand" or "reduce" over shared
   positions);
2. ``natgrad.precondition.kronecker``: one preconditioner per layer averages them
   (eps_k = min(1 - 1/k, stat_decay)), refreshes its damped decomposition when due
   (gamma = sqrt(lambda + eta), trace-norm pi) and gives the proposal
   Delta = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1};
3. ``natgrad.optim.kfac_step_rules``: the update, fixed lr and momentum (optionally KL
   clipped) or alpha and mu from the quadratic model, then every T1 steps, optionally,
   the Levenberg-Marquardt damping rule on h = L + eta/2 ||theta||^2.

Parameters that no tracked layer covers go to a first-order fallback optimizer
(heavy-ball Momentum by default) with the same lr, momentum and weight decay. Options
and presets: ``natgrad.optim.kfac_config``.

Closure contract: ``closure()`` returns ``(loss, outputs)`` with ``outputs = model(x)``
and ``loss`` the batch mean of the per-example NLL; the optimizer zeroes the
gradients and runs the backward passes itself. K-FAC's own forwards (statistics
sub-batch, damping rule) leave the model's buffers as the closure's forward left them.
Host syncs: one per statistics step (the finiteness check), the Cholesky/eigen calls
of an inverse step, and one per damping adaptation; the plain step has none.

On several ranks (``natgrad.distributed``; picked up from an initialized process
group) the coordinator averages the gradients (unless DistributedDataParallel did),
the batch factors and the losses over ranks, and decides which rank refreshes which
layer's inverse and when it is swapped in; docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from natgrad.curvature.capture import (
    TrackedLayer,
    buffers_restored,
    is_compiled,
    plan_tracking,
    unwrap_model,
)
from natgrad.curvature.doubly_factored import check_matrix_shape
from natgrad.curvature.likelihoods import get_likelihood
from natgrad.curvature.statistics import LayerFactors, StatisticsCollector, no_autocast
from natgrad.distributed.coordinator import Coordinator, default_coordinator
from natgrad.optim.closure import check_model_argument, closure_result
from natgrad.optim.kfac_config import (
    PLAIN_DEFAULTS,
    check_options,
    doubly_factored_pays,
    output_block_choice,
    preset_options,
    unused_options,
)
from natgrad.optim.kfac_step_rules import (
    DampingConfig,
    FixedStepRule,
    LevenbergMarquardtRule,
    QuadraticModelStepRule,
    StepInputs,
    curvature_scale,
    penalty_change,
)
from natgrad.optim.layer_curvature import LayerCurvature
from natgrad.optim.quadratic_model import QuadraticModel
from natgrad.precondition.choice import LayerPreconditioner
from natgrad.precondition.damping import damping_gamma
from natgrad.precondition.output_blocks import blocks_for_cost

Closure = Callable[[], tuple[Tensor, Tensor]]
FallbackFactory = Callable[..., torch.optim.Optimizer]
CHECKPOINT_FORMAT = 2
# torch.profiler regions of KFAC.step, in step order ("kfac.<phase>").
STEP_PHASES = (
    "forward_backward",  # closure, backward, batch statistics (sub-batch), gradient reduction
    "factor_update",  # factor reduction over ranks, moving average
    "inverses",  # decompositions when due
    "precondition",  # V + eta theta, (G + gamma/pi I)^-1 V (A + pi gamma I)^-1
    "step_rule",  # KL clip and momentum, or alpha, mu; the damping rule's M(d) and penalty
    "quadratic_model",  # the model's Fisher products (inside step_rule)
    "apply",  # theta <- theta + d
    "damping",  # the damping rule's forward at theta + d and lambda's update
    "fallback",  # the first-order optimizer of the untracked parameters
)
DEFAULT_DAMPING_CONFIG = DampingConfig()
_D = PLAIN_DEFAULTS


def _default_fallback(params, lr: float, momentum: float, weight_decay: float):
    from natgrad.optim.first_order import Momentum

    return Momentum(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class KFAC(torch.optim.Optimizer):
    """K-FAC with factored Tikhonov damping; second-order, so ``step`` takes a closure.

    Args:
        model: the network (a DistributedDataParallel wrapper is unwrapped); every
            nn.Linear and nn.Conv2d (groups = 1) is tracked unless named in ``exclude``;
            modules that share (tie) a weight and bias form one tracked layer.
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
            max(ceil(model_fraction * m), model_min_examples) examples (at most m).
        model_every: with ``adapt_step``, the model's Fisher products (and so alpha and
            mu) every ``model_every`` steps, at the steps the damping rule also runs when
            the periods agree; the steps between reuse the latest alpha and mu.
        model_curvature: the quadratic model's Fisher products: "exact" (J^T M J u on its
            examples, forward mode; Martens & Grosse 2015, s.6.4) or "kronecker" (each
            layer's running Kronecker-factored curvature, block-diagonal over layers: no
            extra pass). Measured, it does not keep the progress per step: the
            block-diagonal curvature underestimates Delta^T F Delta (300-fold on
            fmnist_vit), alpha overshoots and the run diverges (docs/RESULTS.md, "The
            quadratic model through the Kronecker factors"); kept for that comparison.
        inverse: "cholesky" or "eigen" (damping can change without a new decomposition).
        adapt_damping: Levenberg-Marquardt rule every ``damping_config.interval`` steps.
        adapt_step: alpha and mu from the quadratic model with exact GGN products.
        kl_clip: C for the norm constraint nu = min(1, sqrt(C / (lr^2 sum <V, U>))).
        sharing: "expand" or "reduce" (Eschenhagen et al. 2023) for every layer, or a
            mapping from qualified layer names to modes (others: "expand").
        doubly_factored: three-factor layers (Ba, Grosse & Martens 2017) for very large
            inputs that are channels x locations maps: "off"; "auto" (a layer whose
            input's shape is known, a convolution's patch or a Linear fed by nn.Flatten
            of a (N, C, ...) map, and whose full factors cost more than its forward and
            backward: kfac_config.doubly_factored_pays, decided in the first forward); layer
            names (a list, or one comma-separated string); or a mapping from layer names
            to "on" or a (channels, locations) shape.
        output_blocks: the output factor G of each layer in diagonal blocks of contiguous
            outputs (natgrad.precondition.output_blocks; the kronecker and
            doubly-factored kinds): "off"; "auto" (a layer whose preconditioning costs
            more flops per step than its forward and backward gets the fewest blocks that
            make it cost no more: output_blocks.blocks_for_cost, decided in the first
            forward, after ``doubly_factored``); or N, blocks of at most N outputs.
        approximation: each layer's curvature approximation, a registered kind
            (natgrad.precondition.kinds): "kronecker" (K-FAC), "ekfac" (George et al.
            2018: the Kronecker eigenbasis with a per-example diagonal scale, always
            eigendecompositions) or "eigen_adam" (Adam in the Kronecker eigenbasis, the
            K-FAC analogue of SOAP: momentum is its beta1, stat_decay its beta2,
            sqrt(damping + weight_decay) its eps; the step is lr times its update, with
            no momentum of the step rule and no adapt_step). A doubly-factored layer
            keeps the doubly-factored kind.
        exclude: qualified module names left to the fallback optimizer.
        fallback: factory ``(params, lr=, momentum=, weight_decay=)`` for parameters that
            are not in tracked layers; default natgrad.optim.Momentum.
    """

    _coordinator: Coordinator | None = None

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        momentum: float = _D["momentum"],
        damping: float = _D["damping"],
        weight_decay: float = _D["weight_decay"],
        likelihood="categorical",
        fisher: str = _D["fisher"],
        stat_decay: float = _D["stat_decay"],
        stat_every: int = _D["stat_every"],
        inv_every: int = _D["inv_every"],
        stat_fraction: float = _D["stat_fraction"],
        model_fraction: float = _D["model_fraction"],
        model_min_examples: int = _D["model_min_examples"],
        model_every: int = _D["model_every"],
        model_curvature: str = _D["model_curvature"],
        inverse: str = _D["inverse"],
        adapt_damping: bool = _D["adapt_damping"],
        adapt_step: bool = _D["adapt_step"],
        kl_clip: float | None = _D["kl_clip"],
        exclude: Sequence[str] = (),
        fallback: FallbackFactory | None = None,
        damping_config: DampingConfig = DEFAULT_DAMPING_CONFIG,
        sharing: str | Mapping[str, str] = _D["sharing"],
        doubly_factored: str | Sequence[str] | Mapping = _D["doubly_factored"],
        output_blocks: str | int = _D["output_blocks"],
        approximation: str = _D["approximation"],
    ) -> None:
        check_model_argument(model, "KFAC")
        if is_compiled(model):
            raise ValueError(
                "model is a torch.compile'd module, whose compiled graph hides the layer "
                "outputs K-FAC records; pass the uncompiled model and call it uncompiled in "
                "the closure"
            )
        options = {name: value for name, value in locals().items() if name in _D or name == "lr"}
        check_options(options)
        for note in unused_options(options):
            warnings.warn(f"KFAC: {note}", UserWarning, stacklevel=2)
        self.likelihood = get_likelihood(likelihood)
        self.model = model
        self.fisher, self.inverse_method = fisher, inverse
        self.stat_decay, self.stat_every, self.inv_every = stat_decay, stat_every, inv_every
        self.stat_fraction, self.kl_clip = stat_fraction, kl_clip
        self.model_fraction, self.model_min_examples = model_fraction, model_min_examples
        self.model_every = model_every
        self.adapt_damping, self.adapt_step = adapt_damping, adapt_step
        self.damping_config = damping_config
        self.layers, untracked = self._plan(model, tuple(exclude), sharing)
        _assign_layer_forms(
            self.layers, doubly_factored, output_block_choice(output_blocks), model, inv_every
        )
        params = [p for p in unwrap_model(model).parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, damping=damping, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._groups_fixed = True
        self.fallback = self._build_fallback(fallback or _default_fallback, untracked)
        self.generator = self._sampling_generator(params)
        self.curvature = LayerCurvature(
            model, self.layers, self.likelihood, options, self.generator
        )
        self.quadratic_model = QuadraticModel(
            model, self.likelihood, model_fraction, model_min_examples
        )
        if model_curvature == "kronecker":
            self.quadratic_model.layer_products = self.curvature.curvature_products
        self.fixed_rule = FixedStepRule(kl_clip)
        self.model_rule = QuadraticModelStepRule(self.quadratic_model)
        self.damping_rule = LevenbergMarquardtRule(damping_config)
        self.steps = 0

    @property
    def statistics(self) -> StatisticsCollector:
        """The collector that runs the closure's forward/backward and the statistics."""
        return self.curvature.statistics

    @property
    def preconditioners(self) -> list[LayerPreconditioner]:
        """One preconditioner per tracked layer (its running statistics and decomposition)."""
        return self.curvature.preconditioners

    @property
    def stat_updates(self) -> int:
        return self.curvature.stat_updates

    @property
    def skipped_statistics(self) -> int:
        return self.curvature.skipped_statistics

    @property
    def coordinator(self) -> Coordinator:
        """Who computes what across ranks (natgrad.distributed): on first use, data-parallel
        over the initialized process group, else the local computation. Assign a
        ``Coordinator`` before the first step for other choices (gather, async inverses)."""
        if self._coordinator is None:
            self.coordinator = default_coordinator()
        return self._coordinator

    @coordinator.setter
    def coordinator(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator
        self.quadratic_model.reduce_mean = coordinator.reduce_mean

    @classmethod
    def from_preset(cls, name: str, model: nn.Module, **overrides) -> KFAC:
        """K-FAC with the measured configuration ``name`` ("kfac", "kfac_adaptive", "ekfac"
        or "kfac_eigen_adam"), the same as the command line's optimizer of that name;
        ``overrides`` (likelihood, weight_decay, damping, ...) replace single options."""
        return cls(model, **{**preset_options(name), **overrides})

    def preconditioner(self, module: nn.Module) -> LayerPreconditioner:
        """The preconditioner (running factors and decomposition) of the layer ``module`` is in."""
        return self.curvature.preconditioner(module)

    def add_param_group(self, param_group: dict) -> None:
        """Only at construction: K-FAC moves the model's trainable parameters as one group
        (its layers, factors and checkpoints are planned from the model)."""
        if getattr(self, "_groups_fixed", False):
            raise ValueError(
                "KFAC does not support add_param_group: it optimizes the model it was built "
                "with as one parameter group; change param_groups[0]['lr'|'momentum'|"
                "'damping'|'weight_decay'] or build a new KFAC (exclude= leaves modules to "
                "the fallback)"
            )
        super().add_param_group(param_group)

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
    def _plan(model: nn.Module, exclude: tuple[str, ...], sharing) -> tuple[list, dict]:
        names = {name for name, _ in unwrap_model(model).named_modules()}
        unknown = [name for name in exclude if name not in names]
        if unknown:
            raise ValueError(f"exclude names no module of the model: {', '.join(unknown)}")
        plan = plan_tracking(model, exclude)
        _assign_sharing(plan.layers, sharing)
        return plan.layers, plan.untracked

    def _build_fallback(
        self, factory: FallbackFactory, untracked: dict[str, str]
    ) -> torch.optim.Optimizer | None:
        tracked = {id(p) for layer in self.layers for p in layer.params}
        rest = [p for p in self.param_groups[0]["params"] if id(p) not in tracked]
        if not rest:
            return None
        described = ", ".join(f"{name} ({reason})" for name, reason in sorted(untracked.items()))
        warnings.warn(
            f"KFAC: no Kronecker factors for {described}; their parameters use the "
            "first-order fallback",
            UserWarning,
            stacklevel=3,
        )
        group = self.defaults
        return factory(
            rest, lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"]
        )

    # ------------------------------------------------------------ the step

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One K-FAC update; returns the closure's loss (detached tensor, no host sync), on
        several ranks the loss of the whole batch.

        Its phases are torch.profiler regions named by :data:`STEP_PHASES`
        (``kfac.quadratic_model`` runs inside ``kfac.step_rule``; natgrad.bench.step).
        """
        if closure is None:
            raise ValueError("KFAC.step needs a closure returning (loss, outputs)")
        group = self.param_groups[0]
        for p in group["params"]:
            p.grad = None
        stats_due = bool(self.layers) and self.steps % self.stat_every == 0
        with record_function("kfac.forward_backward"):
            loss, outputs, batch_inputs, batch_factors = self.statistics.forward_backward(
                lambda: closure_result(closure, "KFAC", parameters=group["params"]), stats_due
            )
        self.steps += 1  # counted once the closure kept its contract
        with torch.no_grad(), no_autocast(loss):
            examples = outputs.shape[0] if outputs.dim() > 0 else 1
            with record_function("kfac.forward_backward"):
                loss = self.coordinator.reduce_gradients(
                    self.model, group["params"], loss, examples
                )
            if batch_factors is not None:
                with record_function("kfac.factor_update"):
                    batch_factors = self.coordinator.reduce_factors(batch_factors, examples)
                    self.update_statistics(batch_factors)
            gamma = damping_gamma(group["damping"], group["weight_decay"])
            with record_function("kfac.inverses"):
                self.update_inverses(gamma, force=(self.steps - 1) % self.inv_every == 0)
            with record_function("kfac.precondition"):
                grads = self.gradient_matrices(group["weight_decay"])
                proposals = self.precondition(grads, gamma)
            inputs = StepInputs(grads, proposals, batch_inputs, group)
            with record_function("kfac.step_rule"):
                updates, predicted = self._step_rule(inputs)
            adapt_due = self.adapt_damping and self.steps % self.damping_config.interval == 0
            if adapt_due:  # the model and the penalty are taken at theta, before the update
                with record_function("kfac.step_rule"):
                    if predicted is None:
                        predicted = self.model_rule.predicted_change(inputs, updates, self._flat)
                    penalty = penalty_change(self._parameter_matrices(), updates, group)
            with record_function("kfac.apply"):
                self.apply_updates(updates)
        if adapt_due:  # rho compares h(theta + d) with M(d): before the fallback moves others
            with record_function("kfac.damping"):
                self._adapt_damping(closure, loss, penalty, predicted, group)
        with record_function("kfac.fallback"):
            self._fallback_step(group)
        return loss.detach()

    def _step_rule(self, inputs: StepInputs) -> tuple[list[Tensor | None], Tensor | None]:
        if self.adapt_step:
            previous = [self.state[layer.weight].get("previous_update") for layer in self.layers]
            if self._model_due():
                updates, predicted = self.model_rule.updates(inputs, previous, self._flat)
            else:
                updates, predicted = self.model_rule.reused(inputs, previous), None
            for layer, update in zip(self.layers, updates, strict=True):
                if update is not None:
                    self.state[layer.weight]["previous_update"] = update
            return updates, predicted
        if self.curvature.moments_in_kind:  # the first moment is the approximation's
            inputs = dataclasses.replace(inputs, group={**inputs.group, "momentum": 0.0})
        velocities = [self.state[layer.weight].get("velocity") for layer in self.layers]
        updates, velocities = self.fixed_rule.updates(inputs, velocities)
        for layer, velocity in zip(self.layers, velocities, strict=True):
            if velocity is not None:
                self.state[layer.weight]["velocity"] = velocity
        return updates, None

    def _model_due(self) -> bool:
        """The quadratic model runs every ``model_every`` steps (counting this one), and
        whenever there are no coefficients to reuse."""
        return self.steps % self.model_every == 0 or self.model_rule.step_coefficients is None

    def _adapt_damping(
        self, closure: Closure, loss: Tensor, penalty: Tensor, predicted: Tensor, group: dict
    ) -> None:
        """Levenberg-Marquardt on rho = (h(theta + d) - h(theta)) / (M(d) - M(0)); one host sync."""
        with torch.no_grad(), buffers_restored(self.model):
            new_loss, _ = closure_result(closure, "KFAC", needs_grad=False)
            new_loss = self.coordinator.reduce_mean(new_loss.detach().float())
        actual = new_loss.detach().float() - loss.detach().float() + penalty
        group["damping"], self.last_rho = self.damping_rule.adapt(
            group["damping"], actual, predicted, curvature_scale(self.preconditioners)
        )

    # ------------------------------------------------------------ statistics and inverses

    def update_statistics(self, batch_factors: LayerFactors) -> bool:
        """EMA of the statistics from one batch; skipped (with a warning) if any entry is
        not finite (:meth:`LayerCurvature.update`)."""
        return self.curvature.update(batch_factors)

    def update_inverses(self, gamma: float, force: bool) -> None:
        """Refresh every layer's decomposition when ``force``d, or when none exists yet
        (on the rank and at the step the coordinator decides)."""
        self.curvature.refresh(self.coordinator, gamma, force)

    # ------------------------------------------------------------ preconditioning

    def gradient_matrices(self, weight_decay: float) -> list[Tensor | None]:
        """V per layer (out x in[+1]) from the parameter gradients plus eta * theta."""
        return self.curvature.gradient_matrices(weight_decay)

    def _parameter_matrices(self) -> list[Tensor]:
        """theta per layer as the (out x in[+1]) matrix of :meth:`gradient_matrices`."""
        return self.curvature.parameter_matrices()

    def precondition(self, grads: list[Tensor | None], gamma: float) -> list[Tensor | None]:
        """U = C(gamma)^{-1} V per layer (K-FAC: (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1};
        V before any factors)."""
        return self.curvature.precondition(self.coordinator, grads, gamma)

    def _flat(self, matrices: list[Tensor | None]) -> list[Tensor]:
        """Per-layer matrices as a list shaped like the trainable parameters (zeros elsewhere)."""
        by_param: dict[int, Tensor] = {}
        for layer, matrix in zip(self.layers, matrices, strict=True):
            if matrix is None:
                continue
            weight, bias = layer.handler.split_matrix(layer.module, matrix)
            by_param[id(layer.weight)] = weight
            if bias is not None:
                by_param[id(layer.bias)] = bias
        params = [p for p in unwrap_model(self.model).parameters() if p.requires_grad]
        return [by_param.get(id(p), torch.zeros_like(p)).to(p.dtype) for p in params]

    # ------------------------------------------------------------ parameter updates

    def apply_updates(self, updates: list[Tensor | None]) -> None:
        """theta <- theta + d for each tracked layer (d in matrix form), once per parameter."""
        for layer, update in zip(self.layers, updates, strict=True):
            if update is None:
                continue
            weight_step, bias_step = layer.handler.split_matrix(layer.module, update)
            layer.weight.add_(weight_step.to(layer.weight.dtype))
            if bias_step is not None:
                layer.bias.add_(bias_step.to(layer.bias.dtype))

    def _fallback_step(self, group: dict) -> None:
        if self.fallback is None:
            return
        for fallback_group in self.fallback.param_groups:
            for key in ("lr", "momentum", "weight_decay"):
                fallback_group[key] = group[key]
        self.fallback.step()

    # ------------------------------------------------------------ checkpoints

    def _weight_indices(self) -> list[int]:
        index = {id(p): i for i, p in enumerate(self.param_groups[0]["params"])}
        return [index[id(layer.weight)] for layer in self.layers]

    def state_dict(self) -> dict:
        """torch.optim state (velocities), each layer's factors and decomposition under its
        weight's entry ("A", "G", "inverse.*"), counters, the sampling RNG and the fallback."""
        state = super().state_dict()
        layer_states = self.curvature.layer_states()
        for index, entry in zip(self._weight_indices(), layer_states, strict=True):
            if entry:
                state["state"][index] = {**state["state"].get(index, {}), **entry}
        state["kfac"] = {
            "format": CHECKPOINT_FORMAT,
            "steps": self.steps,
            "stat_updates": self.stat_updates,
            "skipped_statistics": self.skipped_statistics,
            "generator": self.generator.get_state(),
            "step_coefficients": self.model_rule.step_coefficients,
            "fallback": None if self.fallback is None else self.fallback.state_dict(),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved (also checkpoints of earlier natgrad
        versions); ValueError when the checkpoint's factors do not fit this model."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac", None)
        saved = {int(k): dict(v) for k, v in state_dict.get("state", {}).items()}
        indices = self._weight_indices()
        curvature = [self.curvature.split_state(saved.get(index, {})) for index in indices]
        self.curvature.check_shapes(curvature)
        devices = [self.param_groups[0]["params"][index].device for index in indices]
        self.curvature.load_layer_states(curvature, devices)  # before touching any other state
        super().load_state_dict({**state_dict, "state": saved})
        self._restore_state_dtypes(saved)
        if extra is None:
            return
        self.steps = extra["steps"]
        self.curvature.stat_updates = extra["stat_updates"]
        self.curvature.skipped_statistics = extra["skipped_statistics"]
        if "generator" in extra:
            self.generator.set_state(extra["generator"].cpu())
        coefficients = extra.get("step_coefficients")
        if coefficients is not None:
            device = self.param_groups[0]["params"][0].device
            coefficients = coefficients.to(device)
        self.model_rule.step_coefficients = coefficients
        if self.fallback is not None and extra["fallback"] is not None:
            self.fallback.load_state_dict(extra["fallback"])

    def _restore_state_dtypes(self, saved: dict) -> None:
        """Undo torch's cast of floating state to the parameter dtype on load.

        Velocities are kept in float32 even for bf16/fp16 models;
        ``torch.optim.Optimizer.load_state_dict`` would cast them to the parameter dtype.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        for index, entries in saved.items():
            param = params[int(index)]
            for key, value in entries.items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[param][key] = value.to(device=param.device)


def _assign_layer_forms(
    layers: list[TrackedLayer], doubly_factored, output_blocks, model: nn.Module, inv_every: int
) -> None:
    """Each layer's doubly-factored choice and output blocks; the "auto" ones are decided
    in the first forward that records the layers' calls (the first statistics)."""
    _assign_doubly_factored(layers, doubly_factored)
    if isinstance(output_blocks, int):
        for layer in layers:
            out_features = layer.weight.shape[0]
            layer.output_blocks = -(-out_features // output_blocks)
    auto_doubly = doubly_factored == "auto"
    auto_blocks = output_blocks == "auto"
    if layers and (auto_doubly or auto_blocks):
        _decide_auto_on_first_statistics(layers, model, inv_every, auto_blocks)


def _assign_doubly_factored(layers: list[TrackedLayer], choice) -> None:
    """Mark the layers to doubly factor: "off", "auto", layer names, or names -> shapes."""
    if isinstance(choice, str) and choice in ("off", "auto"):
        for layer in layers:
            layer.doubly_factored = choice
        return
    if isinstance(choice, str):
        choice = [name.strip() for name in choice.split(",") if name.strip()]
    requests = choice if isinstance(choice, Mapping) else dict.fromkeys(choice, "on")
    by_name = _layers_named(layers, requests, "doubly_factored")
    for name, shape in requests.items():
        layer = by_name[name]
        layer.doubly_factored = "on"
        if shape != "on":
            in_features = layer.weight.reshape(layer.weight.shape[0], -1).shape[1]
            layer.matrix_shape = check_matrix_shape(name, in_features, tuple(shape))


def _decide_auto_on_first_statistics(
    layers: list[TrackedLayer], model: nn.Module, inv_every: int, auto_blocks: bool
) -> None:
    """A one-shot hook at the end of the root model's forward: once the tracked layers'
    calls are recorded (the first statistics, before any factors are formed), each "auto"
    layer stays "auto" (three factors) if :func:`doubly_factored_pays` and becomes "off"
    otherwise; then, with ``auto_blocks``, each layer's output blocks are set by
    :func:`blocks_for_cost`. The batch is the largest of the differentiated forwards so far
    (the closure's; the statistics may see a sub-batch of it)."""
    batch = 0

    def decide(module: nn.Module, args: tuple, output) -> None:
        nonlocal batch
        if not torch.is_grad_enabled():
            return
        sizes = [x.shape[0] for x in args if isinstance(x, Tensor) and x.dim() > 0]
        batch = max([batch, *sizes[:1]])
        if not any(layer.calls for layer in layers):
            return
        handle.remove()
        for layer in layers:
            if layer.doubly_factored == "auto" and not _pays_to_doubly_factor(
                layer, batch, inv_every
            ):
                layer.doubly_factored = "off"
            if auto_blocks:
                layer.output_blocks = _output_blocks_by_cost(layer, batch)

    handle = unwrap_model(model).register_forward_hook(decide)


def _layer_cost_shape(layer: TrackedLayer, batch: int):
    """(out, in[+1], input map shape or None, rows per step) of a layer from its recorded
    calls: rows = its locations per example (over all calls) x ``batch``."""
    shape = layer.input_matrix_shape(layer.calls[0])
    matrix = layer.handler.gradient_matrix(layer.module, layer.weight, layer.bias)
    out_features, in_features = matrix.shape
    examples = layer.calls[0].layer_output.shape[0]
    locations = sum(call.layer_output.numel() for call in layer.calls) / (examples * out_features)
    return out_features, in_features, shape, round(locations * batch)


def _pays_to_doubly_factor(layer: TrackedLayer, batch: int, inv_every: int) -> bool:
    """:func:`doubly_factored_pays` for a layer from its recorded calls."""
    if not layer.calls:
        return False
    out_features, in_features, shape, rows = _layer_cost_shape(layer, batch)
    if shape is None:
        return False
    return doubly_factored_pays(out_features, in_features, shape, rows, inv_every)


def _output_blocks_by_cost(layer: TrackedLayer, batch: int) -> int:
    """:func:`blocks_for_cost` for a layer from its recorded calls, with its input side as
    decided (C + L for a doubly-factored layer, else its inputs)."""
    if not layer.calls:
        return 1
    out_features, in_features, shape, rows = _layer_cost_shape(layer, batch)
    input_side = sum(shape) if shape is not None else in_features
    return blocks_for_cost(out_features, input_side, rows)


def _assign_sharing(layers: list[TrackedLayer], sharing) -> None:
    """Set each layer's sharing mode from one mode or a mapping of qualified layer names."""
    if not isinstance(sharing, Mapping):
        for layer in layers:
            layer.sharing = sharing
        return
    by_name = _layers_named(layers, sharing, "sharing")
    for name, mode in sharing.items():
        by_name[name].sharing = mode


def _layers_named(layers: list[TrackedLayer], names, option: str) -> dict[str, TrackedLayer]:
    """Qualified module name -> its tracked layer; ValueError naming ``option`` if one of
    ``names`` is not a tracked layer's module."""
    by_name = {name: layer for layer in layers for name in layer.name.split("+")}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(
            f"{option} names no tracked layer: {', '.join(unknown)}; tracked layers: "
            + ", ".join(layer.name for layer in layers)
        )
    return by_name


__all__ = ["KFAC", "DampingConfig", "CHECKPOINT_FORMAT", "STEP_PHASES"]
