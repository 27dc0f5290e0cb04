"""Kronecker factors of K-FAC against independent references.

Deep linear networks with the gaussian likelihood: the exact Fisher block of each layer
is exactly A ⊗ G (g_n = B^T S with B the product of later weights, the same for every
example), so factors and their product are compared with the dense Fisher of
natgrad.curvature.dense. Convolutions: factors against a brute-force loop over output
locations (no unfold), and the KFC scale against the dense Fisher of a lone conv layer.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from natgrad.curvature.dense import dense_fisher
from natgrad.optim.kfac import KFAC


def _factors_after_one_step(model: nn.Module, inputs, likelihood: str, fisher: str, **kwargs):
    """A, G per tracked layer from one lr=0 step (parameters unchanged)."""
    opt = KFAC(
        model, lr=0.0, likelihood=likelihood, fisher=fisher, stat_decay=0.0, inv_every=1, **kwargs
    )

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, torch.zeros_like(outputs)), outputs

    opt.step(closure)
    return opt, [
        (opt.preconditioner(layer.module).A, opt.preconditioner(layer.module).G)
        for layer in opt.layers
    ]


def _block_order(model: nn.Module, layer: nn.Module) -> torch.Tensor:
    """Dense-Fisher indices of ``layer``'s [W, b] matrix, flattened row-major."""
    offsets, start = {}, 0
    for p in model.parameters():
        offsets[id(p)] = start
        start += p.numel()
    weight = layer.weight.reshape(layer.weight.shape[0], -1)
    out, fan_in = weight.shape
    index = offsets[id(layer.weight)] + torch.arange(out * fan_in).reshape(out, fan_in)
    if layer.bias is not None:
        bias_index = offsets[id(layer.bias)] + torch.arange(out).reshape(out, 1)
        index = torch.cat([index, bias_index], dim=1)
    return index.reshape(-1)


def _deep_linear(bias: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Linear(5, 3, bias=bias), nn.Linear(3, 2))


@pytest.mark.parametrize("bias", [True, False])
def test_deep_linear_factors_equal_expectations_and_exact_fisher_blocks(bias):
    model = _deep_linear(bias)
    inputs = torch.randn(7, 4)
    _, factors = _factors_after_one_step(model, inputs, "gaussian", "exact")
    wide = copy.deepcopy(model).double()
    fisher = dense_fisher(wide, inputs.double(), "gaussian", kind="exact")
    layers = list(wide)
    activation = inputs.double()
    for index, (layer, (A, G)) in enumerate(zip(layers, factors, strict=True)):
        a_bar = activation
        if layer.bias is not None:
            a_bar = torch.cat([a_bar, torch.ones(len(a_bar), 1, dtype=a_bar.dtype)], dim=1)
        expected_A = a_bar.T @ a_bar / len(a_bar)
        later = torch.eye(layer.out_features, dtype=torch.float64)
        for following in layers[index + 1 :]:
            later = following.weight.detach() @ later
        expected_G = later.T @ later  # H_out = I: E[g g^T] = B^T B for every example
        torch.testing.assert_close(A.double(), expected_A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(G.double(), expected_G, rtol=1e-5, atol=1e-6)
        order = _block_order(wide, layer)
        block = fisher[order][:, order]
        torch.testing.assert_close(torch.kron(G.double(), A.double()), block, rtol=1e-4, atol=1e-6)
        activation = layer(activation).detach()


def _patches_by_loop(x: torch.Tensor, conv: nn.Conv2d, out_hw: tuple[int, int]) -> torch.Tensor:
    """(N, T, C_in*kh*kw [+1]) patches, one output location at a time."""
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (ph, pw), (dh, dw) = conv.padding, conv.dilation
    padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    rows = []
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            top, left = i * sh, j * sw
            patch = padded[
                :, :, top : top + dh * (kh - 1) + 1 : dh, left : left + dw * (kw - 1) + 1 : dw
            ]
            rows.append(patch.reshape(len(x), -1))
    patches = torch.stack(rows, dim=1)
    if conv.bias is not None:
        patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=x.dtype)], dim=2)
    return patches


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(kernel_size=3, stride=1, padding=1),
        dict(kernel_size=2, stride=2, padding=0, bias=False),
        dict(kernel_size=3, stride=2, padding=2, dilation=2),
    ],
)
def test_conv_factors_equal_brute_force_per_location(conv_kwargs):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, **conv_kwargs)
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten())
    inputs = torch.randn(3, 2, 5, 5)
    with torch.no_grad():
        features = conv(inputs)
    head = nn.Linear(features[0].numel(), 4)
    model.append(head)
    _, [(A, G), _] = _factors_after_one_step(model, inputs, "gaussian", "exact")

    wide = copy.deepcopy(model).double()
    x = inputs.double()
    pre = wide[0](x)
    out_h, out_w = pre.shape[-2:]
    locations = out_h * out_w
    patches = _patches_by_loop(x, wide[0], (out_h, out_w))
    expected_A = torch.einsum("ntp,ntq->pq", patches, patches) / (len(x) * locations)

    def tail(s):  # outputs as a function of one example's conv output
        return wide[3](wide[2](wide[1](s.unsqueeze(0)))).squeeze(0)

    expected_G = torch.zeros(3, 3, dtype=torch.float64)
    for n in range(len(x)):
        jac = torch.autograd.functional.jacobian(tail, pre[n].detach())  # (C, C_out, H, W)
        for i in range(out_h):
            for j in range(out_w):
                j_t = jac[:, :, i, j]  # H_out = I: sum_k g_k g_k^T = J_t^T J_t
                expected_G += j_t.T @ j_t
    expected_G /= len(x)
    torch.testing.assert_close(A.double(), expected_A, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(G.double(), expected_G, rtol=1e-4, atol=1e-6)


def test_lone_conv_layer_kfc_scale_equals_exact_fisher():
    """Outputs = the conv output itself (gaussian): the Fisher is sum_t a_t a_t^T ⊗ I / N,
    which A ⊗ G reproduces only with the |T| scaling of KFC."""
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel_size=2, stride=1, padding=0)
    model = nn.Sequential(conv, nn.Flatten())
    inputs = torch.randn(4, 2, 3, 3)
    _, [(A, G)] = _factors_after_one_step(model, inputs, "gaussian", "exact")
    wide = copy.deepcopy(model).double()
    fisher = dense_fisher(wide, inputs.double(), "gaussian", kind="exact")
    order = _block_order(wide, wide[0])
    block = fisher[order][:, order]
    torch.testing.assert_close(torch.kron(G.double(), A.double()), block, rtol=1e-4, atol=1e-6)


def _relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((estimate - exact).norm() / exact.norm())


def test_mc_statistics_converge_to_exact():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4))
    inputs = torch.randn(16, 3)
    _, exact = _factors_after_one_step(model, inputs, "categorical", "exact")
    exact_G = exact[0][1]
    opt = KFAC(
        model, lr=0.0, likelihood="categorical", fisher="mc", stat_decay=0.999999, inv_every=10**6
    )

    def closure():
        outputs = model(inputs)
        return outputs.logsumexp(-1).mean(), outputs

    errors = {}
    for step in range(1, 257):  # eps_k = 1 - 1/k: the EMA is the plain mean of all samples
        opt.step(closure)
        if step in (4, 256):
            errors[step] = _relative_error(opt.preconditioner(model[0]).G, exact_G)
    assert errors[256] < 0.1
    assert errors[256] < errors[4]  # shrinks like 1/sqrt(samples) (one draw: no tight ratio)
    torch.testing.assert_close(opt.preconditioner(model[0]).A, exact[0][0])


def test_empirical_statistics_use_per_example_label_gradients():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    inputs, targets = torch.randn(9, 3), torch.randn(9, 2)
    opt = KFAC(model, lr=0.0, likelihood="gaussian", fisher="empirical", stat_decay=0.0)

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    opt.step(closure)
    residual = (model(inputs) - targets).detach()  # per-example d nll / d output of the last layer
    torch.testing.assert_close(opt.preconditioner(model[2]).G, residual.T @ residual / 9)
    assert math.isfinite(float(opt.preconditioner(model[0]).G.sum()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_are_detected_through_the_factor_traces(bad):
    from natgrad.curvature.kronecker import KroneckerFactors, all_finite

    rows = torch.randn(6, 4)
    good = KroneckerFactors(rows.T @ rows, torch.eye(3))
    assert bool(all_finite([good]))
    rows[2, 1] = bad
    assert not bool(all_finite([good, KroneckerFactors(rows.T @ rows, torch.eye(3))]))
