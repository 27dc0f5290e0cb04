"""Headless Chromium for the report test, installed from Debian's ``chromium`` when missing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def apt_install(package: str) -> str:
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
def chromium() -> str:
    """Path of a headless-capable Chromium; skips only when it cannot be installed."""
    path = find_chromium()
    if path is None:
        log = apt_install("chromium")
        path = find_chromium()
        if path is None:
            pytest.skip(f"Chromium is not installed and apt-get could not install it: {log}")
    return path
