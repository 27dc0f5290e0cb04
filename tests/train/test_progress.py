"""The training progress bar shows the latest validation figures beside the loss."""

from __future__ import annotations

import io

from natgrad.train import progress as progress_module


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_the_latest_validation_figures(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(progress_module.sys, "stderr", terminal)
    bar = progress_module.Progress(total=20, start=0, enabled=True, description="run")
    assert bar.bar is not None
    for step in range(1, 11):
        bar.advance(step, 2.5)
    bar.log_eval(10, {"step": 10, "val_loss": 0.75, "val_error": 0.125, "lr": 0.1})
    assert "val_loss=0.75" in bar.bar.postfix and "val_error=0.125" in bar.bar.postfix
    assert "loss=2.5" in bar.bar.postfix and "lr" not in bar.bar.postfix
    bar.advance(20, 1.5)
    assert "loss=1.5" in bar.bar.postfix and "val_loss=0.75" in bar.bar.postfix
    bar.close()
