"""Test-wide settings.

The tests train tiny models: one intra-op thread is faster for them and avoids thread
oversubscription when the machine is busy (subprocesses inherit OMP_NUM_THREADS).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
