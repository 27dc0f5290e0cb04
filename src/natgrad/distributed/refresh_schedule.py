"""When a refreshed decomposition is computed and when it is swapped in.

K-FAC refreshes its inverses every ``inv_every`` steps. Synchronously, the refresh
sits on the critical path of that step. The asynchronous inverter (Ba, Grosse &
Martens 2017) instead takes a snapshot of the running factors, computes the
decompositions on a background thread while training goes on with the previous ones,
and installs the new ones exactly ``staleness`` steps after they were requested,
waiting for the thread if it is late. Installing at a fixed step, not "whenever the
thread is done", keeps the run deterministic: the same inverses are used at the same
steps whatever the timing, and with ``staleness = 0`` the result is bit-for-bit the
synchronous one. A layer without any decomposition yet is always refreshed at once.

Nothing here knows about layers or ranks: jobs are preconditioners keyed by an index.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from torch import Tensor

from natgrad.precondition.base import DECOMPOSITION_PREFIX

Decompositions = dict[int, dict[str, Tensor]]


def snapshot(preconditioner):
    """A copy of ``preconditioner`` whose running factors are frozen copies (no decomposition),
    so it can be decomposed while the original keeps averaging in place."""
    frozen = copy.copy(preconditioner)
    state = preconditioner.state_dict()
    frozen.load_state_dict(
        {k: v.clone() for k, v in state.items() if not k.startswith(DECOMPOSITION_PREFIX)}
    )
    return frozen


def decompose_all(jobs: Mapping[int, object], gamma: float) -> Decompositions:
    """compute_decomposition(gamma) of every job, by index."""
    return {index: job.compute_decomposition(gamma) for index, job in jobs.items()}


@dataclass
class _Request:
    install_step: int
    result: Future


class RefreshSchedule:
    """Decompositions computed now (``staleness=None``) or on a background thread.

    ``submit(step, jobs, gamma)`` starts the work requested at ``step``;
    ``due(step)`` returns what is to be installed at ``step`` (waiting if needed).
    With a background thread, the requests of one step run in order, one at a time.
    """

    def __init__(self, staleness: int | None = None) -> None:
        if staleness is not None and (
            isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0
        ):
            raise ValueError(f"staleness must be None or an integer >= 0, got {staleness!r}")
        self.staleness = staleness
        self._requests: list[_Request] = []
        self._executor: ThreadPoolExecutor | None = None

    @property
    def background(self) -> bool:
        return self.staleness is not None

    @property
    def pending(self) -> int:
        """Requests submitted and not yet returned by :meth:`due`."""
        return len(self._requests)

    def install_step(self, step: int) -> int:
        """The step at which a refresh requested at ``step`` is installed."""
        return step if self.staleness is None else step + self.staleness

    def submit(self, step: int, jobs: Mapping[int, object], gamma: float) -> None:
        """Start decomposing ``jobs`` (preconditioners by index) for damping ``gamma``."""
        if not jobs:
            return
        if not self.background:
            done: Future = Future()
            done.set_result(decompose_all(jobs, gamma))  # nothing moves before due(step)
            self._requests.append(_Request(step, done))
            return
        frozen = {index: snapshot(job) for index, job in jobs.items()}
        future = self._worker().submit(decompose_all, frozen, gamma)
        self._requests.append(_Request(self.install_step(step), future))

    def due(self, step: int) -> Decompositions:
        """The decompositions to install at ``step``, later requests overriding earlier ones."""
        results: Decompositions = {}
        while self._requests and self._requests[0].install_step <= step:
            results.update(self._requests.pop(0).result.result())
        return results

    def close(self) -> None:
        """Drop unfinished requests and stop the thread."""
        self._requests.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfac-inverse")
        return self._executor


__all__ = ["RefreshSchedule", "snapshot", "decompose_all", "Decompositions"]
