"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds plain tensors, numbers, strings, lists and dicts only: model and
optimizer state, the scheduler state, the loop position and every RNG state, so a
resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from natgrad.jsonio import replace_atomically


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, say); the previous one is intact."""


def write_atomically(path: Path, payload: Any) -> None:
    """Save ``payload`` to a temporary file beside ``path``, fsync it, then rename over ``path``.

    A failed write (torch wraps the OSError of a full disk in a RuntimeError of its zip
    writer) raises CheckpointWriteError naming the file and the system's reason; the file
    at ``path`` is then the previous checkpoint, untouched.
    """
    try:
        replace_atomically(path, lambda stream: torch.save(payload, stream), binary=True, suffix="")
    except (OSError, RuntimeError) as error:
        system_error = first_os_error(error)
        if system_error is None:
            raise
        reason = system_error.strerror or str(system_error)
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}") from None


def first_os_error(error: BaseException | None) -> OSError | None:
    """The first OSError among ``error`` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "loop", "rng")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, not a natgrad checkpoint, or from another run."""


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`write_atomically` without unpickling objects.

    Raises CheckpointError naming the file when it is empty, truncated, corrupt, holds
    objects that ``weights_only=True`` refuses, or lacks the parts of a natgrad
    checkpoint (model, optimizer, scheduler, loop, rng).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({unreadable_reason(path, error)}); "
            "delete it to start again, or pass another --out"
        ) from None
    missing = [
        key for key in CHECKPOINT_KEYS if not isinstance(payload, dict) or key not in payload
    ]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a natgrad checkpoint (it lacks {', '.join(missing)}); "
            "delete it to start again, or pass another --out"
        )
    return payload


def unreadable_reason(path: Path, error: Exception) -> str:
    """A short reason for a failed load, without torch's advice to unpickle the file."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if "Unsupported global" in str(error):
        return "it holds Python objects, which natgrad checkpoints never do"
    return f"truncated or corrupt: {type(error).__name__}"


def capture_rng_state() -> dict:
    """Every RNG state a run draws from: torch (CPU and CUDA), NumPy and Python's random."""
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
