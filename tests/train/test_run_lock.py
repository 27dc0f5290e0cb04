"""A run folder is locked while a process writes it: a second process refuses with one
line naming the holder's pid and host (exit 2); a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from natgrad.cli import main
from natgrad.train.lock import LOCK_NAME, RunFolderLock
from strict_json import load_file, load_lines

ARGS = ["--workload", "digits_logreg", "--optimizer", "sgd", "--eval-every", "2"]


def train(out: Path, steps: int, *extra: str) -> int:
    return main(["train", *ARGS, "--steps", str(steps), "--out", str(out), *extra])


def test_a_second_process_on_a_locked_folder_refuses_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, 4) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end of the run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    with RunFolderLock(out):  # another run is writing the folder
        for extra in (["--resume"], ["--overwrite"]):
            assert train(out, 8, *extra) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert f"pid {os.getpid()} on host {socket.gethostname()}" in err
            assert str(out) in err and "in use" in err
        files = [p for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME]
        assert {p.name: p.read_bytes() for p in files} == before


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    assert train(out, 4) == 0
    holder = "import sys; from natgrad.train.lock import RunFolderLock; "
    holder += "RunFolderLock(sys.argv[1]).acquire(); import os; os._exit(0)"
    dead = subprocess.run([sys.executable, "-c", holder, str(out)], env=os.environ | {
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})  # fmt: skip
    assert dead.returncode == 0
    assert json.loads((out / LOCK_NAME).read_text())["pid"] != os.getpid()  # left behind
    assert train(out, 8, "--resume") == 0
    assert [r["step"] for r in load_lines(out / "metrics.jsonl")] == [0, 2, 4, 6, 8]
    assert load_file(out / "summary.json")["step"] == 8
    assert not (out / LOCK_NAME).exists()


def test_a_fresh_run_into_a_folder_holding_only_a_stale_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere"}\n')
    assert train(out, 2) == 0
    assert load_file(out / "summary.json")["status"] == "completed"
