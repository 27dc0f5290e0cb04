"""The stepping harness that experiments and benchmarks share: runs advanced one step at a
time, so several can be interleaved round-robin and see the same machine load.

A :class:`CurveRun` is a ``natgrad train`` run (same model, optimizer, schedule, batches
and seed) without evaluation, so its recorded times are pure training time; a
:class:`Curve` holds its per-step mini-batch losses and cumulative wall time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from natgrad.train.config import RunConfig
from natgrad.train.session import BatchSampler, DivergenceRule, TrainingSession

SMOOTHING = 10
DIVERGED_LOSS = 1e4  # per-example nats; the autoencoder starts near 550
DIVERGENCE = DivergenceRule(threshold=DIVERGED_LOSS)


@dataclass
class Curve:
    """One training run: per-step mini-batch loss and cumulative training wall time."""

    optimizer: str
    hyperparameters: dict
    batch_size: int
    losses: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    status: str = "completed"

    def record(self, loss: float, seconds: float) -> None:
        """Append one step's loss and its time."""
        previous = self.wall_times[-1] if self.wall_times else 0.0
        self.losses.append(loss)
        self.wall_times.append(previous + seconds)

    def smoothed(self, window: int = SMOOTHING) -> list[float]:
        """Trailing mean of the last ``window`` mini-batch losses at each step."""
        result, total = [], 0.0
        for index, value in enumerate(self.losses):
            total += value
            if index >= window:
                total -= self.losses[index - window]
            result.append(total / min(index + 1, window))
        return result

    def final_loss(self) -> float:
        """Smoothed loss at the last step (infinite for a diverged or empty run)."""
        if self.status != "completed" or not self.losses:
            return math.inf
        return self.smoothed()[-1]

    def first_reaching(self, target: float) -> int | None:
        """Index of the first step whose smoothed loss is <= ``target`` (None if never)."""
        return next((i for i, value in enumerate(self.smoothed()) if value <= target), None)

    def steps_to(self, target: float) -> int | None:
        index = self.first_reaching(target)
        return None if index is None else index + 1

    def time_to(self, target: float) -> float | None:
        index = self.first_reaching(target)
        return None if index is None else self.wall_times[index]


class SteppedRun:
    """A training run advanced one step at a time, so that several can be interleaved.

    It owns the data, the runner's batch sampler and the curve; a subclass trains on one
    batch in :meth:`train_on` and returns the loss (or replaces :meth:`take_step`, as
    :class:`CurveRun` does with a training session). The recorded time of a step is
    :meth:`take_step`: the batch lookup plus the training.
    """

    def __init__(
        self, data, curve: Curve, batch_size: int, steps: int, seed: int, device: str = "cpu"
    ) -> None:
        self.data, self.curve, self.steps = data, curve, steps
        self.sampler = BatchSampler(len(data.train), batch_size, seed, device)

    @property
    def done(self) -> bool:
        return self.curve.status != "completed" or len(self.curve.losses) >= self.steps

    def train_on(self, inputs, targets) -> float:
        raise NotImplementedError

    def take_step(self, step: int) -> float:
        """Train on the sampler's batch of ``step``; its loss."""
        indices = self.sampler.indices(step)
        return self.train_on(self.data.train.inputs[indices], self.data.train.targets[indices])

    def diverged(self, loss: float) -> bool:
        """Whether ``loss`` ends the run (:data:`DIVERGENCE`; a session run uses its own)."""
        return DIVERGENCE.diverged(loss)

    def advance(self) -> None:
        """One training step on the sampler's next batch; records its loss and time, or
        marks the curve diverged (that step not kept)."""
        started = time.perf_counter()
        loss = self.take_step(len(self.curve.losses))
        seconds = time.perf_counter() - started
        if self.diverged(loss):
            self.curve.status = "diverged"
        else:
            self.curve.record(loss, seconds)

    def run_to_end(self) -> Curve:
        """Train for ``steps`` steps (or until the run diverges); the per-step curve."""
        return run_interleaved([self])[0]


class CurveRun(SteppedRun):
    """A natgrad training run, stepped so that several runs can be interleaved.

    The model, optimizer, schedule and batches are those of ``natgrad train`` with the
    same seed; evaluation is left out, so the recorded times are pure training time.
    On a CUDA ``device`` the loss read back after each step ends the step's time, so
    the recorded times include the device's work.
    """

    def __init__(
        self,
        workload_name: str,
        optimizer: str,
        hyperparameters: dict,
        batch_size: int,
        steps: int,
        seed: int = 0,
        data_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        resolved = RunConfig(
            workload_name,
            optimizer,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            hyperparameters=dict(hyperparameters),
            data_dir=data_dir,
            evaluate_test=False,
        ).resolved()
        self.session = TrainingSession(resolved, device, DIVERGENCE)
        self.data, self.sampler, self.steps = self.session.data, self.session.sampler, steps
        self.curve = Curve(optimizer, dict(hyperparameters), batch_size)
        self.workload, self.model = self.session.workload, self.session.module
        self.spec, self.optimizer = self.session.spec, self.session.optimizer
        self.scheduler = self.session.scheduler

    def take_step(self, step: int) -> float:
        """The runner's update on the batch of ``step``, then the schedule's step."""
        return float(self.session.step(step))

    def diverged(self, loss: float) -> bool:
        return self.session.diverged(loss)


def run_interleaved(
    runs: list[SteppedRun],
    time_limit: float | None = None,
    target: float | None = None,
) -> list[Curve]:
    """Step every unfinished run once per round, so that all of them see the same load.

    A run stops after its ``steps``, at divergence, after ``time_limit`` seconds of its
    own training time, or once its smoothed loss reaches ``target``.
    """

    def finished(run: SteppedRun) -> bool:
        curve = run.curve
        if run.done:
            return True
        if time_limit is not None and curve.wall_times and curve.wall_times[-1] >= time_limit:
            return True
        return target is not None and bool(curve.losses) and curve.smoothed()[-1] <= target

    active = list(runs)
    while active:
        for run in active:
            run.advance()
        active = [run for run in active if not finished(run)]
    return [run.curve for run in runs]


__all__ = [
    "SMOOTHING",
    "DIVERGED_LOSS",
    "DIVERGENCE",
    "Curve",
    "SteppedRun",
    "CurveRun",
    "run_interleaved",
]
