"""Faults of `natgrad train --nproc 2`: the launcher killed with SIGKILL, Ctrl-C.

No rank outlives its launcher, a run stopped either way keeps a checkpoint and a summary
that agree, and Ctrl-C ends as for one process: one summary line, exit status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natgrad.train.lock import check_unlocked
from strict_json import load_file, load_lines

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

ARGS = ["--workload", "digits_mlp", "--optimizer", "sgd", "--eval-every", "4", "--nproc", "2"]


def start_launcher(out: Path) -> subprocess.Popen:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "natgrad.cli", "train", *ARGS, "--steps", "100000"]
    log = (out.parent / "launcher.log").open("w")  # not a pipe: orphans would hold it open
    return subprocess.Popen(
        [*command, "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


def launcher_output(out: Path) -> str:
    return (out.parent / "launcher.log").read_text()


def wait_for_training(out: Path, launcher: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and launcher.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            return
        time.sleep(0.2)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    pytest.fail(f"the ranks did not train: {launcher_output(out)[-2000:]}")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ranks_stop_with_a_checkpoint_when_the_launcher_is_killed(tmp_path):
    out = tmp_path / "run"
    launcher = start_launcher(out)
    wait_for_training(out, launcher)
    ranks = children(launcher.pid)
    assert len(ranks) == 2, ranks
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while any(alive(rank) for rank in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [rank for rank in ranks if alive(rank)]
    for rank in orphans:
        os.kill(rank, signal.SIGKILL)
    assert not orphans, "ranks outlived their launcher"
    check_unlocked(out)  # a --resume may now take the folder
    summary = load_file(out / "summary.json")
    assert summary["status"] == "interrupted"
    steps = [record["step"] for record in load_lines(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] <= summary["step"]


def test_ctrl_c_stops_every_rank_like_one_process(tmp_path):
    out = tmp_path / "run"
    launcher = start_launcher(out)
    wait_for_training(out, launcher)
    os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    try:
        status = launcher.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    output = launcher_output(out)
    assert status == 130, output[-2000:]
    for noise in ("Traceback", "SignalException", "WARNING", "failed"):
        assert noise not in output, output[-2000:]
    assert "interrupted at step" in output
    summary = load_file(out / "summary.json")
    assert summary["status"] == "interrupted" and summary["nproc"] == 2


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "1e30", "0.001", "0", "-5"])
def test_an_impossible_dist_timeout_is_one_line_and_exit_2(seconds, tmp_path, capsys):
    from natgrad.cli import main

    out = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(out), f"--dist-timeout={seconds}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dist-timeout must be a finite number" in err, err
    assert not out.exists()
