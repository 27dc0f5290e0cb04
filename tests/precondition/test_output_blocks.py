"""Output factors in diagonal blocks (natgrad.precondition.output_blocks): the partition,
the option's checks, and checkpoints that keep how a decomposition was blocked."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natgrad.optim.kfac import KFAC
from natgrad.precondition.output_blocks import block_bounds, left_product, right_product


def test_blocks_are_contiguous_cover_every_output_and_differ_by_at_most_one():
    assert block_bounds(1024, 2) == ((0, 512), (512, 1024))
    assert block_bounds(5, 3) == ((0, 2), (2, 4), (4, 5))
    assert block_bounds(3, 8) == ((0, 1), (1, 2), (2, 3))  # never an empty block
    assert block_bounds(7, 1) == ((0, 7),)


def test_blockwise_products_equal_the_products_with_the_block_diagonal_matrix():
    torch.manual_seed(0)
    bounds = block_bounds(7, 3)
    M = torch.block_diag(*(torch.randn(e - s, e - s) for s, e in bounds))
    X = torch.randn(7, 5)
    torch.testing.assert_close(left_product(M, X, bounds), M @ X)
    torch.testing.assert_close(right_product(X.T, M, bounds), X.T @ M)


@pytest.mark.parametrize("value", ["sometimes", 0, -3, 2.5, True, ""])
def test_a_bad_output_blocks_is_one_value_error_naming_it(value):
    model = nn.Sequential(nn.Linear(4, 6))
    with pytest.raises(ValueError, match="output_blocks must be off, auto or"):
        KFAC(model, lr=0.1, output_blocks=value)


def test_the_command_lines_text_is_a_number_of_outputs():
    model = nn.Sequential(nn.Linear(4, 6))
    optimizer = KFAC(model, lr=0.1, output_blocks="4")
    assert optimizer.layers[0].output_blocks == 2


@pytest.mark.parametrize("inverse", ["cholesky", "eigen"])
def test_a_checkpoint_keeps_the_blocks_its_decomposition_was_computed_with(inverse):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    settings = dict(lr=0.1, damping=0.05, inverse=inverse, output_blocks=4, inv_every=3)

    def closure():
        outputs = model(x)
        return F.cross_entropy(outputs, y), outputs

    optimizer = KFAC(model, **settings)
    for _ in range(2):
        optimizer.step(closure)
    first = optimizer.preconditioners[0]
    assert first.output_bounds == ((0, 3), (3, 6), (6, 9))
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = KFAC(copy.deepcopy(model), **settings)
    resumed.load_state_dict(saved)
    restored = resumed.preconditioners[0]
    assert restored.output_bounds == first.output_bounds
    V = torch.randn(9, 5)
    torch.testing.assert_close(restored.apply(V, 0.2), first.apply(V, 0.2))


def test_the_refresh_cost_counts_g_block_by_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8))
    x, y = torch.randn(16, 4), torch.randint(0, 8, (16,))
    optimizer = KFAC(model, lr=0.1, output_blocks=4)  # 2 blocks of 4 outputs

    def closure():
        outputs = model(x)
        return F.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    assert optimizer.preconditioners[0].refresh_cost() == 5**3 + 8**3 / 2**2


def test_a_number_of_outputs_with_a_kind_that_keeps_g_whole_is_said():
    with pytest.warns(UserWarning, match="does not apply to approximation 'ekfac'"):
        KFAC(nn.Sequential(nn.Linear(4, 6)), lr=0.1, approximation="ekfac", output_blocks=4)
