"""Download the official Fashion-MNIST / MNIST IDX files with SHA-256 verification.

Each file is streamed into a temporary file next to its destination while its SHA-256
is computed; only a file whose digest matches ``checksums.json`` is renamed into place
(``os.replace``, atomic on one file system). A mismatch or a broken transfer removes
the temporary file, so the destination never holds an unverified file.

Sources: Fashion-MNIST's official mirror and, for MNIST, the mirror torchvision uses;
``base_url`` or ``$NATGRAD_DATA_MIRROR`` replaces them (e.g. a local copy). The table
of digests and where they were published is ``checksums.json`` (its ``_sources`` key:
TensorFlow Datasets' url_checksums/fashion_mnist.txt and url_checksums/mnist.txt).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path

from natgrad.data.locate import check_idx_name, default_cache_dir

MIRROR_ENV = "NATGRAD_DATA_MIRROR"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0


class ChecksumError(ValueError):
    """A downloaded file's SHA-256 differs from the published one (the file is discarded)."""


class DownloadError(OSError):
    """A file could not be downloaded (network, HTTP status, or disk error)."""


@cache
def checksum_table() -> dict:
    """The parsed ``checksums.json``: per dataset a base_url and file -> sha256/size/md5."""
    text = resources.files("natgrad.data").joinpath("checksums.json").read_text("utf-8")
    return json.loads(text)


def published_sha256(name: str) -> dict[str, str]:
    """File name -> published SHA-256 hex digest for dataset ``name``."""
    return {file: entry["sha256"] for file, entry in checksum_table()[name]["files"].items()}


def resolve_base_url(name: str, base_url: str | None) -> str:
    """The mirror to use: the argument, else $NATGRAD_DATA_MIRROR, else the official one."""
    chosen = base_url or os.environ.get(MIRROR_ENV) or checksum_table()[name]["base_url"]
    return chosen.rstrip("/") + "/"


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dataset(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    *,
    checksums: Mapping[str, str] | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Download the four IDX files of ``name`` into ``dest`` and verify each SHA-256.

    ``name`` is "fashion-mnist" or "mnist"; ``dest`` defaults to ~/.cache/natgrad/NAME
    (where :func:`natgrad.data.find_dataset` looks); ``base_url`` defaults to
    $NATGRAD_DATA_MIRROR, then the official mirror. ``checksums`` (file name -> sha256)
    replaces the published table. Files already present with the right digest are kept.
    Returns ``dest``. Raises ValueError for an unknown name, ChecksumError on a digest
    mismatch (nothing is left behind) and DownloadError when a transfer fails.
    """
    check_idx_name(name)
    folder = Path(dest).expanduser() if dest is not None else default_cache_dir(name)
    expected = dict(checksums) if checksums is not None else published_sha256(name)
    mirror = resolve_base_url(name, base_url)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, sha256 in expected.items():
        target = folder / file_name
        if target.is_file() and sha256_of(target) == sha256:
            _say(report, f"{target}: present, checksum ok")
            continue
        download_verified(mirror + file_name, target, sha256)
        _say(report, f"{target}: downloaded, checksum ok")
    return folder


def download_verified(url: str, target: Path, sha256: str) -> None:
    """Stream ``url`` to a temporary file beside ``target``; rename it there if verified."""
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            digest, size = _stream_to(url, stream)
        if digest != sha256:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {digest} "
                f"({size} bytes); the file was discarded. Check --mirror / ${MIRROR_ENV}."
            )
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _stream_to(url: str, stream) -> tuple[str, int]:
    """Copy the body of ``url`` into ``stream``; return its SHA-256 and byte count."""
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                digest.update(chunk)
                stream.write(chunk)
                size += len(chunk)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise DownloadError(
            f"download of {url} failed ({error}); without network, install the data "
            f"another way or set --mirror / ${MIRROR_ENV} to a reachable copy"
        ) from error
    return digest.hexdigest(), size


def _say(report: Callable[[str], None] | None, message: str) -> None:
    """Pass a progress line to ``report`` when one is given."""
    if report is not None:
        report(message)
