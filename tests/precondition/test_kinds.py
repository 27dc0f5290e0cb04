"""One table over every registered curvature approximation (natgrad.precondition.kinds).

For each kind and each layer pattern (a Linear on sequence inputs, a Conv2d, a layer
with weight decay), K-FAC runs with ``fisher="empirical"`` (the per-example gradients of
the closure's labels) on one batch, and the kind's ``to_dense(gamma)`` is compared
with a float64 matrix written from the kind's paper, built from per-example quantities
computed independently with torch.func (layer-output gradients, per-example weight
gradients); then ``apply(V) == solve(to_dense, vec V)``, and a checkpoint round trip
resumes exactly. A new kind gets the table by registering and adding its reference to
``REFERENCES``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from natgrad.optim.kfac import KFAC
from natgrad.precondition.kinds import CURVATURE_KINDS

N = 12
DAMPING = 0.05


@dataclass
class Pieces:
    """Per-example float64 quantities of the tracked layer, from torch.func."""

    a: Tensor  # (N, R, in[+1]) input positions, ones appended for a bias
    g: Tensor  # (N, R, out) gradient of nll_n at the layer output, per position
    grads: Tensor  # (N, out, in[+1]) per-example gradient of nll_n, bias last column
    map_shape: tuple[int, int] | None  # (channels, locations) of a doubly-factored input
    theta: Tensor  # (out, in[+1]) the layer's parameters, bias last column
    weight_decay: float
    partition: tuple[tuple[int, int], ...] | None = None  # G's diagonal blocks (output_blocks)


def _linear_sequence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Flatten())  # (N, 2, 4) -> 6 logits
    x = torch.randn(N, 2, 4)
    return model, model[0], x, torch.randint(0, 6, (N,)), {}


def _conv():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten())  # (N, 2, 3, 3) -> 12 logits
    x = torch.randn(N, 2, 3, 3)
    return model, model[0], x, torch.randint(0, 12, (N,)), {}


def _one_linear(seed: int, inputs: int, outputs: int, options: dict):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, outputs))
    x = torch.randn(N, inputs)
    return model, model[0], x, torch.randint(0, outputs, (N,)), options


def _weight_decay():
    return _one_linear(2, 5, 4, {"weight_decay": 0.1})


def _flattened_map():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))  # input map (N, 2, 3)
    x = torch.randn(N, 2, 3)
    return model, model[1], x, torch.randint(0, 4, (N,)), {"doubly_factored": "1"}


def _conv_doubly():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten())
    x = torch.randn(N, 2, 3, 3)
    return model, model[0], x, torch.randint(0, 12, (N,)), {"doubly_factored": "0"}


def _output_blocks():
    return _one_linear(5, 4, 6, {"output_blocks": 4})


def _conv_output_blocks_weight_decay():
    model, layer, x, y, _ = _conv()
    return model, layer, x, y, {"output_blocks": 2, "weight_decay": 0.1}


def _flattened_map_output_blocks():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))
    x = torch.randn(N, 2, 3)
    options = {"doubly_factored": "1", "output_blocks": 2}
    return model, model[1], x, torch.randint(0, 5, (N,)), options


KRONECKER_PATTERNS = {
    "linear_sequence": _linear_sequence,
    "conv2d": _conv,
    "weight_decay": _weight_decay,
    "output_blocks": _output_blocks,
    "conv2d_output_blocks": _conv_output_blocks_weight_decay,
}
DOUBLY_PATTERNS = {
    "flattened_map": _flattened_map,
    "conv2d": _conv_doubly,
    "weight_decay": lambda: (*_flattened_map()[:4], {"doubly_factored": "1", "weight_decay": 0.1}),
    "output_blocks": _flattened_map_output_blocks,
}
# G's diagonal blocks in kinds that keep output blocks: the fewest blocks of at most
# output_blocks outputs, contiguous and of sizes differing by at most one
PARTITIONS = {
    ("kronecker", "output_blocks"): ((0, 3), (3, 6)),  # 6 outputs, at most 4 per block
    ("kronecker", "conv2d_output_blocks"): ((0, 2), (2, 3)),  # 3 channels, at most 2
    ("doubly_factored", "output_blocks"): ((0, 2), (2, 4), (4, 5)),  # 5 outputs, at most 2
}


def _input_positions(layer: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
    """a_bar per example and position (KFC for convolutions: im2col patches)."""
    if isinstance(layer, nn.Conv2d):
        patches = F.unfold(x, layer.kernel_size).transpose(1, 2)  # (N, L, C * kh * kw)
        shape = (layer.in_channels, layer.kernel_size[0] * layer.kernel_size[1])
    else:
        patches = x.reshape(x.shape[0], -1, layer.in_features)
        shape = None
    ones = torch.ones(*patches.shape[:-1], 1, dtype=patches.dtype)
    return torch.cat([patches, ones], dim=-1), shape


def _pieces(
    model: nn.Module, layer: nn.Module, x: Tensor, y: Tensor, weight_decay: float = 0.0
) -> Pieces:
    index = list(model).index(layer)
    model, x = copy.deepcopy(model).double(), x.double()
    layer = model[index]
    before, after = model[:index], model[index + 1 :]
    layer_in = before(x)
    a, shape = _input_positions(layer, layer_in)
    if index > 0 and isinstance(model[index - 1], nn.Flatten):  # a flattened (N, C, ...) map
        shape = (x.shape[1], math.prod(x.shape[2:]))

    def nll_at_output(s: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(after(s.unsqueeze(0)), target.unsqueeze(0))

    g = vmap(grad(nll_at_output))(layer(layer_in).detach(), y)
    if isinstance(layer, nn.Conv2d):
        g = g.flatten(2).transpose(1, 2)  # (N, locations, out), ordered like the patches
    g = g.reshape(N, -1, g.shape[-1])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def nll(p: dict, xn: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xn.unsqueeze(0),)), target.unsqueeze(0))

    per_example = vmap(grad(nll), in_dims=(None, 0, 0))(params, x, y)
    weight = per_example[f"{index}.weight"].reshape(N, layer.weight.shape[0], -1)
    grads = torch.cat([weight, per_example[f"{index}.bias"][:, :, None]], dim=2)
    theta = torch.cat([layer.weight.reshape(layer.weight.shape[0], -1), layer.bias[:, None]], 1)
    return Pieces(a, g, grads, shape, theta.detach(), weight_decay)


# ---------------------------------------------------------------- references (the papers)


def _kronecker_factors(p: Pieces) -> tuple[Tensor, Tensor]:
    """A = sum_{n,r} a a^T / (N R), G = sum_{n,r} g g^T / N (K-FAC; KFC for shared weights)."""
    a = p.a.reshape(-1, p.a.shape[-1])
    g = p.g.reshape(-1, p.g.shape[-1])
    return a.T @ a / a.shape[0], g.T @ g / N


def _blocked(G: Tensor, p: Pieces) -> Tensor:
    """G with the entries between different output blocks set to 0 (no partition: G)."""
    if p.partition is None:
        return G
    kept = torch.zeros_like(G)
    for start, end in p.partition:
        kept[start:end, start:end] = G[start:end, start:end]
    return kept


def _trace_pi(A: Tensor, G: Tensor) -> Tensor:
    return torch.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))


def kronecker_reference(p: Pieces, gamma: float) -> Tensor:
    """(G + gamma/pi I) ⊗ (A + pi gamma I), Martens & Grosse (2015) s.6.3, row-major vec."""
    A, G = _kronecker_factors(p)
    pi = _trace_pi(A, G)  # the traces of the blocked G are G's
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    G = _blocked(G, p)
    return torch.kron(G + gamma / pi * eye(G.shape[0]), A + pi * gamma * eye(A.shape[0]))


def doubly_factored_reference(p: Pieces, gamma: float) -> Tensor:
    """K~ ⊗ Psi~ ⊗ G~ (Ba, Grosse & Martens 2017) from the top singular pair of each input
    matrix, three-factor damping, and the bias block G~ (1 + lambda / delta_G)."""
    channels, locations = p.map_shape
    rows = p.a[..., :-1].reshape(-1, channels, locations)
    U, S, Vh = torch.linalg.svd(rows)
    k = U[:, :, 0] * S[:, :1].sqrt()
    psi = Vh[:, 0, :] * S[:, :1].sqrt()
    K, Psi = k.T @ k / len(rows), psi.T @ psi / len(rows)
    G = _blocked(_kronecker_factors(p)[1], p)
    lam = gamma**2
    means = [torch.trace(M) / M.shape[0] for M in (K, Psi, G)]
    geometric = (means[0] * means[1] * means[2]) ** (1 / 3)
    K_d, Psi_d, G_d = (
        M + m / geometric * lam ** (1 / 3) * torch.eye(M.shape[0], dtype=torch.float64)
        for M, m in zip((K, Psi, G), means, strict=True)
    )
    delta_G = means[2] / geometric * lam ** (1 / 3)
    out, inputs = G.shape[0], channels * locations
    dense = torch.zeros(out, inputs + 1, out, inputs + 1, dtype=torch.float64)
    dense[:, :inputs, :, :inputs] = torch.kron(G_d, torch.kron(K_d, Psi_d)).reshape(
        out, inputs, out, inputs
    )
    dense[:, inputs, :, inputs] = G_d * (1 + lam / delta_G)
    return dense.reshape(out * (inputs + 1), -1)


def ekfac_reference(p: Pieces, gamma: float) -> Tensor:
    """(U_G ⊗ U_A) diag(vec(S) + lambda) (U_G ⊗ U_A)^T with S_ij = E_n[(U_G^T G_n U_A)_ij^2]
    and U_A, U_G the eigenvectors of A and G (George et al. 2018, eq. 9-10)."""
    A, G = _kronecker_factors(p)
    U_A, U_G = torch.linalg.eigh(A)[1], torch.linalg.eigh(G)[1]
    S = ((U_G.T @ p.grads @ U_A) ** 2).mean(dim=0)
    U = torch.kron(U_G, U_A)
    return U @ torch.diag(S.reshape(-1) + gamma**2) @ U.T


def eigen_adam_reference(p: Pieces, gamma: float) -> Tensor:
    """(U_G ⊗ U_A) diag(sqrt(vec v^) + gamma) (U_G ⊗ U_A)^T: Adam's second moment of the
    mini-batch gradient V = mean_n G_n + eta theta in K-FAC's eigenbasis (SOAP, Vyas et al.
    2024, with K-FAC's factors); after identical gradients v^ = (U_G^T V U_A)^2."""
    A, G = _kronecker_factors(p)
    U_A, U_G = torch.linalg.eigh(A)[1], torch.linalg.eigh(G)[1]
    V = p.grads.mean(dim=0) + p.weight_decay * p.theta
    scale = (U_G.T @ V @ U_A).abs() + gamma
    U = torch.kron(U_G, U_A)
    return U @ torch.diag(scale.reshape(-1)) @ U.T


REFERENCES = {
    "kronecker": (kronecker_reference, KRONECKER_PATTERNS, ("cholesky", "eigen")),
    "doubly_factored": (doubly_factored_reference, DOUBLY_PATTERNS, ("cholesky", "eigen")),
    "ekfac": (ekfac_reference, KRONECKER_PATTERNS, ("eigen",)),
    "eigen_adam": (eigen_adam_reference, KRONECKER_PATTERNS, ("eigen",)),
}


def _cases():
    for kind, (_, patterns, methods) in REFERENCES.items():
        for pattern in patterns:
            for method in methods:
                yield pytest.param(kind, pattern, method, id=f"{kind}-{pattern}-{method}")


def _approximation(kind: str) -> str:
    return "kronecker" if CURVATURE_KINDS[kind].STATISTICS != "kronecker" else kind


def _run(kind: str, pattern: str, method: str, steps: int = 2):
    """K-FAC with lr 0 (the parameters stay put) for ``steps`` steps on one batch."""
    model, layer, x, y, options = REFERENCES[kind][1][pattern]()
    opt = KFAC(
        model,
        lr=0.0,
        damping=DAMPING,
        fisher="empirical",
        stat_decay=0.0,
        inv_every=1000,
        inverse=method,
        approximation=_approximation(kind),
        **options,
    )

    def closure():
        outputs = model(x)
        return F.cross_entropy(outputs, y), outputs

    for _ in range(steps):
        opt.step(closure)
    gamma = math.sqrt(DAMPING + options.get("weight_decay", 0.0))
    return opt, model, layer, x, y, gamma, options.get("weight_decay", 0.0)


def test_every_registered_kind_is_in_the_table():
    assert set(REFERENCES) == set(CURVATURE_KINDS)


def test_the_references_per_example_pieces_agree_with_the_per_example_gradients():
    for make in (_linear_sequence, _conv):
        model, layer, x, y, _ = make()
        p = _pieces(model, layer, x, y)
        torch.testing.assert_close(torch.einsum("nro,nri->noi", p.g, p.a), p.grads)


@pytest.mark.parametrize(("kind", "pattern", "method"), list(_cases()))
def test_to_dense_is_the_papers_matrix(kind, pattern, method):
    opt, model, layer, x, y, gamma, weight_decay = _run(kind, pattern, method)
    preconditioner = opt.preconditioner(layer)
    assert type(preconditioner) is CURVATURE_KINDS[kind]
    pieces = _pieces(model, layer, x, y, weight_decay)
    if CURVATURE_KINDS[kind].BLOCKS_OUTPUTS:  # the other kinds keep G whole
        pieces.partition = PARTITIONS.get((kind, pattern))
    reference = REFERENCES[kind][0](pieces, gamma)
    dense = preconditioner.to_dense(gamma)
    assert dense.dtype == torch.float64
    scale = reference.abs().max()
    torch.testing.assert_close(dense / scale, reference / scale, rtol=0, atol=2e-5)


@pytest.mark.parametrize(("kind", "pattern", "method"), list(_cases()))
def test_apply_solves_the_dense_matrix(kind, pattern, method):
    opt, _, layer, _, _, gamma, _ = _run(kind, pattern, method)
    preconditioner = opt.preconditioner(layer)
    V = opt.gradient_matrices(0.0)[opt.layers.index(_tracked(opt, layer))]
    V = V + torch.randn(V.shape, generator=torch.Generator().manual_seed(5))
    expected = torch.linalg.solve(preconditioner.to_dense(gamma), V.double().reshape(-1))
    applied = preconditioner.apply(V, gamma)
    assert applied.shape == V.shape
    scale = expected.abs().max()
    torch.testing.assert_close(
        applied.double().reshape(-1) / scale, expected / scale, rtol=0, atol=2e-5
    )


def _tracked(opt: KFAC, module: nn.Module):
    return next(layer for layer in opt.layers if module in layer.modules)


def _checkpoint_cases():
    for kind, (_, patterns, _) in REFERENCES.items():
        yield pytest.param(kind, next(iter(patterns)), id=kind)


@pytest.mark.parametrize(("kind", "pattern"), list(_checkpoint_cases()))
def test_checkpoint_round_trip_resumes_exactly(kind, pattern):
    model, layer, x, y, options = REFERENCES[kind][1][pattern]()
    settings = dict(
        lr=0.05,
        momentum=0.5,
        damping=DAMPING,
        stat_decay=0.9,
        inv_every=2,
        inverse="eigen",
        approximation=_approximation(kind),
        **options,
    )
    batches = [
        (torch.randn(x.shape, generator=torch.Generator().manual_seed(i)), y) for i in range(6)
    ]

    def run(opt, net, chosen):
        for xb, yb in chosen:

            def closure(xb=xb, yb=yb):
                outputs = net(xb)
                return F.cross_entropy(outputs, yb), outputs

            opt.step(closure)

    opt = KFAC(model, **settings)
    run(opt, model, batches[:3])
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    run(opt, model, batches[3:])

    resumed_model = copy.deepcopy(model)
    resumed_model.load_state_dict(saved_model)
    resumed = KFAC(resumed_model, **settings)
    resumed.load_state_dict(saved)
    run(resumed, resumed_model, batches[3:])
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    first = opt.preconditioners[0].state_dict()
    second = resumed.preconditioners[0].state_dict()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
