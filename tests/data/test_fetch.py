"""fetch_dataset against a loopback HTTP server: verified files land, bad ones leave nothing."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from natgrad.data import (
    ChecksumError,
    DownloadError,
    fetch,
    fetch_dataset,
    find_dataset,
    load_splits,
    splits,
)

FILE_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def mirror(tmp_path, write_idx):
    """Serve small but well-formed IDX files over http://127.0.0.1:<free port>/."""
    served = tmp_path / "served"
    rng = np.random.default_rng(0)
    write_idx("train-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28), np.uint8), served)
    write_idx("train-labels-idx1-ubyte.gz", np.arange(6, dtype=np.uint8), served)
    write_idx("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28), np.uint8), served)
    write_idx("t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7], np.uint8), served)
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/", "folder": served}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sha256_table(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILE_NAMES}


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_right_checksums_download_all_files(mirror, tmp_path):
    dest = tmp_path / "dest"
    result = fetch_dataset("mnist", dest, mirror["url"], checksums=sha256_table(mirror["folder"]))
    assert result == dest
    assert leftovers(dest) == sorted(FILE_NAMES)
    for name in FILE_NAMES:
        assert (dest / name).read_bytes() == (mirror["folder"] / name).read_bytes()


def test_wrong_checksum_raises_and_leaves_nothing(mirror, tmp_path):
    dest = tmp_path / "dest"
    table = sha256_table(mirror["folder"])
    table["train-labels-idx1-ubyte.gz"] = "0" * 64
    with pytest.raises(ChecksumError) as caught:
        fetch_dataset("mnist", dest, mirror["url"], checksums=table)
    message = str(caught.value)
    assert "train-labels-idx1-ubyte.gz" in message
    assert "0" * 64 in message
    assert not (dest / "train-labels-idx1-ubyte.gz").exists()
    assert not any(name.endswith(".part") for name in leftovers(dest))


def test_published_table_rejects_files_that_are_not_the_official_ones(mirror, tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch_dataset("fashion-mnist", dest, mirror["url"])
    assert leftovers(dest) == []


def test_mirror_from_environment_and_default_destination(mirror, isolated_home, monkeypatch):
    monkeypatch.setenv("NATGRAD_DATA_MIRROR", mirror["url"].rstrip("/"))
    dest = fetch_dataset("fashion-mnist", checksums=sha256_table(mirror["folder"]))
    assert dest == isolated_home / ".cache" / "natgrad" / "fashion-mnist"
    assert leftovers(dest) == sorted(FILE_NAMES)


def test_verified_files_are_kept_without_a_server(mirror, tmp_path):
    dest = tmp_path / "dest"
    table = sha256_table(mirror["folder"])
    fetch_dataset("mnist", dest, mirror["url"], checksums=table)
    before = {name: (dest / name).stat().st_mtime_ns for name in FILE_NAMES}
    fetch_dataset("mnist", dest, "http://127.0.0.1:9/", checksums=table)
    assert {name: (dest / name).stat().st_mtime_ns for name in FILE_NAMES} == before


def test_missing_file_on_mirror_is_a_download_error(mirror, tmp_path):
    (mirror["folder"] / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match="404"):
        fetch_dataset(
            "mnist",
            tmp_path / "dest",
            mirror["url"],
            checksums={"t10k-images-idx3-ubyte.gz": "0" * 64},
        )
    assert leftovers(tmp_path / "dest") == []


def test_fetched_files_are_found_and_loaded(mirror, isolated_home, monkeypatch):
    monkeypatch.setattr(splits, "IDX_VALIDATION_SIZE", 2)
    fetch_dataset("mnist", base_url=mirror["url"], checksums=sha256_table(mirror["folder"]))
    assert find_dataset("mnist") == isolated_home / ".cache" / "natgrad" / "mnist"
    data = load_splits("mnist")
    assert data.train_x.shape == (4, 1, 28, 28)
    assert data.val_y.tolist() == [4, 5]
    assert data.test_y.tolist() == [9, 8, 7]


def test_unknown_name_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="fashion-mnist, mnist"):
        fetch_dataset("cifar10", tmp_path)


def test_published_checksum_table_is_complete():
    table = json.loads((Path(fetch.__file__).parent / "checksums.json").read_text())
    for name in ("fashion-mnist", "mnist"):
        files = table[name]["files"]
        assert sorted(files) == sorted(FILE_NAMES)
        for entry in files.values():
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert table[name]["base_url"].startswith("http")
    assert fetch.resolve_base_url("mnist", None) == "https://ossci-datasets.s3.amazonaws.com/mnist/"
