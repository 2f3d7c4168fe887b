"""Turning user mistakes into one clear message instead of a long traceback.

A bad override (unknown backbone, missing data path, wrong column) reaches ``tl-train`` as a
:class:`~tl_lightning.errors.TLError`, usually wrapped by Hydra's ``instantiate`` or
OmegaConf's interpolation machinery. :func:`user_error_message` digs it out and names the
config key the failing step was built from; the app prints that and exits with status 1.
``HYDRA_FULL_ERROR=1`` keeps the full traceback, as in any Hydra app.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue

from tl_lightning.errors import TLError

__all__ = ["ConfigStepError", "config_step", "user_error_message", "exit_on_user_error"]


class ConfigStepError(Exception):
    """An exception raised while building the part of the run configured under ``key``."""

    def __init__(self, key: str, error: BaseException) -> None:
        super().__init__(f"{key}: {error}")
        self.key = key
        self.error = error


@contextlib.contextmanager
def config_step(key: str) -> Iterator[None]:
    """Label exceptions raised inside the block with the config key being built."""
    try:
        yield
    except ConfigStepError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with context, never swallowed
        raise ConfigStepError(key, err) from err


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def user_error_message(err: BaseException) -> str | None:
    """A one-paragraph message for errors caused by the config or the data, else ``None``.

    Example:
        >>> from tl_lightning.errors import DataError
        >>> try:
        ...     with config_step("data"):
        ...         raise DataError("column 'txt' not found; columns: ['text', 'label']")
        ... except ConfigStepError as e:
        ...     print(user_error_message(e))
        error in data: DataError: column 'txt' not found; columns: ['text', 'label']
    """
    key = err.key if isinstance(err, ConfigStepError) else None
    where = f" in {key}" if key else ""
    for cause in _chain(err):
        # Lightning's word for a bad Trainer / callback argument (accelerator, devices, precision, ...)
        if isinstance(cause, (TLError, MisconfigurationException)):
            return f"error{where}: {type(cause).__name__}: {_one_line(str(cause))}"
        if isinstance(cause, MissingMandatoryValue):
            full_key = getattr(cause, "full_key", None) or "?"
            return (
                f"error{where}: the config value {full_key!r} is required and not set; "
                f"add `{full_key}=...` to the command line (e.g. data.root=/path/to/images)."
            )
    return None


def exit_on_user_error(err: BaseException) -> None:
    """Print a short message and exit(1) for user errors, unless HYDRA_FULL_ERROR=1.

    Returns (so the caller re-raises) for anything that is not a recognised user error.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    message = user_error_message(err)
    if message is None:
        return
    print(message, file=sys.stderr)
    print("(Set the environment variable HYDRA_FULL_ERROR=1 for the full traceback.)", file=sys.stderr)
    raise SystemExit(1) from None
