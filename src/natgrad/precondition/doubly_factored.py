"""The doubly-factored preconditioner of one very large layer (Ba, Grosse & Martens 2017).

The layer's curvature is K ⊗ Psi ⊗ G (channels, locations, outputs; see
:mod:`natgrad.curvature.doubly_factored`). The weight part of the gradient matrix V
(out x channels*locations) is read as a tensor (out, channels, locations) and
preconditioned by mode products with the three damped inverses:

    U[o, c, l] = sum G~^-1[o, o'] K~^-1[c, c'] Psi~^-1[l, l'] V[o', c', l'],

with three-factor damping F~ = F + pi_F lambda^(1/3) I, pi_F = t_F / (t_K t_Psi t_G)^(1/3)
and t_F = tr(F) / dim(F), so that the three dampings multiply to lambda (here
lambda = gamma^2 = damping + weight decay) and each is scaled to its factor, as the
two-factor pi is (docs/REFERENCES.md s.5). The bias column has the block 1 ⊗ G; it is
preconditioned with the same G~^-1 and the scalar 1 + lambda / delta_G, whose damping
completes G's to lambda.

Like :class:`~natgrad.precondition.kronecker.KroneckerPreconditioner`: ``update`` the
running factors, ``compute_decomposition`` (pure, can run anywhere), ``install``,
``apply``; "cholesky" bakes the damping into explicit inverses, "eigen" keeps the
eigenbases so the damping can change every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.curvature.doubly_factored import DoublyFactoredFactors
from natgrad.precondition import output_blocks as blocks
from natgrad.precondition.base import LayerPreconditionerBase, eigen_matrix
from natgrad.precondition.damping import add_to_diagonal
from natgrad.precondition.factor_inverse import damped_inverse, symmetric_eigen, symmetric_inverse
from natgrad.precondition.output_blocks import Bounds, left_product

FACTOR_NAMES = ("K", "Psi", "G")
_TINY_TRACE = 1e-12


def three_factor_dampings(traces: list[Tensor], dims: list[int], total: float) -> list[Tensor]:
    """delta_F = pi_F * total^(1/3) with pi_F = t_F / geometric mean of the t's."""
    means = [trace.clamp_min(_TINY_TRACE) / dim for trace, dim in zip(traces, dims, strict=True)]
    geometric = torch.stack(means).log().mean().exp()
    root = total ** (1.0 / 3.0)
    return [mean / geometric * root for mean in means]


def bias_damping_scale(gamma: float, damping_G: Tensor) -> Tensor:
    """1 / (1 + lambda / delta_G), lambda = gamma^2: the bias block's damping beyond G's
    (1 when lambda = 0, where delta_G = 0 too)."""
    if not gamma:
        return torch.ones_like(damping_G)
    return 1.0 / (1.0 + gamma**2 / damping_G)


def mode_products(
    K: Tensor, Psi: Tensor, G: Tensor, weight: Tensor, bounds: Bounds | None = None
) -> Tensor:
    """sum G[o,o'] K[c,c'] Psi[l,l'] weight[o',c',l'] for weight (out, channels, locations)
    (G block-diagonal over ``bounds`` when given)."""
    out, channels, locations = weight.shape
    result = weight @ Psi.T  # mode 3
    result = torch.matmul(K, result)  # mode 2, batched over the outputs
    return left_product(G, result.reshape(out, -1), bounds).reshape(out, channels, locations)


class DoublyFactoredPreconditioner(LayerPreconditionerBase):
    """Running K, Psi, G of one layer and their damped decomposition."""

    KIND = "doubly_factored"
    FACTOR_KEYS = FACTOR_NAMES
    STATISTICS = "doubly_factored"
    BLOCKS_OUTPUTS = True

    def __init__(self, method: str = "cholesky", has_bias: bool = True) -> None:
        super().__init__(method)
        self.factors: dict[str, Tensor] | None = None
        self.has_bias = has_bias  # the layer's gradient matrix has a bias column

    @classmethod
    def create(cls, options, has_bias: bool = True) -> DoublyFactoredPreconditioner:
        return cls(str(options.get("inverse", "cholesky")), has_bias)

    @property
    def has_factors(self) -> bool:
        return self.factors is not None

    def update_factors(self, factors: DoublyFactoredFactors, decay: float) -> None:
        """running <- decay * running + (1 - decay) * batch (the batch itself the first time)."""
        batch = dict(zip(FACTOR_NAMES, factors.matrices(), strict=True))
        if self.factors is None or decay == 0.0:
            self.factors = {name: matrix.clone() for name, matrix in batch.items()}
            return
        for name, matrix in batch.items():
            self.factors[name].lerp_(matrix, 1.0 - decay)

    def _dampings(self, matrices: list[Tensor], gamma: float) -> list[Tensor]:
        return three_factor_dampings(
            [torch.trace(m) for m in matrices], [m.shape[0] for m in matrices], gamma**2
        )

    def compute_decomposition(self, gamma: float) -> dict[str, Tensor]:
        """Damped inverses ("cholesky") or eigendecompositions ("eigen") of K, Psi, G (pure);
        G in ``output_blocks`` diagonal blocks (natgrad.precondition.output_blocks)."""
        if self.factors is None:
            raise RuntimeError("no factors yet: call update_factors() before refreshing")
        matrices = [self.factors[name] for name in FACTOR_NAMES]
        bounds = blocks.block_bounds(matrices[2].shape[0], self.blocks_to_compute())
        block_sets = ((), (), bounds)  # only G is blocked
        decomposition = blocks.blocks_entry(bounds, matrices[2].device)
        if self.method == "eigen":
            for name, matrix, own in zip(FACTOR_NAMES, matrices, block_sets, strict=True):
                values, vectors = blocks.blockwise_eigen(matrix, own, symmetric_eigen)
                decomposition[name + "_eigvals"], decomposition[name + "_eigvecs"] = values, vectors
            return decomposition
        dampings = self._dampings(matrices, gamma)
        for name, matrix, damping, own in zip(
            FACTOR_NAMES, matrices, dampings, block_sets, strict=True
        ):
            damped = add_to_diagonal(matrix, damping)
            decomposition[name + "_inv"] = blocks.blockwise_inverse(damped, own, symmetric_inverse)
        decomposition["bias_scale"] = bias_damping_scale(gamma, dampings[2])
        return decomposition

    def apply(self, V: Tensor, gamma: float) -> Tensor:
        """The damped K ⊗ Psi ⊗ G inverse applied to the gradient matrix ``V`` (float32)."""
        V = V.float()
        if self.decomposition is None:
            return V
        channels, locations = self.factors["K"].shape[0], self.factors["Psi"].shape[0]
        weight = V[:, : channels * locations].reshape(-1, channels, locations)
        has_bias = V.shape[1] == channels * locations + 1
        if self.method == "eigen":
            weight_update, bias_update = self._apply_eigen(weight, V, has_bias, gamma)
        else:
            d = self.decomposition
            bounds = self.output_bounds
            weight_update = mode_products(d["K_inv"], d["Psi_inv"], d["G_inv"], weight, bounds)
            bias_update = None
            if has_bias:
                bias_update = left_product(d["G_inv"], V[:, -1:], bounds)[:, 0] * d["bias_scale"]
        columns = [weight_update.reshape(V.shape[0], -1)]
        if bias_update is not None:
            columns.append(bias_update[:, None])
        return torch.cat(columns, dim=1)

    def _apply_eigen(self, weight: Tensor, V: Tensor, has_bias: bool, gamma: float):
        d = self.decomposition
        values = [d[name + "_eigvals"] for name in FACTOR_NAMES]
        vectors = [d[name + "_eigvecs"] for name in FACTOR_NAMES]
        dampings = three_factor_dampings(
            [v.sum() for v in values], [v.shape[0] for v in values], gamma**2
        )
        Q_K, Q_Psi, Q_G = vectors
        bounds = self.output_bounds
        rotated = mode_products(Q_K.T, Q_Psi.T, Q_G.T, weight, bounds)  # into the eigenbases
        inv_K, inv_Psi, inv_G = (
            damped_inverse(v, damping) for v, damping in zip(values, dampings, strict=True)
        )
        rotated = rotated * (inv_G[:, None, None] * inv_K[None, :, None] * inv_Psi[None, None, :])
        weight_update = mode_products(Q_K, Q_Psi, Q_G, rotated, bounds)
        bias_update = None
        if has_bias:
            scale = bias_damping_scale(gamma, dampings[2])
            rotated_bias = left_product(Q_G.T, V[:, -1:], bounds)[:, 0] * inv_G
            bias_update = left_product(Q_G, rotated_bias[:, None], bounds)[:, 0] * scale
        return weight_update, bias_update

    def curvature_product(self, V: Tensor) -> Tensor:
        """(G ⊗ K ⊗ Psi) on the weight entries of V and G on its bias column, with the
        running, undamped factors (float32)."""
        K, Psi, G = (self.factors[name] for name in FACTOR_NAMES)
        V = V.float()
        inputs = K.shape[0] * Psi.shape[0]
        weight = V[:, :inputs].reshape(-1, K.shape[0], Psi.shape[0])
        columns = [mode_products(K, Psi, G, weight).reshape(V.shape[0], -1)]
        if V.shape[1] == inputs + 1:
            columns.append(G @ V[:, -1:])
        return torch.cat(columns, dim=1)

    def _damped_matrices(self, gamma: float) -> tuple[list[Tensor], Tensor]:
        """The installed damped K~, Psi~, G~ (float64) and the bias scale 1/(1 + lambda/delta_G)."""
        d = self.decomposition
        if self.method == "cholesky":
            damped = [torch.linalg.inv(d[name + "_inv"].double()) for name in FACTOR_NAMES]
            scale = torch.as_tensor(d["bias_scale"], dtype=torch.float64)
            return damped, scale.to(damped[2].device)
        values = [d[name + "_eigvals"].double() for name in FACTOR_NAMES]
        dampings = three_factor_dampings(
            [v.sum() for v in values], [v.shape[0] for v in values], gamma**2
        )
        damped = [
            eigen_matrix(v + damping, d[name + "_eigvecs"])
            for name, v, damping in zip(FACTOR_NAMES, values, dampings, strict=True)
        ]
        return damped, 1.0 / (1.0 + gamma**2 / dampings[2])

    def to_dense(self, gamma: float) -> Tensor:
        """G~ ⊗ K~ ⊗ Psi~ on the weight entries and G~ (1 + lambda/delta_G) on the bias
        column, in the row-major order of V (float64; identity before a decomposition)."""
        if self.factors is None:
            raise RuntimeError("no factors yet: the layer's size is unknown")
        out = self.factors["G"].shape[0]
        inputs = self.factors["K"].shape[0] * self.factors["Psi"].shape[0]
        width = inputs + int(self.has_bias)
        device = self.factors["G"].device
        if self.decomposition is None:
            return torch.eye(out * width, dtype=torch.float64, device=device)
        (K, Psi, G), bias_scale = self._damped_matrices(gamma)
        rows = torch.arange(out, device=device)[:, None] * width
        weight_index = (rows + torch.arange(inputs, device=device)).reshape(-1)
        dense = torch.zeros(out * width, out * width, dtype=torch.float64, device=device)
        dense[weight_index[:, None], weight_index] = torch.kron(G, torch.kron(K, Psi))
        if self.has_bias:
            bias_index = rows[:, 0] + inputs
            dense[bias_index[:, None], bias_index] = G / bias_scale
        return dense

    def state_dict(self) -> dict[str, Tensor]:
        """Factors under "K", "Psi", "G" and the decomposition under "inverse.*"."""
        if self.factors is None:
            return {}
        return {**self.factors, **self.decomposition_state(self.factors["G"].device)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        present = [name for name in FACTOR_NAMES if name in state]
        self.factors = {name: state[name] for name in present} if present else None
        self.load_decomposition(state)


__all__ = [
    "DoublyFactoredPreconditioner",
    "three_factor_dampings",
    "bias_damping_scale",
    "mode_products",
]
