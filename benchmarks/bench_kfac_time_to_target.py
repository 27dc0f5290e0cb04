"""Time to a target loss, K-FAC against tuned Adam and Momentum: ``natgrad bench time-to-target``.

OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_time_to_target.py [options]
"""

from natgrad.bench.time_to_target import main

if __name__ == "__main__":
    main()
