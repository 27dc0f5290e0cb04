"""Load time of every dataset through `natgrad.data.load_splits`, median of several trials.

Fashion-MNIST is read from its IDX files (gzip), so the figure is IDX decoding plus the
split; MNIST-1D is timed warm (from its .npz cache) after one untimed call that may
generate it. Datasets whose files are absent are reported as skipped.

    .venv/bin/python benchmarks/bench_data_load.py --trials 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from natgrad.data import DATASETS, DatasetNotFoundError, load_splits


def median_load_seconds(name: str, trials: int) -> float:
    """Median wall time of load_splits(name) over ``trials`` calls after one warm-up."""
    load_splits(name)
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        load_splits(name)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    print(f"{'dataset':<14} {'median s':>9}  examples (train/val/test)")
    for name in DATASETS:
        try:
            seconds = median_load_seconds(name, args.trials)
        except DatasetNotFoundError:
            print(f"{name:<14} {'skipped':>9}  (files not found)")
            continue
        data = load_splits(name)
        counts = "/".join(str(len(x)) for x in (data.train_x, data.val_x, data.test_x))
        print(f"{name:<14} {seconds:>9.3f}  {counts}")


if __name__ == "__main__":
    main()
