"""A run killed part-way (no clean-up, as by kill -9) and then resumed, for the resume tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgrad.train import RunConfig, train
from natgrad.train import runner as runner_module


def crash_then_resume(config: RunConfig, folder: Path, monkeypatch, at_step: int):
    """Run until ``at_step``, die there as if killed (no clean-up), then resume to the end."""
    original_advance = runner_module.Run._advance

    def crash(self):
        if self.state.step == at_step:
            raise SystemExit("simulated kill")
        return original_advance(self)

    monkeypatch.setattr(runner_module.Run, "_advance", crash)
    with pytest.raises(SystemExit):
        train(config, folder)
    monkeypatch.setattr(runner_module.Run, "_advance", original_advance)
    return train(config, folder, resume=True)


def without_time(final: dict) -> dict:
    """A run's final metrics without the wall time, which no two runs share."""
    return {k: v for k, v in final.items() if k != "wall_time"}
