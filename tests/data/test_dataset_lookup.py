"""Dataset lookup: --data-dir, $NATGRAD_DATA, system folder, user cache, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgrad.data import DatasetNotFoundError, find_dataset, locate

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def make_folder(
    path: Path, gzip_files: tuple[str, ...] = FILES, skip: tuple[str, ...] = ()
) -> Path:
    """A folder with the four file names (contents irrelevant to lookup)."""
    path.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        if stem in skip:
            continue
        name = f"{stem}.gz" if stem in gzip_files else stem
        (path / name).write_bytes(b"placeholder")
    return path


@pytest.fixture
def places(tmp_path, isolated_home, monkeypatch):
    """All four places for fashion-mnist, populated; the system folder is a tmp dir."""
    system = make_folder(tmp_path / "system")
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion-mnist", (system,))
    env_root = tmp_path / "env"
    make_folder(env_root / "fashion-mnist")
    monkeypatch.setenv("NATGRAD_DATA", str(env_root))
    data_dir = tmp_path / "cli"
    make_folder(data_dir / "fashion-mnist")
    cache = make_folder(isolated_home / ".cache" / "natgrad" / "fashion-mnist")
    return {"data_dir": data_dir, "env": env_root, "system": system, "cache": cache}


def remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def test_lookup_order(places, monkeypatch):
    data_dir = places["data_dir"]
    assert find_dataset("fashion-mnist", str(data_dir)) == data_dir / "fashion-mnist"
    assert find_dataset("fashion-mnist") == places["env"] / "fashion-mnist"
    monkeypatch.delenv("NATGRAD_DATA")
    assert find_dataset("fashion-mnist") == places["system"]
    remove(places["system"])
    assert find_dataset("fashion-mnist") == places["cache"]


def test_data_dir_itself_holds_the_files(places, tmp_path):
    flat = make_folder(tmp_path / "flat")
    assert find_dataset("fashion-mnist", str(flat)) == flat


def test_raw_and_gzip_names_are_both_accepted(tmp_path):
    mixed = make_folder(tmp_path / "mixed", gzip_files=FILES[:2])
    assert find_dataset("mnist", str(mixed)) == mixed
    assert locate.idx_file(mixed, FILES[0]).name == f"{FILES[0]}.gz"
    assert locate.idx_file(mixed, FILES[3]).name == FILES[3]


def test_explicit_data_dir_lacking_the_dataset_never_falls_back(places, tmp_path):
    """Every other place holds the dataset; an incomplete --data-dir still fails."""
    partial = make_folder(tmp_path / "partial", skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(DatasetNotFoundError) as caught:
        find_dataset("fashion-mnist", str(partial))
    message = str(caught.value)
    assert f"{partial} (--data-dir): missing t10k-labels-idx1-ubyte" in message
    assert str(places["env"]) not in message and str(places["cache"]) not in message


def test_not_found_message_lists_places_and_commands(tmp_path, isolated_home, monkeypatch):
    system = tmp_path / "no-system"
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion-mnist", (system,))
    monkeypatch.setenv("NATGRAD_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as caught:
        find_dataset("fashion-mnist", str(tmp_path / "cli"))
    message = str(caught.value)
    assert message.index(str(tmp_path / "cli" / "fashion-mnist") + " (") < message.index(
        str(tmp_path / "cli") + " ("
    )
    assert str(tmp_path / "env") not in message
    with pytest.raises(DatasetNotFoundError) as caught:
        find_dataset("fashion-mnist")
    message = str(caught.value)
    looked = [
        tmp_path / "env" / "fashion-mnist",
        system,
        isolated_home / ".cache" / "natgrad" / "fashion-mnist",
    ]
    positions = [message.index(str(path) + " (") for path in looked]
    assert positions == sorted(positions)
    assert "natgrad data fetch fashion-mnist" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_mnist_message_has_fetch_command_and_unset_env(isolated_home):
    with pytest.raises(DatasetNotFoundError) as caught:
        find_dataset("mnist")
    assert "natgrad data fetch mnist" in str(caught.value)
    assert "$NATGRAD_DATA: not set" in str(caught.value)
    assert "apt-get" not in str(caught.value)


@pytest.mark.parametrize("name", ["digits", "MNIST", ""])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="fashion-mnist, mnist"):
        find_dataset(name)
