"""The eigenbasis kinds' own state: EKFAC's scale across basis refreshes, eigen-Adam's
moments with bias correction, and how K-FAC's options select and check them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natgrad.curvature.kronecker import ExamplePieces, KroneckerFactors
from natgrad.optim.kfac import KFAC
from natgrad.precondition.eigen_adam import EigenAdamPreconditioner
from natgrad.precondition.ekfac import EKFACPreconditioner


def _spd(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3 * n, generator=torch.Generator().manual_seed(seed))
    return x @ x.T / (3 * n)


def _pieces(seed: int, n: int = 7, positions: int = 3) -> ExamplePieces:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, positions, 4, generator=generator)
    g = [torch.randn(n, positions, 3, generator=generator) for _ in range(2)]
    return ExamplePieces(a, g, n)


def _eigh64(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigh(matrix.double())[1]


def test_ekfac_scale_averages_projected_per_example_squares_from_kfac_eigenvalues_per_basis():
    kind = EKFACPreconditioner()
    A, G = _spd(4, 0), _spd(3, 1)
    kind.update_factors(KroneckerFactors(A, G, _pieces(2)), decay=0.0)
    assert kind.scale is None  # no basis yet
    kind.refresh(0.1)
    d = kind.decomposition
    torch.testing.assert_close(kind.scale, torch.outer(d["G_eigvals"], d["A_eigvals"]))
    batches = [_pieces(3), _pieces(4)]
    for pieces in batches:
        kind.update_factors(KroneckerFactors(A, G, pieces), decay=0.8)
    U_A, U_G = d["A_eigvecs"].double(), d["G_eigvecs"].double()

    def moment(p: ExamplePieces) -> torch.Tensor:
        total = 0.0
        for g in p.g:  # sum over backpropagated columns of (U_G^T G_nk U_A)^2, mean over n
            grads = torch.einsum("nro,nri->noi", g.double(), p.a.double())
            total = total + ((U_G.T @ grads @ U_A) ** 2).mean(dim=0)
        return total

    # S starts at K-FAC's eigenvalues d_G d_A^T and averages the batches in with decay 0.8
    kfac = torch.outer(d["G_eigvals"], d["A_eigvals"]).double()
    expected = 0.8 * (0.8 * kfac + 0.2 * moment(batches[0])) + 0.2 * moment(batches[1])
    torch.testing.assert_close(kind.scale.double(), expected, rtol=1e-5, atol=1e-7)
    kind.update_factors(KroneckerFactors(2 * A, G, _pieces(6)), decay=0.0)
    kind.refresh(0.1)  # a new basis: S starts again from its K-FAC eigenvalues
    torch.testing.assert_close(
        kind.scale, torch.outer(kind.decomposition["G_eigvals"], kind.decomposition["A_eigvals"])
    )


def test_eigen_adam_is_bias_corrected_adam_in_the_kronecker_eigenbasis():
    beta1, beta2, gamma = 0.9, 0.95, 0.03
    kind = EigenAdamPreconditioner(beta1, beta2)
    kind.update_factors(KroneckerFactors(_spd(4, 0), _spd(3, 1)), decay=0.0)
    kind.refresh(gamma)
    U_A, U_G = _eigh64(kind.A), _eigh64(kind.G)
    generator = torch.Generator().manual_seed(5)
    grads = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    m = torch.zeros(3, 4, dtype=torch.float64)
    v = torch.zeros(3, 4, dtype=torch.float64)
    for t, V in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * V
        v = beta2 * v + (1 - beta2) * (U_G.T @ V @ U_A) ** 2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        expected = U_G @ ((U_G.T @ m_hat @ U_A) / (v_hat.sqrt() + gamma)) @ U_A.T
        update = kind.apply(kind.observe_gradient(V.float()), gamma)
        torch.testing.assert_close(update.double(), expected, rtol=1e-4, atol=1e-5)


def _model_and_closure(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def closure():
        outputs = model(x)
        return F.cross_entropy(outputs, y), outputs

    return model, closure


def test_eigen_adam_steps_lr_times_its_update_without_the_rules_momentum():
    model, closure = _model_and_closure()
    opt = KFAC(model, lr=0.01, momentum=0.9, approximation="eigen_adam", stat_decay=0.9)
    for _ in range(2):
        before = model[2].weight.detach().clone()
        opt.step(closure)
        kind = opt.preconditioner(model[2])
        # the step just taken: -lr C^{-1} m^ with m^ the bias-corrected first moment
        m_hat = kind.exp_avg / (1 - 0.9**kind.steps)
        expected = -0.01 * kind.apply(m_hat, opt.param_groups[0]["damping"] ** 0.5)
        torch.testing.assert_close(model[2].weight - before, expected[:, :-1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"approximation": "shampoo"}, "approximation must be one of kronecker"),
        ({"approximation": "doubly_factored"}, "approximation must be one of"),
        ({"approximation": "eigen_adam", "adapt_step": True}, "adapt_step must be False"),
        ({"approximation": "eigen_adam", "momentum": 1.0}, "momentum is beta1"),
    ],
)
def test_bad_approximation_options_are_value_errors_naming_them(options, named):
    model, _ = _model_and_closure()
    with pytest.raises(ValueError, match=named):
        KFAC(model, lr=0.1, **options)


def test_a_checkpoint_of_another_approximation_is_refused_by_name():
    model, closure = _model_and_closure()
    opt = KFAC(model, lr=0.1, approximation="ekfac")
    for _ in range(2):
        opt.step(closure)
    other = KFAC(model, lr=0.1)
    before = list(other.preconditioners)
    with pytest.raises(ValueError, match="approximation 'kronecker' does not keep"):
        other.load_state_dict(opt.state_dict())
    assert all(a is b for a, b in zip(before, other.preconditioners, strict=True))


@pytest.mark.parametrize("name", ["ekfac", "kfac_eigen_adam"])
def test_presets_build_the_kind_and_are_registered_optimizers(name):
    from natgrad.optim.optimizer_spec import OPTIMIZERS

    model, closure = _model_and_closure()
    opt = KFAC.from_preset(name, model)
    opt.step(closure)
    kind = {"ekfac": EKFACPreconditioner, "kfac_eigen_adam": EigenAdamPreconditioner}[name]
    assert all(isinstance(p, kind) for p in opt.preconditioners)
    assert OPTIMIZERS.lookup(name).factory is not None


def test_ekfac_refuses_several_ranks_before_any_refresh():
    from types import SimpleNamespace

    model, closure = _model_and_closure()
    opt = KFAC(model, lr=0.1, approximation="ekfac")
    several = SimpleNamespace(distributed=True)
    with pytest.raises(ValueError, match="approximation 'ekfac' runs on one process only"):
        opt.curvature.refresh(several, 0.1, force=True)


@pytest.mark.parametrize("approximation", ["ekfac", "eigen_adam"])
def test_eigen_kinds_with_the_asynchronous_inverter_match_the_synchronous_run(approximation):
    from natgrad.distributed.coordinator import Coordinator

    results = []
    for staleness in (None, 0):
        model, closure = _model_and_closure()
        opt = KFAC(model, lr=0.05, approximation=approximation, inv_every=2, stat_decay=0.9)
        opt.coordinator = Coordinator(staleness=staleness)
        for _ in range(5):
            opt.step(closure)
        opt.coordinator.close()
        results.append([p.detach().clone() for p in model.parameters()])
    for sync, background in zip(*results, strict=True):
        torch.testing.assert_close(sync, background, rtol=0, atol=0)
