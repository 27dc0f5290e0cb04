"""K-FAC on what real models do: tied parameters, modules called several times, sequence
inputs (expand and reduce), buffers, weight decay in the damping rule, layers that do not
reach the loss, attention. References are float64 dense computations written from the
equations (Martens & Grosse 2015; Eschenhagen et al. 2023), or the dense Fisher of
``natgrad.curvature.dense`` (torch.func)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from kfac_settings import EXACT_ONE_STEP, kfac_with_fallback
from natgrad.curvature.dense import dense_fisher, flatten_params
from natgrad.curvature.likelihoods import Gaussian
from natgrad.optim.kfac import KFAC, DampingConfig


def _gaussian_closure(model, inputs, targets):
    def closure():
        outputs = model(inputs)
        return Gaussian().loss(outputs, targets), outputs

    return closure


def _exact_natural_gradient_step(model, inputs, targets, damping):
    """theta - (F + damping I)^{-1} grad with the dense exact Fisher (float64)."""
    wide = copy.deepcopy(model).double()
    x = tuple(t.double() for t in inputs) if isinstance(inputs, tuple) else inputs.double()
    fisher = dense_fisher(wide, x, "gaussian", kind="exact")
    loss = Gaussian().loss(wide(x), targets.double())
    params = [p for p in wide.parameters() if p.requires_grad]
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    shifted = fisher + damping * torch.eye(len(grad), dtype=torch.float64)
    return flatten_params(wide) - torch.linalg.solve(shifted, grad)


def _assert_kfac_step_is_natural_gradient(model, inputs, targets, **kwargs):
    damping = 1e-12  # factored damping adds about sqrt(damping): keep it far below round-off
    expected = _exact_natural_gradient_step(model, inputs, targets, damping)
    opt = KFAC(model, damping=damping, **EXACT_ONE_STEP, **kwargs)
    opt.step(_gaussian_closure(model, inputs, targets))
    torch.testing.assert_close(flatten_params(model).double(), expected, rtol=1e-3, atol=1e-4)
    return opt


# ---------------------------------------------------------------- 1. tied parameters


class TiedPair(nn.Module):
    """Two Linear modules holding one weight and one bias, on two halves of the input."""

    def __init__(self, head: bool = False) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(3, 4)
        self.second.weight, self.second.bias = self.first.weight, self.first.bias
        self.head = nn.Linear(4, 2) if head else None

    def forward(self, x):
        uses = [self.first(x[:, :3]), self.second(x[:, 3:])]
        if self.head is None:
            return torch.cat(uses, dim=1)
        return torch.cat([self.head(torch.tanh(s)) for s in uses], dim=1)


def test_tied_linear_pair_is_one_layer_and_its_step_is_the_exact_natural_gradient():
    torch.manual_seed(0)
    model = TiedPair()
    inputs, targets = torch.randn(16, 6), torch.randn(16, 8)
    opt = _assert_kfac_step_is_natural_gradient(model, inputs, targets)
    assert [layer.name for layer in opt.layers] == ["first+second"]


def test_tied_weight_is_updated_once_large_damping_gives_the_scaled_gradient():
    torch.manual_seed(1)
    model = TiedPair()
    inputs, targets = torch.randn(16, 6), torch.randn(16, 8)
    before = flatten_params(model).double()
    loss = Gaussian().loss(model(inputs), targets)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    opt = KFAC(model, lr=100.0, damping=1e6, likelihood="gaussian", fisher="exact", inv_every=1)
    opt.step(_gaussian_closure(model, inputs, targets))
    step = flatten_params(model).double() - before
    # (A + pi gamma I) ⊗ (G + gamma / pi I) -> gamma^2 I = damping I: the step is
    # -lr grad / damping up to O(1 / gamma); a weight updated twice would move 2x
    expected = -100.0 * grad.double() / 1e6
    assert float((step - expected).norm() / expected.norm()) < 0.02


def _damped_kronecker_solve(A, G, V, gamma):
    pi = torch.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
    eye_A, eye_G = torch.eye(A.shape[0], dtype=A.dtype), torch.eye(G.shape[0], dtype=G.dtype)
    return torch.linalg.solve(G + gamma / pi * eye_G, V) @ torch.linalg.inv(A + pi * gamma * eye_A)


def test_tied_layer_in_a_nonlinear_net_steps_by_the_dense_expand_factors():
    """A over both uses' inputs / (2N), G = sum over uses of J^T J / N, one damped solve."""
    torch.manual_seed(2)
    model = TiedPair(head=True)
    inputs, targets = torch.randn(12, 6), torch.randn(12, 4)
    damping = 0.05
    W = model.first.weight.detach().double()
    b = model.first.bias.detach().double()
    H = model.head.weight.detach().double()
    c = model.head.bias.detach().double()
    x = inputs.double()
    halves = [x[:, :3], x[:, 3:]]

    def outputs_of(s1, s2):  # one example's outputs from the two pre-activations
        return torch.cat([torch.tanh(s1) @ H.T + c, torch.tanh(s2) @ H.T + c])

    pre = [h @ W.T + b for h in halves]
    jacobians = vmap(jacrev(outputs_of, argnums=(0, 1)))(*pre)  # each (N, 4, 4)
    G = sum(torch.einsum("nco,ncp->op", J, J) for J in jacobians) / 12  # gaussian: H_out = I
    a_bars = torch.cat([torch.cat([h, torch.ones(12, 1, dtype=h.dtype)], 1) for h in halves])
    A = a_bars.T @ a_bars / 24
    W_var, b_var = W.clone().requires_grad_(), b.clone().requires_grad_()
    s1, s2 = (h @ W_var.T + b_var for h in halves)
    outputs = torch.stack([outputs_of(*pair) for pair in zip(s1, s2, strict=True)])
    loss = 0.5 * (outputs - targets.double()).pow(2).sum(1).mean()
    V = torch.cat([g.reshape(4, -1) for g in torch.autograd.grad(loss, [W_var, b_var])], dim=1)
    expected = torch.cat([W, b[:, None]], 1) - _damped_kronecker_solve(A, G, V, math.sqrt(damping))

    opt = KFAC(model, damping=damping, **EXACT_ONE_STEP)
    opt.step(_gaussian_closure(model, inputs, targets))
    got = torch.cat([model.first.weight, model.first.bias[:, None]], 1).detach().double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(opt.preconditioner(model.second).A.double(), A, rtol=1e-5, atol=1e-6)


def test_weight_tied_to_an_untracked_module_goes_to_the_fallback():
    torch.manual_seed(3)
    embedding, head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Flatten(), nn.Linear(8, 4), head)
    with pytest.warns(UserWarning, match=r"3 \(Linear: .*also held by a module"):
        opt = KFAC(model, lr=0.1)
    assert [layer.name for layer in opt.layers] == ["2"]


# ---------------------------------------------------------------- 2. shared positions


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 2)

    def forward(self, x):  # x: (N, 2, 3)
        return torch.cat([self.shared(x[:, 0]), self.shared(x[:, 1])], dim=1)


class SequenceLinear(nn.Module):
    def __init__(self, pool: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2) if pool else None

    def forward(self, x):  # x: (N, T, 3)
        s = self.proj(x)
        if self.head is None:
            return s.flatten(1)
        return self.head(torch.tanh(s.mean(dim=1)))


def test_module_called_twice_records_both_calls_and_expand_is_the_natural_gradient():
    torch.manual_seed(4)
    model = CalledTwice()
    inputs, targets = torch.randn(10, 2, 3), torch.randn(10, 4)
    _assert_kfac_step_is_natural_gradient(model, inputs, targets)


def test_linear_over_a_sequence_expand_is_the_natural_gradient():
    torch.manual_seed(5)
    model = SequenceLinear()
    inputs, targets = torch.randn(8, 5, 3), torch.randn(8, 20)
    _assert_kfac_step_is_natural_gradient(model, inputs, targets)


def _reduce_reference(model, x):
    """Eschenhagen et al.'s K-FAC-reduce: a~ = mean_t a_bar_t, g~ = sum_t g_t (float64)."""
    wide = copy.deepcopy(model).double()
    W, b = wide.proj.weight.detach(), wide.proj.bias.detach()
    H, c = wide.head.weight.detach(), wide.head.bias.detach()
    s = x @ W.T + b  # (N, T, 4)
    per_position = vmap(jacrev(lambda s_n: torch.tanh(s_n.mean(0)) @ H.T + c))(s)  # (N, 2, T, 4)
    J = per_position.sum(dim=2)  # d f / d (shared pre-activation), summed over positions
    G = torch.einsum("nco,ncp->op", J, J) / x.shape[0]
    a_mean = torch.cat([x, torch.ones(*x.shape[:2], 1, dtype=x.dtype)], -1).mean(dim=1)
    return a_mean.T @ a_mean / x.shape[0], G


@pytest.mark.parametrize("sharing", ["reduce", {"proj": "reduce"}])
def test_reduce_factors_equal_their_definition(sharing):
    torch.manual_seed(6)
    model = SequenceLinear(pool=True)
    inputs, targets = torch.randn(9, 5, 3), torch.randn(9, 2)
    A, G = _reduce_reference(model, inputs.double())
    opt = KFAC(model, damping=0.1, sharing=sharing, **EXACT_ONE_STEP)
    opt.step(_gaussian_closure(model, inputs, targets))
    assert [layer.sharing for layer in opt.layers] == [
        "reduce",
        "reduce" if sharing == "reduce" else "expand",
    ]
    torch.testing.assert_close(opt.preconditioner(model.proj).A.double(), A, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.preconditioner(model.proj).G.double(), G, rtol=1e-5, atol=1e-6)


def test_expand_factors_of_the_pooled_sequence_model_equal_their_definition():
    """Expand on the same model: rows per position, A / (N T), G = sum_t J_t^T J_t / N."""
    torch.manual_seed(7)
    model = SequenceLinear(pool=True)
    inputs, targets = torch.randn(9, 5, 3), torch.randn(9, 2)
    x = inputs.double()
    wide = copy.deepcopy(model).double()
    W, b = wide.proj.weight.detach(), wide.proj.bias.detach()
    H, c = wide.head.weight.detach(), wide.head.bias.detach()
    J = vmap(jacrev(lambda s_n: torch.tanh(s_n.mean(0)) @ H.T + c))(x @ W.T + b)  # (N, 2, T, 4)
    G = torch.einsum("nctp,nctq->pq", J, J) / 9
    a_bar = torch.cat([x, torch.ones(9, 5, 1, dtype=x.dtype)], -1).reshape(45, 4)
    opt = KFAC(model, damping=0.1, **EXACT_ONE_STEP)
    opt.step(_gaussian_closure(model, inputs, targets))
    torch.testing.assert_close(opt.preconditioner(model.proj).G.double(), G, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        opt.preconditioner(model.proj).A.double(), a_bar.T @ a_bar / 45, rtol=1e-5, atol=1e-6
    )


def test_unknown_sharing_names_and_modes_are_rejected():
    with pytest.raises(ValueError, match="sharing names no tracked layer"):
        KFAC(SequenceLinear(), lr=0.1, sharing={"nope": "reduce"})
    with pytest.raises(ValueError, match="sharing must be one of expand, reduce"):
        KFAC(SequenceLinear(), lr=0.1, sharing="mean")


# ---------------------------------------------------------------- 3. buffers


def test_batchnorm_buffers_after_a_step_equal_one_plain_training_forward():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    inputs, labels = torch.randn(32, 4), torch.randint(0, 3, (32,))
    plain = copy.deepcopy(model)
    plain(inputs)  # one ordinary training forward
    opt = kfac_with_fallback(
        model,
        lr=0.1,
        damping=0.1,
        stat_fraction=0.5,  # a separate statistics forward
        adapt_step=True,  # the quadratic model's forwards
        adapt_damping=True,  # the forward at theta + d
        model_fraction=0.5,
        model_min_examples=1,
        damping_config=DampingConfig(interval=1),
    )

    def closure():
        outputs = model(inputs)
        return torch.nn.functional.cross_entropy(outputs, labels), outputs

    opt.step(closure)
    assert hasattr(opt, "last_rho")  # the damping rule ran
    for (name, got), expected in zip(model[1].named_buffers(), plain[1].buffers(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)
    assert int(model[1].num_batches_tracked) == 1


# ---------------------------------------------------------------- 4. weight decay in rho
# (tests/optim/test_kfac.py: test_levenberg_marquardt_rule_matches_dense_reduction_ratio)

# ---------------------------------------------------------------- 5. unused layers


class WithIdleLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        self.never_called = nn.Linear(3, 3)
        self.dead_end = nn.Linear(3, 7)

    def forward(self, x):
        self.dead_end(x)  # computed, never reaches the outputs
        return self.body(x)


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_layers_not_called_or_not_reaching_the_loss_get_no_statistics_and_no_update(fisher):
    torch.manual_seed(9)
    model = WithIdleLayers()
    inputs, targets = torch.randn(10, 3), torch.randn(10, 2)
    reference = copy.deepcopy(model.body)
    idle = [copy.deepcopy(model.never_called), copy.deepcopy(model.dead_end)]
    opt = KFAC(model, lr=0.5, damping=0.1, likelihood="gaussian", fisher=fisher, inv_every=1)
    ref_opt = KFAC(
        reference, lr=0.5, damping=0.1, likelihood="gaussian", fisher=fisher, inv_every=1
    )
    ref_opt.generator.set_state(opt.generator.get_state())
    for _ in range(2):
        opt.step(_gaussian_closure(model, inputs, targets))
        ref_opt.step(_gaussian_closure(reference, inputs, targets))
    for module, before in zip([model.never_called, model.dead_end], idle, strict=True):
        assert not opt.preconditioner(module).has_factors
        torch.testing.assert_close(module.weight, before.weight, rtol=0, atol=0)
    torch.testing.assert_close(flatten_params(model.body), flatten_params(reference))


# ---------------------------------------------------------------- attention, fallback


def test_multihead_attention_projections_fall_back_and_the_warning_names_them():
    torch.manual_seed(10)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(3, 8), layer, nn.Flatten(), nn.Linear(8 * 4, 2))
    with pytest.warns(UserWarning) as caught:
        opt = KFAC(model, lr=0.05, damping=0.1, likelihood="gaussian", inv_every=2)
    message = str(caught[0].message)
    assert (
        "1.self_attn (MultiheadAttention: in_proj_weight, in_proj_bias used functionally)"
        in message
    )
    assert (
        "1.self_attn.out_proj (NonDynamicallyQuantizableLinear: inside nn.MultiheadAttention"
        in message
    )
    assert "1.norm1 (LayerNorm" in message
    assert sorted(layer.name for layer in opt.layers) == ["0", "1.linear1", "1.linear2", "3"]
    inputs, targets = torch.randn(16, 4, 3), torch.randn(16, 2)
    closure = _gaussian_closure(model, inputs, targets)
    losses = [float(opt.step(closure)) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def test_batchnorm_and_bare_parameter_without_tracked_layers_train_with_the_fallback():
    class NoTracked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.norm = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.norm(x * self.scale)

    torch.manual_seed(11)
    model = NoTracked()
    with pytest.warns(UserWarning, match=r"\(root\) \(NoTracked\)"):
        opt = KFAC(model, lr=0.1, likelihood="gaussian", adapt_damping=True)
    inputs, targets = torch.randn(16, 4), torch.randn(16, 4)
    losses = [float(opt.step(_gaussian_closure(model, inputs, targets))) for _ in range(10)]
    assert losses[-1] < losses[0]
