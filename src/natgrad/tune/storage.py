"""Where studies live: an SQLite file by default, any SQLAlchemy URL to share across machines.

A study folder holds ``study.db`` (SQLite, embedded, nothing to start). Passing a URL such
as ``postgresql://user@host:5432/db`` lets worker processes on several machines share the
same studies. Writes that must not interleave (enqueueing the quasi-random points,
claiming the next waiting trial) run under :func:`study_lock`: an exclusive file lock
beside the SQLite file, or a PostgreSQL advisory lock for a server.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from natgrad.folders import STUDY_DATABASE

DEFAULT_STORAGE_FILE = STUDY_DATABASE
SQLITE_TIMEOUT_S = 120


class StorageError(ValueError):
    """A storage URL cannot be opened (bad URL, unreachable server, unreadable file)."""


def storage_url(out_dir: Path, storage: str | None) -> str:
    """``storage`` if given, else the SQLite file ``out_dir/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(out_dir) / DEFAULT_STORAGE_FILE).resolve()}"


def redact(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown as given
        return url


@lru_cache(maxsize=8)
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` (cached per process); StorageError if unusable."""
    engine_kwargs = {}
    try:
        dialect = make_url(url).get_backend_name()
    except Exception as error:  # noqa: BLE001 - sqlalchemy raises several types here
        raise StorageError(f"storage URL {url!r} cannot be parsed: {error}") from None
    if dialect == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        database = make_url(url).database
        if database and not Path(database).parent.is_dir():
            raise StorageError(f"storage {url!r}: folder {Path(database).parent} does not exist")
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        # Creating the schema is not atomic: two commands starting at once on a new
        # database would both try to create its tables.
        with study_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as error:  # noqa: BLE001 - drivers raise their own error types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise StorageError(f"cannot open storage {redact(url)}: {first_line}") from None


@lru_cache(maxsize=8)
def _lock_engine(url: str) -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def _lock_key(url: str) -> int:
    digest = hashlib.sha256(b"natgrad-study-lock").digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def study_lock(url: str) -> Iterator[None]:
    """Exclusive section across every process (and machine) that shares ``url``.

    SQLite: ``flock`` on ``<database>.lock``. PostgreSQL: ``pg_advisory_lock``, held by one
    connection for the duration. Other databases: no extra lock (their transactions
    alone must then keep enqueueing consistent; run one launcher at a time).
    """
    key = (url, threading.get_ident())
    if key in _HELD:  # already held by this thread: the lock is reentrant
        yield
        return
    parsed = make_url(url)
    _HELD.add(key)
    try:
        with _exclusive(url, parsed, parsed.get_backend_name()):
            yield
    finally:
        _HELD.discard(key)


_HELD: set[tuple[str, int]] = set()


@contextmanager
def _exclusive(url: str, parsed, dialect: str) -> Iterator[None]:
    if dialect == "sqlite" and parsed.database:
        with open(f"{parsed.database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if dialect == "postgresql":
        key = _lock_key(url)
        with _lock_engine(url).connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    yield


# Optuna keeps a trial's storage id private and offers no public way to change another
# process's trial (claim a waiting one, mark a lost one) or to resume a running trial by
# id; these functions are the only places that reach into those private names.


def _trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def set_trial_user_attr(
    study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: object
) -> None:
    """Store ``key = value`` on ``trial`` directly in the study's storage (any trial state)."""
    study._storage.set_trial_user_attr(_trial_id(trial), key, value)


def set_trial_state(
    study: optuna.Study, trial: optuna.Trial | FrozenTrial, state: TrialState
) -> bool:
    """Move ``trial`` to ``state`` in the storage; False if another process moved it first
    (WAITING to RUNNING), UpdateFinishedTrialError if it is already finished."""
    return study._storage.set_trial_state_values(_trial_id(trial), state=state)


def stored_trial_state(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> TrialState:
    """The state of ``trial`` as stored now (another process may have changed it)."""
    return study._storage.get_trial(_trial_id(trial)).state


def live_trial(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial:
    """A running trial of ``study`` as an ``optuna.Trial`` that can report and be told."""
    return optuna.Trial(study, _trial_id(trial))
