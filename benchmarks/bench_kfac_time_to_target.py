"""Time to a workload's target, K-FAC against AdamW, Muon, SOAP and tuned Adam.

The script form of ``natgrad bench time-to-target`` (same options)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kfac_time_to_target.py \
        --workload fmnist_vit [--grid-size 3] [--max-steps 2000] [--json]
"""

import sys

from natgrad.bench.time_to_target import main

if __name__ == "__main__":
    sys.exit(main())
