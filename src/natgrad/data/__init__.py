"""Data layer: IDX reader, dataset lookup and download, embedded datasets, fixed splits.

``load_splits(name)`` is the entry point for workloads; ``find_dataset`` and
``fetch_dataset`` back ``natgrad data``; ``DATASETS`` maps each name to a one-line
description.
"""

from natgrad.data.fetch import ChecksumError, DownloadError, fetch_dataset
from natgrad.data.idx import IDXError, read_idx
from natgrad.data.locate import DatasetNotFoundError, find_dataset
from natgrad.data.splits import DATASETS, Splits, load_splits

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXError",
    "Splits",
    "fetch_dataset",
    "find_dataset",
    "load_splits",
    "read_idx",
]
