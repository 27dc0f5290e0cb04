"""The curvature of a model's tracked layers: statistics, per-layer preconditioners, checkpoint.

One object that K-FAC holds (with its step rule, damping and fallback): it owns the
tracked layers, the statistics collector that runs the closure's forward/backward,
and one preconditioner per layer of the chosen curvature approximation
(:mod:`natgrad.precondition.kinds`; a layer whose statistics come doubly factored
gets that kind). Per step:

1. :meth:`forward_backward`: gradients, and the batch statistics when due;
2. :meth:`update`: moving averages eps_k = min(1 - 1/k, stat_decay), skipped with a
   warning when a statistic is not finite;
3. :meth:`refresh`: the due decompositions, on the rank and at the step the
   coordinator (natgrad.distributed) decides;
4. :meth:`gradient_matrices` and :meth:`precondition`: V + eta theta per layer and
   C(gamma)^{-1} applied to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from natgrad.curvature.capture import TrackedLayer
from natgrad.curvature.kronecker import all_finite, ema_decay
from natgrad.curvature.likelihoods import Likelihood
from natgrad.curvature.statistics import LayerFactors, StatisticsCollector
from natgrad.precondition.choice import (
    LayerPreconditioner,
    create_kind,
    kind_for,
    owns_curvature_key,
    preconditioner_for_state,
)
from natgrad.precondition.kinds import CURVATURE_KINDS


class LayerCurvature:
    """Tracked layers, their statistics and their preconditioners of one kind.

    ``options`` are the optimizer's (``approximation``, ``inverse``, ``stat_decay``,
    ``momentum``, ...); each kind takes what it needs from them.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[TrackedLayer],
        likelihood: Likelihood,
        options: Mapping[str, object],
        generator: torch.Generator,
    ) -> None:
        self.layers = layers
        self.options = dict(options)
        self.approximation = str(self.options["approximation"])
        self.kind = CURVATURE_KINDS.lookup(self.approximation)
        self.stat_decay = float(self.options["stat_decay"])
        self.statistics = StatisticsCollector(
            model,
            layers,
            likelihood,
            str(self.options["fisher"]),
            float(self.options["stat_fraction"]),
            generator,
        )
        self.statistics.per_example = self.kind.NEEDS_EXAMPLES
        # a layer whose statistics come doubly factored gets that kind on its first update
        self.preconditioners: list[LayerPreconditioner] = [
            create_kind(self.kind, self.options, layer.bias is not None) for layer in layers
        ]
        self.stat_updates = 0
        self.skipped_statistics = 0

    @property
    def moments_in_kind(self) -> bool:
        """Whether the approximation keeps the gradient's first moment itself (the step
        rule then runs without momentum of its own)."""
        return bool(getattr(self.kind, "KEEPS_FIRST_MOMENT", False))

    def preconditioner(self, module: nn.Module) -> LayerPreconditioner:
        """The preconditioner of the layer ``module`` is in."""
        for layer, preconditioner in zip(self.layers, self.preconditioners, strict=True):
            if any(member is module for member in layer.modules):
                return preconditioner
        raise ValueError(f"{type(module).__name__} is not a module of a tracked layer")

    # ------------------------------------------------------------ statistics

    def forward_backward(self, forward, due: bool):
        """The closure's forward/backward and, when ``due``, the batch statistics."""
        return self.statistics.forward_backward(forward, due)

    def update(self, batch_factors: LayerFactors) -> bool:
        """EMA of the statistics from one batch; skipped (with a warning) if any entry is
        not finite. Layers without statistics this step keep theirs. The finiteness check
        is the one host sync of a statistics step."""
        present = [f for f in batch_factors if f is not None]
        if not present:
            return False
        if not bool(all_finite(present)):
            self.skipped_statistics += 1
            if self.skipped_statistics == 1:
                warnings.warn(
                    "KFAC: non-finite curvature statistics skipped (further skips are silent)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return False
        self.stat_updates += 1
        decay = ema_decay(self.stat_updates, self.stat_decay)
        for index, factors in enumerate(batch_factors):
            if factors is not None:
                self._keeping(index, factors).update_factors(factors, decay)
        return True

    def _keeping(self, index: int, factors) -> LayerPreconditioner:
        """Layer ``index``'s preconditioner, replaced by the kind ``factors`` need while empty."""
        current = self.preconditioners[index]
        kind = kind_for(factors, self.approximation)
        if not isinstance(current, kind):
            if current.has_factors:
                raise RuntimeError(
                    f"layer {self.layers[index].name}: its statistics changed kind between steps"
                )
            has_bias = self.layers[index].bias is not None
            self.preconditioners[index] = create_kind(kind, self.options, has_bias)
        return self.preconditioners[index]

    def refresh(self, coordinator, gamma: float, force: bool) -> None:
        """Refresh every layer's decomposition when ``force``d, or when none exists yet."""
        if coordinator.distributed and self.kind.NEEDS_EXAMPLES:
            raise ValueError(
                f"approximation {self.approximation!r} runs on one process only (its "
                "per-example statistics are not averaged over ranks)"
            )
        for layer, preconditioner in zip(self.layers, self.preconditioners, strict=True):
            preconditioner.output_blocks = layer.output_blocks
        coordinator.refresh_inverses(self.preconditioners, gamma, force)

    # ------------------------------------------------------------ preconditioning

    def gradient_matrices(self, weight_decay: float) -> list[Tensor | None]:
        """V per layer (out x in[+1]) from the parameter gradients plus eta * theta."""
        matrices: list[Tensor | None] = []
        for layer in self.layers:
            weight, bias = layer.weight, layer.bias
            if weight.grad is None:
                matrices.append(None)
                continue
            weight_grad = weight.grad.add(weight, alpha=weight_decay)
            bias_grad = None
            if bias is not None:
                grad = bias.grad if bias.grad is not None else torch.zeros_like(bias)
                bias_grad = grad.add(bias, alpha=weight_decay)
            matrices.append(layer.handler.gradient_matrix(layer.module, weight_grad, bias_grad))
        return matrices

    def parameter_matrices(self) -> list[Tensor]:
        """theta per layer as the (out x in[+1]) matrix of :meth:`gradient_matrices`."""
        return [
            layer.handler.gradient_matrix(layer.module, layer.weight, layer.bias)
            for layer in self.layers
        ]

    def precondition(
        self, coordinator, grads: list[Tensor | None], gamma: float
    ) -> list[Tensor | None]:
        """C(gamma)^{-1} per layer of the matrix each kind observes from V (V itself, or
        a kind's gradient moment); V unchanged before a layer has a decomposition."""
        observed = [
            None if V is None else p.observe_gradient(V)
            for p, V in zip(self.preconditioners, grads, strict=True)
        ]
        return coordinator.precondition(self.preconditioners, observed, gamma)

    def curvature_products(self, matrices: list[Tensor | None]) -> list[Tensor | None]:
        """Each layer's undamped Kronecker-factored curvature applied to its matrix (None
        where there is no matrix or no statistics yet)."""
        return [
            None if U is None or not p.has_factors else p.curvature_product(U)
            for p, U in zip(self.preconditioners, matrices, strict=True)
        ]

    # ------------------------------------------------------------ checkpoints

    def layer_states(self) -> list[dict[str, Tensor]]:
        """Each layer's statistics and decomposition (empty before any statistics)."""
        return [preconditioner.state_dict() for preconditioner in self.preconditioners]

    @staticmethod
    def split_state(entries: dict) -> dict:
        """The curvature keys of one parameter's checkpoint entry, removed from it."""
        return {key: entries.pop(key) for key in list(entries) if owns_curvature_key(key)}

    def load_layer_states(self, states: list[dict], devices: list[torch.device]) -> None:
        """Restore :meth:`layer_states` (after :meth:`check_shapes`); a ValueError (state
        of another approximation) leaves every layer as it was."""
        loaded = []
        for layer, state, device in zip(self.layers, states, devices, strict=True):
            preconditioner = preconditioner_for_state(
                state, self.options, layer.name, layer.bias is not None
            )
            preconditioner.load_state_dict({k: v.to(device) for k, v in state.items()})
            loaded.append(preconditioner)
        self.preconditioners[:] = loaded

    def check_shapes(self, states: list[dict]) -> None:
        """ValueError when a checkpoint's factors do not fit the tracked layers."""
        for layer, entry in zip(self.layers, states, strict=True):
            expected_A = layer.handler.gradient_matrix(
                layer.module, layer.weight, layer.bias
            ).shape[::-1]
            if "K" in entry:
                inputs = entry["K"].shape[0] * entry["Psi"].shape[0]
                got = (inputs + (layer.bias is not None), entry["G"].shape[0])
            elif "A" in entry:
                got = (entry["A"].shape[0], entry["G"].shape[0])
            else:
                continue
            if got != tuple(expected_A):
                raise ValueError(
                    f"K-FAC checkpoint does not fit this model: layer {layer.name} has factors "
                    f"of sizes {got}, the model needs {tuple(expected_A)}"
                )


__all__ = ["LayerCurvature"]
