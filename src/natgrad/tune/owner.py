"""Which process runs a trial, and whether that process still exists.

A claimed trial records its owner: host name, process id and (on Linux) the process
start time from ``/proc/PID/stat``, so a reused process id is not mistaken for the
owner. On the same host a rerun sees at once that the owner is gone (killed, crashed,
machine rebooted) and re-queues the trial's point; trials owned by another host are
left to the heartbeat timeout.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path


def process_status(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of process ``pid`` on Linux;
    None where /proc is not available or the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 and 22 of proc_pid_stat(5)


def process_start_ticks(pid: int) -> int | None:
    status = process_status(pid)
    return status[1] if status else None


@lru_cache(maxsize=1)
def host_name() -> str:
    return socket.gethostname()


def current_owner() -> dict:
    """This process as a trial owner: {"host", "pid", "started"}."""
    pid = os.getpid()
    return {"host": host_name(), "pid": pid, "started": process_start_ticks(pid)}


def owner_is_gone(owner: dict) -> bool:
    """True when ``owner`` ran on this host and its process no longer exists.

    False when it still runs, or when it ran on another host (this process cannot tell).
    """
    if owner.get("host") != host_name() or not isinstance(owner.get("pid"), int):
        return False
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    status = process_status(pid)
    if status is None:
        return False
    state, started = status
    # A zombie has exited (its parent has not reaped it yet); another start time means
    # the process id was reused by a new process.
    return state == "Z" or owner.get("started") not in (None, started)
