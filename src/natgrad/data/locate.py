"""Where the IDX datasets live: --data-dir, $NATGRAD_DATA, system packages, the cache.

Lookup order for a dataset NAME (first folder holding all four IDX files wins):

1. ``data_dir`` (the ``--data-dir`` option): ``data_dir/NAME``, then ``data_dir`` itself;
   an explicit ``data_dir`` is the only place looked at (a run whose config records
   DIR must have read DIR), so the places below serve only when it is not given;
2. ``$NATGRAD_DATA/NAME``;
3. system folders from Debian packages (``/usr/share/datasets/fashion-mnist`` from
   ``dataset-fashion-mnist``);
4. the user cache ``~/.cache/natgrad/NAME`` (where ``natgrad data fetch`` writes).

Each file may be stored gzip-compressed (``train-images-idx3-ubyte.gz``) or raw
(``train-images-idx3-ubyte``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "NATGRAD_DATA"

IDX_DATASETS = ("fashion-mnist", "mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (),
}
APT_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}


class DatasetNotFoundError(FileNotFoundError):
    """No folder in the lookup order holds the dataset; the message says where and how."""


@dataclass(frozen=True)
class Candidate:
    """One place looked at, with a label saying why it was looked at."""

    label: str
    path: Path | None


def cache_root() -> Path:
    """The user cache of natgrad, ``~/.cache/natgrad``."""
    return Path.home() / ".cache" / "natgrad"


def default_cache_dir(name: str) -> Path:
    """Per-dataset cache folder ``~/.cache/natgrad/NAME`` (the default fetch target)."""
    return cache_root() / name


def check_idx_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one of the IDX datasets."""
    if name not in IDX_DATASETS:
        raise ValueError(
            f"dataset name must be one of {', '.join(IDX_DATASETS)} for IDX files; got {name!r}"
        )


def idx_file(folder: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``folder``, gzip name first, then raw; None if absent."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def missing_files(folder: Path) -> list[str]:
    """The IDX file stems that ``folder`` lacks (in neither gz nor raw form)."""
    return [stem for stem in IDX_FILES if idx_file(folder, stem) is None]


def candidates(name: str, data_dir: str | os.PathLike[str] | None) -> list[Candidate]:
    """The places to look for ``name``, in lookup order (None path = not configured)."""
    found: list[Candidate] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [Candidate("--data-dir", root / name), Candidate("--data-dir", root)]
    env_value = os.environ.get(DATA_ENV)
    env_path = Path(env_value).expanduser() / name if env_value else None
    found.append(Candidate(f"${DATA_ENV}", env_path))
    found += [Candidate("system package", path) for path in SYSTEM_DIRS[name]]
    found.append(Candidate("user cache", default_cache_dir(name)))
    return found


def find_dataset(name: str, data_dir: str | None = None) -> Path:
    """The folder holding the four IDX files of ``name`` ("fashion-mnist" or "mnist").

    Looks in --data-dir (its NAME subfolder, then itself) when given and nowhere else;
    otherwise in $NATGRAD_DATA/NAME, system package folders and ~/.cache/natgrad/NAME,
    in that order. Returns the first
    folder with all of train/t10k images/labels (each .gz or raw). Raises ValueError for
    an unknown name and DatasetNotFoundError listing every place looked at, why it did
    not qualify, and the commands that install the data.
    """
    check_idx_name(name)
    report: list[str] = []
    for candidate in candidates(name, data_dir):
        if candidate.path is None:
            report.append(f"  - {candidate.label}: not set")
            continue
        if not candidate.path.is_dir():
            report.append(f"  - {candidate.path} ({candidate.label}): no such folder")
            continue
        missing = missing_files(candidate.path)
        if not missing:
            return candidate.path
        report.append(
            f"  - {candidate.path} ({candidate.label}): missing {', '.join(missing)} (.gz or raw)"
        )
    raise DatasetNotFoundError(not_found_message(name, report))


def not_found_message(name: str, report: list[str]) -> str:
    """The error text: where we looked, then the commands that get the data."""
    commands = [f"  natgrad data fetch {name}"]
    if name in APT_PACKAGES:
        commands.append(f"  sudo apt-get install {APT_PACKAGES[name]}")
    return (
        f"dataset {name!r} not found. Looked in, in order:\n"
        + "\n".join(report)
        + "\nGet it with:\n"
        + "\n".join(commands)
        + "\nor put "
        + ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
        + f" in DIR/{name} (or DIR itself) for --data-dir DIR, or in ${DATA_ENV}/{name}."
    )
