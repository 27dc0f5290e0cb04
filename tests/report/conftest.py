"""Headless Chromium for the report test, installed from Debian's ``chromium`` when missing."""

from __future__ import annotations

import shutil

import pytest


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium(install_debian_package) -> str:
    """Path of a headless-capable Chromium; skips only when it cannot be installed."""
    path = find_chromium()
    if path is None:
        log = install_debian_package("chromium")
        path = find_chromium()
        if path is None:
            pytest.skip(f"Chromium is not installed and apt-get could not install it: {log}")
    return path
