"""Test-wide settings.

The tests train tiny models: one intra-op thread is faster for them and avoids thread
oversubscription when the machine is busy (subprocesses inherit OMP_NUM_THREADS).
"""

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import TypeVar

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

T = TypeVar("T")


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


def find_or_install(find: Callable[[], T | None], package: str, what: str) -> T:
    """What ``find()`` finds, after ``apt-get install package`` where it found nothing;
    the test is skipped, saying why, when ``what`` still cannot be found."""
    found = find()
    if found is None:
        log = apt_install(package)
        found = find()
        if found is None:
            pytest.skip(f"{what} is not installed and apt-get could not install it: {log}")
    return found


@pytest.fixture(scope="session")
def find_or_install_debian_package():
    """:func:`find_or_install` for a program the tests need (PostgreSQL, Chromium)."""
    return find_or_install
