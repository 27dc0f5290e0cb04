"""`natgrad train --nproc N`: torchrun ranks on shards of each batch, rank 0 writes the run
folder, and the checkpoint resumes on another number of ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natgrad.cli import main
from natgrad.distributed.coordinator import World
from natgrad.train.runner import shard

SETTINGS = [
    "--workload", "digits_mlp", "--optimizer", "kfac", "--eval-every", "3",
    "--set", "fisher=exact", "--set", "stat_fraction=1", "--set", "model_fraction=1",
]  # fmt: skip


def _natgrad(*args: str) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "natgrad.cli", *args], capture_output=True, text=True, env=env,
        timeout=240,
    )  # fmt: skip


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_then_one_resumes_like_one_process_all_along(tmp_path):
    split = tmp_path / "split"
    launched = _natgrad("train", *SETTINGS, "--steps", "3", "--nproc", "2", "--out", str(split))
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert json.loads((split / "summary.json").read_text())["nproc"] == 2
    assert [r["step"] for r in _records(split)] == [0, 3]
    assert main(["train", *SETTINGS, "--steps", "6", "--resume", "--out", str(split)]) == 0
    whole = tmp_path / "whole"
    assert main(["train", *SETTINGS, "--steps", "6", "--out", str(whole)]) == 0
    for mine, theirs in zip(_records(split), _records(whole), strict=True):
        assert mine["step"] == theirs["step"]
        for key in ("train_loss", "val_loss"):
            if theirs[key] is not None:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5), (key, mine["step"])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--nproc", "0"], "--nproc must be an integer >= 1, got 0"),
        (["--nproc", "3"], "batch_size 64 is not divisible by --nproc 3"),
        (["--nproc", "2", "--dist-timeout", "0"], "--dist-timeout must be a finite"),
    ],
)
def test_bad_rank_settings_are_one_line_and_exit_2(extra, message, tmp_path, capsys):
    assert main(["train", *SETTINGS, "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_optimizer_of_one_process_is_refused_before_launching(tmp_path, capsys):
    args = ["train", "--workload", "digits_logreg", "--optimizer", "ngd", "--nproc", "2"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "optimizer 'ngd' runs on one process only" in capsys.readouterr().err


def test_shards_are_equal_consecutive_rows_of_the_batch():
    indices = torch.arange(12)
    parts = [shard(indices, World(rank, 3)).tolist() for rank in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert shard(indices, World()) is indices


def _rank_trains(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from natgrad.train import RunConfig, train

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    config = RunConfig("digits_mlp", "momentum", steps=6, eval_every=3, evaluate_test=False)
    train(config, out_dir)
    dist.destroy_process_group()


def test_first_order_ranks_step_a_ddp_model_like_one_process(tmp_path):
    import torch.multiprocessing as mp

    from natgrad.train import RunConfig, train

    start = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (2, str(tmp_path / "rendezvous"), str(tmp_path / "ranks"))
    mp.start_processes(_rank_trains, args=args, nprocs=2, start_method=start)
    config = RunConfig("digits_mlp", "momentum", steps=6, eval_every=3, evaluate_test=False)
    train(config, tmp_path / "one")
    ranks, one = _records(tmp_path / "ranks"), _records(tmp_path / "one")
    assert [r["step"] for r in ranks] == [0, 3, 6]
    for mine, theirs in zip(ranks[1:], one[1:], strict=True):
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
