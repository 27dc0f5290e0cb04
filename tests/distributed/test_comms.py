"""Packing for the collectives: buckets in order by size and dtype; triangles round-trip."""

from __future__ import annotations

import torch

from natgrad.distributed.comms import buckets, symmetric_from_upper, unflatten, upper_triangle


def test_buckets_keep_order_and_split_by_size_and_dtype():
    tensors = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.int64)]
    assert buckets(tensors, bucket_bytes=80) == [[0, 1], [2], [3]]
    assert buckets(tensors, bucket_bytes=10**6) == [[0, 1, 2], [3]]


def test_symmetric_matrix_round_trips_through_its_upper_triangle():
    rows = torch.randn(7, 4)
    matrix = rows.T @ rows
    packed = upper_triangle(matrix)
    assert packed.shape == (4 * 5 // 2,)
    torch.testing.assert_close(symmetric_from_upper(packed, 4), 0.5 * (matrix + matrix.T))


def test_unflatten_gives_views_in_order():
    flat = torch.arange(10.0)
    a, b = unflatten(flat, [torch.Size([2, 3]), torch.Size([4])])
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]] and b.tolist() == [6, 7, 8, 9]
