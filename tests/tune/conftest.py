"""A real PostgreSQL server for the storage tests, installed from Debian when missing.

The fixture looks for initdb/pg_ctl (PATH, then /usr/lib/postgresql/*/bin), installs the
``postgresql`` package with apt-get when they are missing and we run as root, starts a
throw-away cluster on 127.0.0.1 and a free port (as the ``postgres`` user when root),
and stops it at the end. It skips, saying why, only when PostgreSQL cannot be installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def postgres_bin_dir() -> Path | None:
    for candidate in [shutil.which("pg_ctl")] + sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    ):
        if candidate and Path(candidate).exists():
            folder = Path(os.path.realpath(candidate)).parent
            if (folder / "initdb").exists():
                return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url(find_or_install_debian_package):
    """SQLAlchemy URL of a fresh PostgreSQL server on 127.0.0.1 (stopped after the session)."""
    folder = find_or_install_debian_package(postgres_bin_dir, "postgresql", "PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="natgrad-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(
        [
            *prefix,
            str(folder / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "natgrad",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -h 127.0.0.1 -k {root} -F"
    subprocess.run(
        [
            *prefix,
            str(folder / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg2://natgrad@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
