"""Shared fixtures of the data tests: an isolated home and hand-built IDX files."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# IDX type codes, written here independently of the reader's table.
TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME per test and no natgrad environment variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NATGRAD_DATA", raising=False)
    monkeypatch.delenv("NATGRAD_DATA_MIRROR", raising=False)
    return home


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes: 0x00 0x00, type code, ndim, big-endian uint32 dims, big-endian items."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim])
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def write_idx(tmp_path: Path) -> Callable[..., Path]:
    """Write raw bytes or an array as an IDX file (gzip when the name ends in .gz)."""

    def write(name: str, content: np.ndarray | bytes, folder: Path = tmp_path) -> Path:
        data = content if isinstance(content, bytes) else encode_idx(content)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return write
