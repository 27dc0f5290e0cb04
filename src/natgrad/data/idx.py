"""Reader for the IDX file format of MNIST and Fashion-MNIST (gzip-compressed or raw).

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then ``ndim``
big-endian uint32 dimension sizes, then the array in C order with big-endian items
(LeCun et al., "The MNIST database", file format section). The reader checks every
part of that layout: a damaged file raises :class:`IDXError` naming the file and the
fault instead of yielding a silently short or reshaped array.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

GZIP_MAGIC = b"\x1f\x8b"
MAX_DIMENSIONS = 8

# IDX type code -> big-endian numpy dtype of the stored items.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXError(ValueError):
    """An IDX file is damaged or not an IDX file; the message names the file."""


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzip or raw, detected from its content) into a tensor.

    The magic number ``0x0000TTDD`` gives the item type TT (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) and the dimension count DD;
    the payload must hold exactly prod(dims) * itemsize bytes. Returns a tensor of that
    shape in native byte order (uint8 for MNIST images and labels). Raises IDXError
    naming the file when the magic, the dimensions or the payload length are wrong,
    and when the gzip stream is corrupt or truncated.
    """
    path = Path(path)
    content = _read_bytes(path)
    dtype, shape, header_size = _parse_header(path, content)
    _check_payload_length(path, len(content) - header_size, shape, dtype)
    array = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return torch.from_numpy(array)


def _read_bytes(path: Path) -> bytearray:
    """The decompressed file content, as a writable buffer (gzip detected by magic)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise IDXError(f"{path}: cannot read IDX file ({error.strerror or error})") from error
    if not raw.startswith(GZIP_MAGIC):
        return bytearray(raw)
    try:
        return bytearray(gzip.decompress(raw))
    except (OSError, EOFError, zlib.error) as error:
        raise IDXError(f"{path}: corrupt or truncated gzip stream ({error})") from error


def _parse_header(path: Path, content: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Item dtype, array shape and header length from the magic number and dimensions."""
    if len(content) < 4:
        raise IDXError(f"{path}: file too short for an IDX magic number ({len(content)} bytes)")
    zero0, zero1, type_code, ndim = content[0], content[1], content[2], content[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXError(
            f"{path}: bad IDX magic number 0x{content[:4].hex()} (the first two bytes must be zero)"
        )
    if type_code not in IDX_DTYPES:
        valid = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise IDXError(f"{path}: unknown IDX type code 0x{type_code:02X} (valid: {valid})")
    if not 1 <= ndim <= MAX_DIMENSIONS:
        raise IDXError(f"{path}: IDX dimension count {ndim} out of range [1, {MAX_DIMENSIONS}]")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise IDXError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_size} bytes, "
            f"file has {len(content)}"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header_size])
    return IDX_DTYPES[type_code], shape, header_size


def _check_payload_length(
    path: Path, payload_size: int, shape: tuple[int, ...], dtype: np.dtype
) -> None:
    """Raise IDXError unless the payload holds exactly prod(shape) items."""
    expected = math.prod(shape) * dtype.itemsize
    if payload_size < expected:
        raise IDXError(
            f"{path}: truncated IDX data: shape {shape} needs {expected} bytes, "
            f"found {payload_size}"
        )
    if payload_size > expected:
        raise IDXError(
            f"{path}: {payload_size - expected} bytes of trailing data after the "
            f"IDX array of shape {shape}"
        )


def expect_shape(path: Path, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise IDXError naming the file unless ``tensor`` has ``shape`` (None = any size)."""
    matches = tensor.dim() == len(shape) and all(
        want is None or want == got for want, got in zip(shape, tensor.shape, strict=True)
    )
    if not matches:
        wanted = "(" + ", ".join("N" if size is None else str(size) for size in shape) + ")"
        raise IDXError(f"{path}: expected an array of shape {wanted}, found {tuple(tensor.shape)}")
