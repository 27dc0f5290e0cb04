"""Checks of benchmark options, shared by every ``natgrad bench`` benchmark.

Each check returns the value or raises ValueError naming the option, what is allowed
and what was given; ``natgrad bench`` prints that as one line with exit status 2, before
any data is loaded or any tensor allocated. :func:`check_fits_in_memory` refuses a size
whose estimated memory exceeds what the device has free.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def positive_int(option: str, value: int) -> int:
    """``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be an integer >= 1, got {value!r}")
    return value


def non_negative_int(option: str, value: int) -> int:
    """``value`` if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option} must be an integer >= 0, got {value!r}")
    return value


def finite_non_negative_float(option: str, value: float) -> float:
    """``value`` if it is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{option} must be a finite number >= 0, got {value!r}")
    return float(value)


def finite_positive_float(option: str, value: float) -> float:
    """``value`` if it is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a finite number > 0, got {value!r}")
    return float(value)


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes free on ``device``: the CUDA allocator's view, or the host's MemAvailable
    (Linux); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits_in_memory(what: str, needed_bytes: float, device: torch.device) -> None:
    """ValueError with the estimate when ``needed_bytes`` exceed the free memory of ``device``."""
    free = free_memory_bytes(device)
    if free is not None and needed_bytes > free:
        raise ValueError(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB, more than the "
            f"{free / 2**30:.1f} GiB free on {device}; choose smaller sizes"
        )


__all__ = [
    "positive_int",
    "non_negative_int",
    "finite_non_negative_float",
    "finite_positive_float",
    "free_memory_bytes",
    "check_fits_in_memory",
]
