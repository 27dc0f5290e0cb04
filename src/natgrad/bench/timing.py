"""Timing helpers shared by the benchmarks: device synchronization, alternating
contenders, medians and means, peak memory.

On a CUDA device a kernel launch returns before the work is done, so every timed
region is closed by ``torch.cuda.synchronize``; on the CPU timing is plain wall time.
Contenders are run alternately (one call each per round) so that all of them see the
same machine load; compare them by ratios measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def default_device() -> str:
    """ "cuda" when a CUDA device is present, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> torch.device:
    """The torch device ``name``, or ValueError saying what is available."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; use cpu or cuda") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds that ``function()`` takes, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def alternating_times(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Per-call seconds of every contender, called alternately ``repeats`` times after
    ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for function in contenders.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, function in contenders.items():
            times[name].append(timed(function, device))
    return times


def summary(samples: list[float]) -> dict[str, float]:
    """Median, mean, min and count of a list of seconds."""
    return {
        "median_s": statistics.median(samples),
        "mean_s": statistics.fmean(samples),
        "min_s": min(samples),
        "count": len(samples),
    }


def peak_rss_mib() -> float:
    """VmHWM of /proc/self/status: this process's peak resident set size (MiB, Linux).

    Not getrusage's ru_maxrss, which a child inherits from the parent it was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_device_mib(device: torch.device | str) -> float | None:
    """Peak memory allocated on a CUDA device since the last reset (MiB); None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


__all__ = [
    "default_device",
    "check_device",
    "synchronize",
    "timed",
    "alternating_times",
    "summary",
    "peak_rss_mib",
    "peak_device_mib",
]
