"""IDX reader: hand-made files, gzip and raw, every layout fault named with its file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from natgrad.data import IDXError, read_idx


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_reads_3d_uint8_images_raw_and_gzip(write_idx, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    tensor = read_idx(write_idx(name, images))
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (2, 3, 4)
    assert torch.equal(tensor, torch.from_numpy(images))


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_reads_1d_labels_raw_and_gzip(write_idx, name):
    labels = np.array([7, 2, 1, 0, 4, 9], dtype=np.uint8)
    tensor = read_idx(write_idx(name, labels))
    assert tensor.dtype == torch.uint8
    assert tensor.tolist() == [7, 2, 1, 0, 4, 9]


def test_gzip_is_detected_by_content_not_name(write_idx, tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(
        gzip.compress(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + labels.tobytes())
    )
    assert read_idx(path).tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    ("type_code", "item_format", "dtype", "values"),
    [
        (0x09, "b", torch.int8, [-128, 5, 127]),
        (0x0B, "h", torch.int16, [-30000, 2, 30000]),
        (0x0C, "i", torch.int32, [-(2**31), 70000, 2**31 - 1]),
        (0x0D, "f", torch.float32, [-1.5, 0.25, 3.0e8]),
        (0x0E, "d", torch.float64, [-1e-300, 0.1, 2.0**60]),
    ],
)
def test_big_endian_item_types(tmp_path, type_code, item_format, dtype, values):
    header = bytes([0, 0, type_code, 1]) + struct.pack(">I", len(values))
    payload = struct.pack(f">{len(values)}{item_format}", *values)
    path = tmp_path / "values.idx"
    path.write_bytes(header + payload)
    tensor = read_idx(path)
    assert tensor.dtype == dtype
    assert tensor.tolist() == pytest.approx(values)


def test_matches_independent_decoder_of_real_file_header(write_idx):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx("t10k-images-idx3-ubyte.gz", images)
    raw = gzip.decompress(path.read_bytes())
    assert struct.unpack(">I3I", raw[:16]) == (0x0803, 5, 28, 28)
    assert torch.equal(read_idx(path), torch.from_numpy(images))


def valid_labels_bytes() -> bytes:
    return bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4) + bytes([1, 2, 3, 4])


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (b"\x01\x00\x08\x01" + valid_labels_bytes()[4:], "magic"),
        (b"\x00\x07\x08\x01" + valid_labels_bytes()[4:], "magic"),
        (b"\x00\x00\x42\x01" + valid_labels_bytes()[4:], "type code 0x42"),
        (b"\x00\x00\x08\x00", "dimension count 0"),
        (b"\x00\x00\x08\x09" + b"\x00" * 36, "dimension count 9"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 4), "truncated IDX header"),
        (b"\x00\x00", "too short"),
        (valid_labels_bytes()[:-1], "truncated IDX data"),
        (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + bytes(2 * 28 * 27), "truncated"),
        (valid_labels_bytes() + b"junk", "4 bytes of trailing data"),
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_layout_faults_raise_and_name_the_file(write_idx, content, fault, suffix):
    path = write_idx(f"broken-idx1-ubyte{suffix}", content)
    with pytest.raises(IDXError) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)
    assert fault in str(caught.value)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    compressed = gzip.compress(valid_labels_bytes() * 50)
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IDXError, match="gzip") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent-idx1-ubyte"
    with pytest.raises(IDXError, match="absent-idx1-ubyte"):
        read_idx(path)


def test_idx_error_is_a_value_error():
    assert issubclass(IDXError, ValueError)
