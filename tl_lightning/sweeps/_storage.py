"""Where an Optuna study lives, by URL, so several processes or SLURM jobs fill one study.

==================================================  ==================================================
``sqlite:///study.db``                              an SQLite file (one machine, or a few processes)
``journal:/shared/sweeps/study.journal``            Optuna's journal file, with file locks (a shared
                                                    file system: NFS, Lustre; several machines)
``postgresql://user:password@host/db``              a database server (many machines); also
``mysql+pymysql://...``                             ``mysql``, any SQLAlchemy URL
``grpc://host:13000``                               Optuna's gRPC storage proxy in front of a database
==================================================  ==================================================

Relative paths are relative to the directory the command was started from.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from tl_lightning.errors import ConfigurationError

__all__ = ["open_storage", "storage_url"]

_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql")


def storage_url(storage: str | None, default_journal: str | os.PathLike[str] | None = None) -> str:
    """The storage as a URL every process can open (``None``: a journal file at ``default_journal``).

    Relative SQLite and journal paths become absolute, so jobs started elsewhere (another
    working directory, a SLURM node) open the same file.

    Example:
        >>> storage_url("journal:/tmp/study.journal")
        'journal:/tmp/study.journal'
    """
    if storage is None or str(storage).strip() in ("", "null", "None"):
        if default_journal is None:
            raise ConfigurationError("no study storage given; set hydra.sweeper.storage (e.g. sqlite:///study.db)")
        return f"journal:{os.path.abspath(default_journal)}"
    text = str(storage).strip()
    if text.startswith("journal:"):
        path = text[len("journal:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigurationError(f"storage {text!r} names no file; write journal:<path>, e.g. journal:study.journal")
        return f"journal:{os.path.abspath(path)}"
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        rest = text[len("sqlite:///") :]
        if rest and rest != ":memory:":
            return "sqlite:///" + os.path.abspath(rest)
    return text


def _rdb_storage(url: str, attempts: int = 8) -> Any:
    """``RDBStorage``, retried while other processes create the same database's tables at the same moment."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=None)
        except (IntegrityError, OperationalError):
            # SLURM array jobs start together: one of them creates the schema, the others retry
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


def open_storage(url: str) -> Any:
    """An Optuna storage object for a URL from :func:`storage_url`.

    Raises:
        ConfigurationError: An unknown scheme, or a driver that is not installed (with the package to install).
    """
    import optuna

    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if scheme == "grpc":
        host, _, port = url[len("grpc://") :].partition(":")
        return optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port or 13000))
    if scheme in _RDB_SCHEMES:
        if scheme == "sqlite":
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            return _rdb_storage(url)
        except ImportError as err:
            raise ConfigurationError(
                f"storage {url.split('@')[-1]!r} needs a database driver that is not installed ({err}). Fix: "
                "pip install the driver of your database (psycopg2-binary, pymysql)"
            ) from err
    raise ConfigurationError(
        f"unknown study storage {url!r}; valid: sqlite:///<file>, journal:<file>, postgresql://..., "
        "mysql+pymysql://..., grpc://host:port"
    )
