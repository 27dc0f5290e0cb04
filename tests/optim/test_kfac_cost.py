"""K-FAC's cost: the profiler phases of its step, and "auto" doubly factoring by cost."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.profiler import record_function

from natgrad.bench.step import OUTSIDE_PHASES, phase_microseconds, profiled_phases
from natgrad.optim.kfac import KFAC, STEP_PHASES
from natgrad.optim.kfac_config import doubly_factored_pays
from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner
from natgrad.precondition.kronecker import KroneckerPreconditioner
from natgrad.precondition.output_blocks import SMALLEST_AUTO_BLOCK, blocks_for_cost
from natgrad.workloads.models import deep_autoencoder, mlp, simple_cnn, vision_transformer


def _tiny_classifier_step(**options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    optimizer = KFAC(model, **options)

    def step() -> None:
        def closure():
            outputs = model(inputs)
            return nn.functional.cross_entropy(outputs, targets), outputs

        optimizer.step(closure)

    return step


def test_every_phase_of_the_adaptive_step_is_a_profiler_region():
    step = _tiny_classifier_step(
        lr=0.1, damping=1.0, adapt_step=True, adapt_damping=True, inv_every=2
    )
    phases = profiled_phases(step, 5, torch.device("cpu"))
    assert set(phases) == {*STEP_PHASES, OUTSIDE_PHASES}
    assert all(value >= 0.0 for value in phases.values())
    assert phases["forward_backward"] > 0.0 and phases["quadratic_model"] > 0.0


def test_the_fixed_step_has_no_quadratic_model_or_damping_phase():
    phases = profiled_phases(_tiny_classifier_step(lr=0.1), 3, torch.device("cpu"))
    assert "quadratic_model" not in phases and "damping" not in phases
    assert {"forward_backward", "inverses", "precondition", "step_rule", "apply"} <= set(phases)


def test_a_nested_phase_is_subtracted_from_the_one_around_it():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(2):
            with record_function("kfac.step_rule"):
                time.sleep(0.02)
                with record_function("kfac.quadratic_model"):
                    time.sleep(0.06)
    phases = phase_microseconds(profiler.events())
    assert 0.03e6 <= phases["step_rule"] < 0.09e6
    assert 0.11e6 <= phases["quadratic_model"] < 0.2e6


# ---------------------------------------------------------------- "auto" by cost


def test_the_cnn_fc_layer_pays_for_three_factors_and_its_convolutions_do_not():
    # fmnist_cnn at batch 256, inverses every 20 steps: fc 3136 (64 x 49) + bias -> 1024
    assert doubly_factored_pays(1024, 3137, (64, 49), rows=256, inv_every=20)
    # conv2: 32 x 25 patches, 64 channels out, 14 x 14 locations per example
    assert not doubly_factored_pays(64, 801, (32, 25), rows=256 * 196, inv_every=20)


def test_a_flattened_one_channel_image_keeps_its_full_factor():
    # 784 -> 256 at batch 128 costs more to precondition than to run, but C = 1 gains nothing
    assert not doubly_factored_pays(256, 785, (1, 784), rows=128, inv_every=20)


def test_a_small_layer_on_a_map_is_cheaper_to_precondition_than_to_run():
    assert not doubly_factored_pays(64, 65, (4, 16), rows=64, inv_every=20)
    assert doubly_factored_pays(8, 1025, (16, 64), rows=1, inv_every=1)


def _first_step(model: nn.Module, inputs: torch.Tensor, **overrides) -> KFAC:
    """The "kfac" preset after one step on ``inputs`` (random labels of 10 classes)."""
    optimizer = KFAC.from_preset("kfac", model, **overrides)
    targets = torch.randint(0, 10, (inputs.shape[0],))

    def closure():
        outputs = model(inputs)
        return nn.functional.cross_entropy(outputs, targets), outputs

    optimizer.step(closure)
    return optimizer


def _first_step_kinds(model: nn.Module, inputs: torch.Tensor) -> list[type]:
    return [type(p) for p in _first_step(model, inputs).preconditioners]


def test_auto_doubly_factors_only_the_cnn_fc_layer():
    torch.manual_seed(0)
    kinds = _first_step_kinds(simple_cnn(), torch.randn(16, 1, 28, 28))
    assert kinds == [
        KroneckerPreconditioner,  # conv1
        KroneckerPreconditioner,  # conv2
        DoublyFactoredPreconditioner,  # fc 3136 -> 1024
        KroneckerPreconditioner,  # fc 1024 -> 10 (not fed by a map)
    ]


def test_auto_keeps_a_small_mlp_kronecker():
    torch.manual_seed(0)
    model = mlp([784, 256, 256, 10])  # nn.Flatten of (N, 1, 28, 28) images first
    kinds = _first_step_kinds(model, torch.randn(128, 1, 28, 28))
    assert kinds == [KroneckerPreconditioner] * 3


# ---------------------------------------------------------------- output blocks by cost


def test_blocks_for_cost_splits_only_an_output_side_that_costs_more_than_the_layer():
    # fmnist_cnn's fc at batch 256, three-factored (C + L = 64 + 49): 3 n - 113 = 655
    assert blocks_for_cost(1024, 113, rows=256) == 2
    assert blocks_for_cost(64, 801, rows=256 * 196) == 1  # conv2
    assert blocks_for_cost(1000, 785, rows=1000) == 1  # the autoencoder's widest layers
    assert blocks_for_cost(256, 65, rows=128 * 16) == 1  # a ViT MLP layer (16 tokens)
    assert blocks_for_cost(1024, 113, rows=16) == 1024 // SMALLEST_AUTO_BLOCK  # a tiny batch


def test_the_kfac_preset_blocks_only_the_cnn_fc_output_factor():
    torch.manual_seed(0)
    optimizer = _first_step(simple_cnn(), torch.randn(256, 1, 28, 28))
    assert [layer.output_blocks for layer in optimizer.layers] == [1, 1, 2, 1]
    fc = optimizer.preconditioners[2]
    assert int(fc.decomposition["G_blocks"]) == 2 and fc.output_bounds == ((0, 512), (512, 1024))
    G_inv = fc.decomposition["G_inv"]
    assert not G_inv[:512, 512:].any() and G_inv[:512, :512].abs().sum() > 0
    assert "G_blocks" not in optimizer.preconditioners[0].decomposition


def test_output_blocks_off_keeps_every_factor_whole():
    torch.manual_seed(0)
    optimizer = _first_step(simple_cnn(), torch.randn(64, 1, 28, 28), output_blocks="off")
    assert [layer.output_blocks for layer in optimizer.layers] == [1, 1, 1, 1]
    assert optimizer.preconditioners[2].output_bounds is None


def test_a_number_of_outputs_per_block_applies_to_every_layer():
    torch.manual_seed(0)
    model = mlp([784, 300, 10])
    optimizer = _first_step(model, torch.randn(32, 1, 28, 28), output_blocks=128)
    assert [layer.output_blocks for layer in optimizer.layers] == [3, 1]  # 100 each; 10


def test_auto_blocks_no_layer_of_the_vit_or_the_autoencoder():
    torch.manual_seed(0)
    vit = _first_step(vision_transformer(), torch.randn(128, 1, 28, 28))
    assert {layer.output_blocks for layer in vit.layers} == {1}
    autoencoder = deep_autoencoder()
    optimizer = KFAC.from_preset("kfac", autoencoder, likelihood="bernoulli")
    inputs = torch.rand(1000, 784)

    def closure():
        outputs = autoencoder(inputs)
        loss = nn.functional.binary_cross_entropy_with_logits(outputs, inputs)
        return loss, outputs

    optimizer.step(closure)
    assert {layer.output_blocks for layer in optimizer.layers} == {1}
