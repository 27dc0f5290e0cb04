"""Test-wide settings.

The tests train tiny models: one intra-op thread is faster for them and avoids thread
oversubscription when the machine is busy (subprocesses inherit OMP_NUM_THREADS).
"""

import os
import shutil
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def apt_install(package: str) -> str:
    """Install a Debian package (apt-get update and retry on failure); returns the log tail."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", package]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    return (result.stdout + result.stderr)[-500:]


@pytest.fixture(scope="session")
def install_debian_package():
    """``apt-get install`` a package the tests need (PostgreSQL, Chromium) when missing."""
    return apt_install
