"""A full disk while a checkpoint is written: one line, exit status 1, the previous
checkpoint intact, and summary.json and metrics.jsonl agreeing on where the run stopped."""

from __future__ import annotations

import errno
import io

import torch

import natgrad.train.checkpoint as checkpoint_module
from natgrad.cli import main
from strict_json import load_file, load_lines

ARGS = ["--workload", "digits_logreg", "--optimizer", "sgd", "--eval-every", "2"]


class FullDisk(io.RawIOBase):
    """A stream that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, stream, room: int) -> None:
        self.stream, self.room = stream, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.stream.write(data)


def fill_the_disk_after(monkeypatch, saves: int) -> None:
    """Let ``saves`` checkpoints through, then fail every later one part-way."""
    real_save, calls = torch.save, []

    def save(payload, stream):
        calls.append(1)
        if len(calls) <= saves:
            return real_save(payload, stream)
        return real_save(payload, FullDisk(stream, room=700))  # torch raises twice here

    monkeypatch.setattr(checkpoint_module.torch, "save", save)


def run(out, steps: int, *extra: str) -> int:
    return main(["train", *ARGS, "--steps", str(steps), "--out", str(out), *extra])


def test_a_full_disk_stops_the_run_with_one_line_and_files_that_agree(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert run(out, 4, "--checkpoint-every", "4") == 0
    kept = (out / "checkpoints/last.pt").read_bytes()
    fill_the_disk_after(monkeypatch, saves=0)
    capsys.readouterr()
    assert run(out, 12, "--checkpoint-every", "4", "--resume") == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "During handling" not in err, err
    err = "\n".join(line for line in err.splitlines() if not line.startswith("["))  # progress
    assert len(err.splitlines()) == 1, err
    assert "No space left on device" in err and str(out / "checkpoints/last.pt") in err
    assert "checkpoint of step 4 is kept" in err
    assert (out / "checkpoints/last.pt").read_bytes() == kept
    assert not list((out / "checkpoints").glob(".*"))  # no temporary file left
    summary = load_file(out / "summary.json")
    steps = [record["step"] for record in load_lines(out / "metrics.jsonl")]
    assert summary["status"] == "failed" and summary["checkpoint_step"] == 4
    assert summary["step"] == steps[-1] == summary["last_recorded_step"] == 8
    monkeypatch.undo()  # space freed: the run resumes from step 4 and ends as usual
    assert run(out, 12, "--checkpoint-every", "4", "--resume") == 0
    assert [r["step"] for r in load_lines(out / "metrics.jsonl")] == [0, 2, 4, 6, 8, 10, 12]
    assert load_file(out / "summary.json")["status"] == "completed"
