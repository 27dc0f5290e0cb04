"""The training runner: loop, evaluation, metrics JSONL, checkpoint/resume, divergence.

A run folder holds config.json, metrics.jsonl (one object per evaluation), summary.json
(status completed | diverged | interrupted, final metrics) and checkpoints/. Batches are a
pure function of (seed, step), and checkpoints carry the model, optimizer, scheduler and
RNG states, so a run resumed from a checkpoint ends exactly as the uninterrupted run.

Under torchrun (``natgrad train --nproc N``), each of the N ranks steps on rows
[r m / N, (r + 1) m / N) of the same batch: K-FAC averages gradients and factors
itself (natgrad.distributed), other optimizers step a DistributedDataParallel model.
Rank 0 alone evaluates and writes the run folder; checkpoints hold the plain model,
so a run resumes with any number of ranks.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from natgrad.distributed.comms import any_rank, from_rank_zero
from natgrad.distributed.coordinator import World
from natgrad.distributed.launch import rank_device
from natgrad.folders import folder_kind
from natgrad.jsonio import dumps as json_dumps
from natgrad.jsonio import write_json, write_text_atomically
from natgrad.optim.optimizer_spec import OptimizerSpec, get_optimizer_spec
from natgrad.train.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    write_atomically,
)
from natgrad.train.config import RunConfig
from natgrad.train.lock import LOCK_NAME, RunFolderLock, RunFolderLocked, check_unlocked
from natgrad.train.progress import Progress
from natgrad.train.session import (  # noqa: F401 - the runner's names before the session
    _DATA_CACHE,
    BatchSampler,
    TrainingSession,
    build_components,
    evaluate,
    load_workload_data,
    shard,
    train_step,
)
from natgrad.workloads import get_workload

CHECKPOINT_NAME = "checkpoints/last.pt"
LOSS_READBACK_EVERY = 10  # steps between host reads of the loss on an accelerator


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked (it holds a run, or its config differs)."""


class RunWriteError(RuntimeError):
    """A run could not write its folder (a full disk, say) and stopped; its summary says
    so and its last checkpoint is intact."""


@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    status: str
    step: int
    final: dict
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    diverged_at_step: int | None = None


@dataclass
class LoopState:
    """The position of the loop and the running training-loss accumulator."""

    step: int = 0
    wall_time: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0


class SignalFlag:
    """Set by SIGINT/SIGTERM while a run is in progress (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received = signum


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a folder that holds a run unless resuming or overwriting.

    ``overwrite`` removes only a run's own files, and only from a folder that holds
    nothing else: pointing ``--out`` at a folder of other work never deletes it.
    Called with the folder's lock held (:func:`lock_run_folder`).
    """
    check_run_folder_contents(out_dir, None, resume, overwrite)
    if overwrite and folder_entries(out_dir):
        remove_run_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def folder_entries(out_dir: Path) -> list[Path]:
    """What ``out_dir`` holds besides its lock file (nothing when it does not exist)."""
    if not out_dir.is_dir():
        return []
    return [entry for entry in out_dir.iterdir() if entry.name != LOCK_NAME]


def check_run_folder(out_dir: Path, resolved: dict | None, resume: bool, overwrite: bool) -> None:
    """RunFolderError if ``out_dir`` cannot be used as asked (touches nothing): another
    process runs in it, or it holds files; with a ``resolved`` config, a run to resume
    must have the same settings."""
    check_run_folder_contents(out_dir, resolved, resume, overwrite)
    try:
        check_unlocked(out_dir)
    except RunFolderLocked as locked:
        raise RunFolderError(str(locked)) from None


def lock_run_folder(out_dir: Path) -> RunFolderLock:
    """Create ``out_dir`` if needed and take its lock; RunFolderError naming the pid and
    host of the process that holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(out_dir)
    try:
        lock.acquire()
    except RunFolderLocked as locked:
        raise RunFolderError(str(locked)) from None
    return lock


def check_run_folder_contents(
    out_dir: Path, resolved: dict | None, resume: bool, overwrite: bool
) -> None:
    """RunFolderError if the files in ``out_dir`` forbid the use asked (touches nothing)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: choose one")
    if folder_kind(out_dir) == "study":
        raise RunFolderError(
            f"{out_dir} is a study folder of `natgrad tune` or `natgrad compare`, not a "
            "training run; pass another --out"
        )
    if not folder_entries(out_dir):
        return
    if overwrite:
        check_only_run_files(out_dir)
    elif not resume:
        raise RunFolderError(
            f"{out_dir} already holds files; pass --resume to continue that run "
            "or --overwrite to replace it"
        )
    elif resolved is not None and (out_dir / "config.json").exists():
        check_same_config(out_dir, resolved)


def check_only_run_files(out_dir: Path) -> None:
    """RunFolderError if ``out_dir`` holds anything that is not part of a natgrad run."""
    entries = folder_entries(out_dir)
    foreign = sorted(p.name for p in entries if p.name not in RUN_FILES and p.suffix != ".tmp")
    if foreign:
        raise RunFolderError(
            f"{out_dir} holds files that are not part of a natgrad run "
            f"({', '.join(foreign[:5])}); --overwrite only replaces a run folder"
        )


def remove_run_files(out_dir: Path) -> None:
    """Delete a previous run from ``out_dir``; RunFolderError if anything else is there."""
    check_only_run_files(out_dir)
    for entry in folder_entries(out_dir):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def differing_settings(stored: dict, resolved: dict) -> list[str]:
    """Names of the settings that differ (the number of steps may grow on resume)."""
    return sorted(
        key
        for key in set(stored) | set(resolved)
        if key != "steps" and stored.get(key) != resolved.get(key)
    )


def check_same_config(out_dir: Path, resolved: dict) -> None:
    """On resume, the stored config must match (the number of steps may grow)."""
    path = out_dir / "config.json"
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise RunFolderError(f"cannot resume {out_dir}: {path} is not valid JSON") from None
    differing = differing_settings(stored, json.loads(json_dumps(resolved)))
    if differing:
        raise RunFolderError(
            f"cannot resume {out_dir}: settings differ from the stored run: {', '.join(differing)}"
        )


def read_history(path: Path, up_to_step: int) -> list[dict]:
    """Metrics records up to ``up_to_step`` (later ones were written after the checkpoint)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [record for record in records if record["step"] <= up_to_step]


def check_optimizer_groups(path: Path, saved: dict, fresh: dict) -> None:
    """CheckpointError unless the saved param_groups name the same settings as ours."""
    saved_groups, fresh_groups = saved.get("param_groups"), fresh.get("param_groups")
    if saved_groups is None or fresh_groups is None:
        return
    saved_keys = [set(group) for group in saved_groups]
    fresh_keys = [set(group) for group in fresh_groups]
    if saved_keys != fresh_keys:
        raise CheckpointError(
            f"checkpoint {path} holds the state of another optimizer (its settings "
            f"{sorted(set().union(*saved_keys) - set().union(*fresh_keys)) or 'differ'}); "
            "it belongs to another run"
        )


class Run:
    """One training run: owns the model, optimizer, data and the run folder."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path | None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = False,
    ) -> None:
        self.resolved = config.resolved()
        self.world = World.from_process_group()
        self.spec = get_optimizer_spec(self.resolved["optimizer"])
        check_shardable(self.resolved, self.spec, self.world.size)
        self.workload = get_workload(config.workload)
        self.device = rank_device(config.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writes = self.out_dir is not None and self.world.rank == 0
        self.show_progress = progress and self.world.rank == 0
        self.session = TrainingSession(
            self.resolved, self.device, world=self.world, workload=self.workload
        )
        self.data, self.module, self.model = (
            self.session.data,
            self.session.module,
            self.session.model,
        )
        self.optimizer, self.scheduler = self.session.optimizer, self.session.scheduler
        self.state = LoopState()
        self.history: list[dict] = []
        self.lock: RunFolderLock | None = None
        self.checkpoint_step: int | None = None  # the step of the checkpoint on disk
        # Losses stay on the device between read-backs: every step on the CPU (where a
        # read costs nothing), every LOSS_READBACK_EVERY steps and at evaluations,
        # checkpoints and signals on an accelerator, so steps do not wait for the host.
        self._pending_losses: list[Tensor] = []
        cpu = torch.device(self.device).type == "cpu"
        self.readback_every = 1 if cpu else LOSS_READBACK_EVERY
        if self.out_dir is not None:
            self._open_folder_on_every_rank(resume, overwrite)

    # -- run folder -------------------------------------------------------------------
    def _open_folder_on_every_rank(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 opens the folder (checks, overwrite, restore); the others then restore the
        same checkpoint, or stop with rank 0's error."""
        if self.world.size == 1:
            self._open_folder(resume, overwrite)
            return
        error: Exception | None = None
        if self.world.rank == 0:
            try:
                self._open_folder(resume, overwrite)
            except (RunFolderError, ValueError, OSError) as caught:
                error = caught
        message = from_rank_zero(None if error is None else str(error), "opening the run folder")
        if error is not None:
            raise error
        if message is not None:
            raise RunFolderError(f"rank 0 could not open the run folder: {message}")
        checkpoint = self.out_dir / CHECKPOINT_NAME
        if self.world.rank != 0 and resume and checkpoint.exists():
            self._restore(checkpoint, load_checkpoint(checkpoint))

    def _open_folder(self, resume: bool, overwrite: bool) -> None:
        """Lock the folder first, then check everything (settings, checkpoint) before any
        other file is changed; the lock is held until :meth:`run` returns."""
        check_run_folder(self.out_dir, None, resume, overwrite)
        self.lock = lock_run_folder(self.out_dir)
        try:
            self._prepare_locked_folder(resume, overwrite)
        except BaseException:
            self.release_folder()
            raise

    def release_folder(self) -> None:
        """Drop the run folder's lock (another process may then resume the run)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _prepare_locked_folder(self, resume: bool, overwrite: bool) -> None:
        prepare_run_folder(self.out_dir, resume, overwrite)
        checkpoint = self.out_dir / CHECKPOINT_NAME
        if resume and (self.out_dir / "config.json").exists():
            check_same_config(self.out_dir, self.resolved)
        if resume and checkpoint.exists():
            self._restore(checkpoint, load_checkpoint(checkpoint))
            self.checkpoint_step = self.state.step
        else:
            (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        # A summary describes a finished run: none while this one is under way.
        (self.out_dir / "summary.json").unlink(missing_ok=True)
        write_json(self.out_dir / "config.json", self.resolved)
        self._rewrite_metrics()

    def _rewrite_metrics(self) -> None:
        lines = "".join(json_dumps(record) + "\n" for record in self.history)
        write_text_atomically(self.out_dir / "metrics.jsonl", lines)

    def _restore(self, path: Path, checkpoint: dict) -> None:
        """Load a checkpoint into this run; CheckpointError if it belongs to another run."""
        settings = checkpoint.get("settings")
        if settings is not None:
            differing = differing_settings(settings, json.loads(json_dumps(self.resolved)))
            if differing:
                raise CheckpointError(
                    f"checkpoint {path} belongs to another run (its {', '.join(differing)} "
                    "differ from this run's); it cannot be resumed here"
                )
        else:  # written before checkpoints recorded their settings: check its optimizer
            check_optimizer_groups(path, checkpoint["optimizer"], self.optimizer.state_dict())
        try:
            self.module.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.state = LoopState(**checkpoint["loop"])
            restore_rng_state(checkpoint["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(
                f"checkpoint {path} does not fit this run's model or optimizer "
                f"({type(error).__name__}: {first_line[:200]}); it belongs to another run"
            ) from None
        self.history = read_history(self.out_dir / "metrics.jsonl", self.state.step)

    def save_checkpoint(self) -> None:
        if not self.writes:
            return
        payload = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": vars(self.state).copy(),
            "rng": capture_rng_state(),
            "settings": json.loads(json_dumps(self.resolved)),
        }
        write_atomically(self.out_dir / CHECKPOINT_NAME, payload)
        self.checkpoint_step = self.state.step

    # -- evaluation -------------------------------------------------------------------
    def measure(self) -> dict:
        """The figures of the model now: validation loss (and error), mean training loss
        since the last evaluation, learning rate and damping."""
        state = self.state
        if self.world.rank != 0:  # rank 0 evaluates and writes; the others go on
            state.loss_sum, state.loss_count = 0.0, 0
            return {}
        val = self.session.evaluate("val")
        record = {
            "step": state.step,
            "examples": state.step * self.resolved["batch_size"],
            "wall_time": state.wall_time,
            "train_loss": state.loss_sum / state.loss_count if state.loss_count else None,
            "val_loss": val["loss"],
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if "error" in val:
            record["val_error"] = val["error"]
        if "damping" in self.optimizer.param_groups[0]:
            record["damping"] = float(self.optimizer.param_groups[0]["damping"])
        return record

    def record_evaluation(self) -> dict:
        record = self.measure()
        self.state.loss_sum, self.state.loss_count = 0.0, 0
        if not record:  # a rank other than 0: it neither evaluates nor keeps the history
            return record
        self.history.append(record)
        if self.writes:
            with (self.out_dir / "metrics.jsonl").open("a") as stream:
                stream.write(json_dumps(record) + "\n")
        return record

    def final_metrics(self, status: str) -> dict:
        """Figures at the step where the run stopped: the last evaluation when it was
        taken there, else measured now (a diverged or interrupted run stops between
        evaluations; that measurement is not added to metrics.jsonl, so a resumed run
        keeps the evaluation schedule of an uninterrupted one)."""
        if self.world.rank != 0:
            return {}
        if self.history and self.history[-1]["step"] == self.state.step:
            final = dict(self.history[-1])
        else:
            final = self.measure()
        if status == "completed" and self.resolved["evaluate_test"] and self.world.rank == 0:
            test = self.session.evaluate("test")
            final.update({f"test_{key}": value for key, value in test.items()})
        return final

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train to the configured number of steps (or a signal, or divergence); the run
        folder's lock is released on return."""
        try:
            return self._run()
        except (OSError, CheckpointWriteError) as error:
            if not self.writes:
                raise
            raise self._failed_write(error) from None
        finally:
            self.release_folder()

    def _failed_write(self, error: Exception) -> RunWriteError:
        """Record in summary.json that the run stopped because a file could not be written
        (or remove a stale summary if even that fails), and say what is kept."""
        kept = (
            f"the checkpoint of step {self.checkpoint_step} is kept: free space and pass "
            "--resume to continue from it"
            if self.checkpoint_step is not None
            else "no checkpoint was written"
        )
        summary = {
            "status": "failed",
            "step": self.state.step,
            "checkpoint_step": self.checkpoint_step,
            "last_recorded_step": self.history[-1]["step"] if self.history else None,
            "error": str(error),
        }
        try:
            write_json(self.out_dir / "summary.json", summary)
        except OSError:
            (self.out_dir / "summary.json").unlink(missing_ok=True)
        return RunWriteError(f"{error}; the run stopped at step {self.state.step}, {kept}")

    def _run(self) -> RunResult:
        total = self.resolved["steps"]
        flag = SignalFlag()
        progress = Progress(total, self.state.step, self.show_progress, self.resolved["workload"])
        status, diverged_at = "completed", None
        self.model.train()
        with flag.installed():
            if self.state.step == 0 and not self.history:
                self.record_evaluation()
            while self.state.step < total:
                self._advance()
                evaluation_due = (
                    self.state.step % self.resolved["eval_every"] == 0 or self.state.step == total
                )
                every = self.resolved["checkpoint_every"]
                checkpoint_due = bool(every) and self.state.step % every == 0
                stop = any_rank(flag.received is not None, "the stop signal check", self.device)
                if evaluation_due or checkpoint_due or stop or self._readback_due():
                    diverged_at = self._read_back_losses(progress)
                if diverged_at is not None:
                    status = "diverged"
                    break
                if evaluation_due:
                    progress.log_eval(self.state.step, self.record_evaluation())
                if stop:
                    status = "interrupted"
                    self.save_checkpoint()
                    break
                if checkpoint_due:
                    self.save_checkpoint()
        progress.close()
        if status == "completed":
            self.save_checkpoint()
        return self._finish(status, diverged_at)

    def _readback_due(self) -> bool:
        return len(self._pending_losses) >= self.readback_every

    def _advance(self) -> None:
        """One step; its loss stays on the device until :meth:`_read_back_losses`."""
        started = time.perf_counter()
        loss = self.session.step(self.state.step)
        self.state.step += 1
        self.state.wall_time += time.perf_counter() - started
        self._pending_losses.append(loss)

    def _read_back_losses(self, progress: Progress) -> int | None:
        """Copy the pending losses to the host (one sync) into the running mean and the
        progress bar; the step of the first non-finite one (None if all are finite).

        The wait for the device's queued work counts as training time."""
        if not self._pending_losses:
            return None
        started = time.perf_counter()
        values = torch.stack(self._pending_losses).float().tolist()
        self.state.wall_time += time.perf_counter() - started
        first_step = self.state.step - len(values) + 1
        self._pending_losses = []
        for offset, value in enumerate(values):
            progress.advance(first_step + offset, value)
            self.state.loss_sum += value
            self.state.loss_count += 1
            if self.session.diverged(value):
                return first_step + offset
        return None

    def _finish(self, status: str, diverged_at: int | None) -> RunResult:
        final = self.final_metrics(status)
        result = RunResult(status, self.state.step, final, self.history, self.out_dir, diverged_at)
        if self.writes:
            summary = {
                "status": status,
                "step": self.state.step,
                "final": final,
                "last_recorded_step": self.history[-1]["step"] if self.history else None,
            }
            if self.world.size > 1:
                summary["nproc"] = self.world.size
            if diverged_at is not None:
                summary["diverged_at_step"] = diverged_at
            write_json(self.out_dir / "summary.json", summary)
        return result


def check_shardable(resolved: dict, spec: OptimizerSpec, world_size: int) -> None:
    """ValueError unless ``world_size`` ranks can share the run's batches."""
    if world_size == 1:
        return
    if not spec.data_parallel:
        raise ValueError(
            f"optimizer {spec.name!r} runs on one process only; --nproc > 1 supports the "
            "first-order optimizers and K-FAC"
        )
    if resolved["batch_size"] % world_size:
        raise ValueError(
            f"batch_size {resolved['batch_size']} is not divisible by --nproc {world_size}: "
            "every rank takes an equal share of a batch"
        )


def train(
    config: RunConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """Run (or resume) one training run and return its result."""
    return Run(config, Path(out_dir) if out_dir else None, resume, overwrite, progress).run()
