"""Data-parallel K-FAC on gloo: N ranks on 1/N of a batch = one process on the batch.

Each test starts N processes (torch.multiprocessing) that rendezvous through a
file; each runs every case of ``ranks.CASES`` (fisher "exact" and "empirical", a
DistributedDataParallel model and a plain one whose gradients the coordinator
averages, broadcast and gathered preconditioning, Cholesky and eigen inverses, the
quadratic-model step with Levenberg-Marquardt damping, an asynchronous inverter)
over several steps that include inverse refreshes.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
from ranks import CASES, STEPS, dying_worker, equality_worker, run_case

from natgrad.distributed import Coordinator, World
from natgrad.distributed.assignment import assign_longest_first

# fork: the children start with torch already imported (seconds less per process on a
# busy machine); no process group exists in the parent, so nothing unsafe is inherited
START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


@pytest.fixture(scope="module")
def references():
    return {name: run_case(name, 0, 1) for name in [*CASES, "roles"]}


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_on_shards_step_like_one_process_on_the_batch(world_size, references, tmp_path):
    out_file = tmp_path / "results.pt"
    mp.start_processes(
        equality_worker,
        args=(world_size, str(tmp_path / "rendezvous"), str(out_file)),
        nprocs=world_size,
        join=True,
        start_method=START,
    )
    results = torch.load(out_file, weights_only=True)
    assert ("roles" in results) == (world_size == 3)  # gradient and statistics ranks
    for name, got in results.items():
        expected = references[name]
        for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
            torch.testing.assert_close(
                mine, theirs, rtol=2e-5, atol=2e-6, msg=lambda m, n=name, i=index: f"{n}[{i}]: {m}"
            )
        assert got[-1].shape == (STEPS,)  # the whole batch's loss, every step


def test_parameters_move_so_the_equality_is_not_vacuous(references):
    from ranks import model_and_batch

    initial = list(model_and_batch()[0].parameters())
    for name, result in references.items():
        params = result[: len(initial)]
        moved = max((p - q).abs().max() for p, q in zip(params, initial, strict=True))
        assert moved > 1e-2, name


@pytest.mark.parametrize("hang", [False, True], ids=["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_stops_the_others_with_a_clear_message(hang, tmp_path):
    context = mp.get_context(START)
    out_file = tmp_path / "failure.txt"
    started = time.monotonic()
    processes = [
        context.Process(
            target=dying_worker, args=(rank, 2, str(tmp_path / "rendezvous"), str(out_file), hang)
        )
        for rank in range(2)
    ]
    for process in processes:
        process.start()
    processes[0].join(timeout=60)
    survivor_seconds = time.monotonic() - started
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
    assert processes[0].exitcode == 1, out_file.read_text() if out_file.exists() else "hung"
    assert processes[1].exitcode == (-9 if hang else 3)
    seconds, message = out_file.read_text().split("\n", 1)
    assert "rank 0:" in message and "across ranks failed" in message
    assert float(seconds) < (20 if hang else 5) and survivor_seconds < 45


def test_longest_job_first_balances_and_is_deterministic():
    costs = [8.0, 7.0, 6.0, 5.0, 4.0]
    assert assign_longest_first(costs, 2) == [0, 1, 1, 0, 0]  # loads 17 and 13
    assert assign_longest_first(costs, 1) == [0] * 5
    assert assign_longest_first([1.0, 1.0], 3) == [0, 1]


def test_one_process_coordinator_is_the_local_computation():
    with pytest.raises(ValueError, match="role must be one of both, gradients, statistics"):
        Coordinator(World(), role="inverses")
    coordinator = Coordinator(World())
    assert not coordinator.distributed
    loss = torch.tensor(2.5)
    assert coordinator.reduce_gradients(torch.nn.Linear(2, 2), [], loss, 4) is loss
    with pytest.raises(ValueError, match="precondition must be one of broadcast, gather"):
        Coordinator(World(), precondition="scatter")


def test_refresh_cost_is_the_sum_of_cubes_of_the_factor_sizes():
    from natgrad.distributed.coordinator import refresh_cost
    from natgrad.precondition.kronecker import KroneckerPreconditioner

    preconditioner = KroneckerPreconditioner()
    assert refresh_cost(preconditioner) == 0.0
    preconditioner.update(torch.eye(5), torch.eye(3), 0.0)
    preconditioner.refresh(0.1)  # the decomposition's matrices do not count
    assert refresh_cost(preconditioner) == 5**3 + 3**3
