"""What a training run is: the user's request and its fully resolved form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from natgrad.optim.optimizer_spec import get_optimizer_spec, resolve_hyperparameters
from natgrad.workloads import get_workload


@dataclass
class RunConfig:
    """A training run as requested; ``None`` means the workload's default."""

    workload: str
    optimizer: str
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    eval_every: int | None = None
    checkpoint_every: int = 0
    hyperparameters: dict = field(default_factory=dict)
    data_dir: str | None = None
    device: str = "cpu"
    evaluate_test: bool = True

    def resolved(self) -> dict:
        """Every setting made explicit (defaults filled in), as written to config.json."""
        workload = get_workload(self.workload)
        spec = get_optimizer_spec(self.optimizer)
        hyperparameters = resolve_hyperparameters(spec, dict(self.hyperparameters))
        resolved = asdict(self)
        resolved.update(
            steps=self.steps if self.steps is not None else workload.steps,
            batch_size=self.batch_size if self.batch_size is not None else workload.batch_size,
            eval_every=self.eval_every if self.eval_every is not None else workload.eval_every,
            hyperparameters=hyperparameters,
        )
        validate_positive(resolved, ("steps", "batch_size", "eval_every"))
        if resolved["checkpoint_every"] < 0:
            raise ValueError("checkpoint_every must be >= 0 (0 = only at the end and on signals)")
        check_device(self.device)
        return resolved


def check_device(name: str) -> None:
    """ValueError unless ``name`` is a torch device that this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {name!r}; valid: cpu, cuda, cuda:N, mps (torch device names)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked but CUDA is not available here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked but MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported; valid: cpu, cuda, cuda:N, mps")


def validate_positive(values: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(values[name], int) or values[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {values[name]!r}")
