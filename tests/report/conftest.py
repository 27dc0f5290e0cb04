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
def chromium(find_or_install_debian_package) -> str:
    """Path of a headless-capable Chromium; skips only when it cannot be installed."""
    return find_or_install_debian_package(find_chromium, "chromium", "Chromium")
