"""Step time, breakdown and peak memory of K-FAC against Momentum: ``natgrad bench step``.

OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_step.py [options]
"""

from natgrad.bench.step import main

if __name__ == "__main__":
    main()
