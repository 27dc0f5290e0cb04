"""Starting and joining ranks: torchrun's own machinery, no home-made launcher.

``launch(nproc, argv)`` runs ``python -m natgrad.cli ARGV`` on ``nproc`` local ranks
through ``torch.distributed.run`` (standalone rendezvous on a free port); each of them
finds the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables torchrun sets and calls
:func:`join_process_group`. The same variables come from a user's own ``torchrun``
on several machines (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0
LAUNCHER_PID_VARIABLE = "NATGRAD_LAUNCHER_PID"
LAUNCHER_POLL_S = 0.5
INTERRUPTED_STATUS = 130  # a rank's status after a signal stopped its run


def launched_by_torchrun() -> bool:
    """Whether this process is a rank started by torchrun (or another launcher that sets
    RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def environment_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def environment_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def rank_device(device: str) -> str:
    """This rank's device: "cuda" becomes cuda:LOCAL_RANK (one GPU per rank)."""
    if device == "cuda" and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def join_process_group(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Initialize the default process group from torchrun's environment: NCCL for CUDA
    devices, gloo otherwise; a collective waiting longer than ``timeout_s`` fails."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def stop_when_launcher_dies(poll_s: float = LAUNCHER_POLL_S) -> None:
    """Send this rank SIGTERM (a checkpoint, then exit) once the process that started it
    is gone, so that no orphaned rank goes on writing a run folder.

    A rank started by :func:`launch` knows its launcher's pid from the environment; one
    started by another launcher watches the parent it was born with. A watching thread
    compares ``os.getppid()`` with it every ``poll_s`` seconds.
    """
    launcher = int(os.environ.get(LAUNCHER_PID_VARIABLE, os.getppid()))
    if os.getppid() != launcher:  # the launcher died before this rank got here
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="natgrad-launcher-watch", daemon=True).start()


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(status: int) -> NoReturn:
    """End this rank's process with ``status`` now, without the interpreter's
    finalization: a gloo worker thread may still be releasing the last collective's
    tensors, and one that needs the GIL while Python finalizes aborts the process
    ("terminate called without an active exception") after the run has finished and
    been written. Output streams and logging are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``natgrad ARGV`` on ``nproc`` local ranks with torchrun; the exit status.

    Ctrl-C (SIGINT) or SIGTERM reaches the ranks, which checkpoint and stop; the launcher
    waits for them and exits with 128 + the signal number (130 for Ctrl-C), printing no
    traceback. torchrun's own log lines are kept to errors.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()
    parser.allow_abbrev = False  # natgrad's --nproc is not torchrun's --nproc-per-node
    arguments = parser.parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "natgrad.cli"]
        + list(argv)
    )
    os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    try:
        run(arguments)
    except SignalException as stopped:  # the ranks got the signal too and have stopped
        return 128 + int(stopped.sigval)
    except ChildFailedError as failure:
        codes = [f.exitcode for _, f in sorted(failure.failures.items())]
        if all(code == INTERRUPTED_STATUS for code in codes):  # interrupted, said by rank 0
            return INTERRUPTED_STATUS
        ranks = ", ".join(str(rank) for rank in sorted(failure.failures))
        print(f"natgrad: rank(s) {ranks} of {nproc} failed (exit status "
              f"{', '.join(map(str, codes))})")  # fmt: skip
        return 1
    return 0


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "launched_by_torchrun",
    "environment_world_size",
    "environment_rank",
    "rank_device",
    "join_process_group",
    "leave_process_group",
    "exit_rank",
    "stop_when_launcher_dies",
    "launch",
]
