"""How tensors move between ranks: bucketed all-reduces and packed broadcasts.

Many small collectives cost one latency each; K-FAC has two factors per layer and an
inverse (or a preconditioned gradient) per layer, so everything here is flattened
into a few large contiguous buffers first (the buckets of DistributedDataParallel).
Symmetric matrices (the factors) travel as their upper triangles, which halves the
bytes. A collective that fails (a rank died, the network went away, the process
group timed out) becomes a :class:`RankFailure` naming the operation, so the
surviving ranks stop with a clear message instead of hanging or tracing back from
deep inside the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket size


class RankFailure(RuntimeError):
    """A collective with the other ranks failed: a rank died or is unreachable."""


@contextmanager
def collective(what: str):
    """Turn a backend error inside the block into a :class:`RankFailure` about ``what``."""
    try:
        yield
    except RankFailure:
        raise
    except (RuntimeError, ConnectionError) as error:  # DistBackendError is a RuntimeError
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise RankFailure(
            f"rank {rank}: {what} across ranks failed (another rank died, is unreachable or "
            f"timed out): {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error


def buckets(tensors: Sequence[Tensor], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` grouped in order into buckets of at most ``bucket_bytes`` (a
    tensor larger than that gets a bucket of its own); one bucket per dtype and device run."""
    groups: list[list[int]] = []
    size = 0
    for index, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        previous = tensors[groups[-1][-1]] if groups else None
        compatible = previous is not None and (
            previous.dtype == tensor.dtype and previous.device == tensor.device
        )
        if not compatible or size + nbytes > bucket_bytes:
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += nbytes
    return groups


def all_reduce_sum(
    tensors: Sequence[Tensor], what: str, bucket_bytes: int = BUCKET_BYTES
) -> list[Tensor]:
    """Elementwise sums over ranks of ``tensors`` (new tensors, same shapes), bucketed.

    Each bucket's all-reduce starts as soon as it is packed, so packing later buckets
    overlaps the transfer of earlier ones; results are views into the reduced buffers.
    """
    groups = buckets(tensors, bucket_bytes)
    flats, works = [], []
    with collective(what):
        for group in groups:
            flats.append(torch.cat([tensors[i].reshape(-1) for i in group]))
            works.append(dist.all_reduce(flats[-1], async_op=True))
        for work in works:
            work.wait()
    results: list[Tensor] = [None] * len(tensors)  # type: ignore[list-item]
    for group, flat in zip(groups, flats, strict=True):
        shapes = [tensors[i].shape for i in group]
        for index, piece in zip(group, unflatten(flat, shapes), strict=True):
            results[index] = piece
    return results


def broadcast_from(tensors: Sequence[Tensor], src: int, what: str) -> list[Tensor]:
    """``tensors`` of rank ``src`` on every rank (one packed broadcast per dtype run)."""
    return broadcast_each([(tensors, src)], what)[0]


def broadcast_each(sends: Sequence[tuple[Sequence[Tensor], int]], what: str) -> list[list[Tensor]]:
    """For each (tensors, src): the tensors of rank ``src`` on every rank, new tensors.

    The other ranks pass tensors of the right shapes and dtypes (their contents are
    ignored, nothing is copied from them). All broadcasts are started before the first
    is waited for, so those of different sources overlap.
    """
    rank = dist.get_rank()
    flats, works = [], []
    with collective(what):
        for tensors, src in sends:
            for group in buckets(tensors, bucket_bytes=2**62) if tensors else []:
                if rank == src:
                    flat = torch.cat([tensors[i].reshape(-1) for i in group])
                else:
                    first = tensors[group[0]]
                    count = sum(tensors[i].numel() for i in group)
                    flat = torch.empty(count, dtype=first.dtype, device=first.device)
                works.append(dist.broadcast(flat, src=src, async_op=True))
                flats.append(flat)
        for work in works:
            work.wait()
    results: list[list[Tensor]] = [[None] * len(tensors) for tensors, _ in sends]  # type: ignore[misc]
    received = iter(flats)
    for send_index, (tensors, _) in enumerate(sends):
        for group in buckets(tensors, bucket_bytes=2**62) if tensors else []:
            flat = next(received)
            shapes = [tensors[i].shape for i in group]
            for index, piece in zip(group, unflatten(flat, shapes), strict=True):
                results[send_index][index] = piece
    return results


def any_rank(flag: bool, what: str, device: str | torch.device = "cpu") -> bool:
    """Whether ``flag`` is set on any rank (one tiny all-reduce; ``flag`` on one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    with collective(what):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(value: Tensor, what: str) -> Tensor:
    """The mean over ranks of a tensor (itself on one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    total = value.detach().float().clone()
    with collective(what):
        dist.all_reduce(total)
    return (total / dist.get_world_size()).to(value.dtype)


def from_rank_zero(value, what: str):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    with collective(what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def unflatten(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Views of ``flat`` with the given shapes, in order."""
    pieces, start = [], 0
    for shape in shapes:
        count = int(torch.Size(shape).numel())
        pieces.append(flat[start : start + count].view(shape))
        start += count
    return pieces


def upper_triangle(matrix: Tensor) -> Tensor:
    """The entries on and above the diagonal of a square matrix, row by row."""
    rows, cols = _triangle_indices(matrix.shape[0], matrix.device)
    return matrix[rows, cols]


def symmetric_from_upper(values: Tensor, size: int) -> Tensor:
    """The symmetric (size x size) matrix whose upper triangle is ``values``."""
    rows, cols = _triangle_indices(size, values.device)
    matrix = values.new_empty(size, size)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


_TRIANGLES: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}


def _triangle_indices(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (size, str(device))
    if key not in _TRIANGLES:
        rows, cols = torch.triu_indices(size, size, device=device)
        _TRIANGLES[key] = (rows, cols)
    return _TRIANGLES[key]


__all__ = [
    "BUCKET_BYTES",
    "RankFailure",
    "collective",
    "buckets",
    "all_reduce_sum",
    "broadcast_from",
    "broadcast_each",
    "any_rank",
    "mean_over_ranks",
    "from_rank_zero",
    "unflatten",
    "upper_triangle",
    "symmetric_from_upper",
]
