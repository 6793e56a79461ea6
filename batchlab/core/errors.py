"""batchlab's own errors: each is a user error whose message is already one line for the user
(the CLI prints it as is, with exit code 2). They live here, apart from the code that raises
them, so that the CLI can tell them from bugs without importing torch."""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or gave cannot be used; the message says what, in one line."""


class SpecError(UserError, ValueError):
    """A run or experiment asks for something invalid."""


class DataError(UserError, RuntimeError):
    """A dataset is missing, corrupted or malformed."""


class ModelError(UserError, ValueError):
    """A model name or user factory cannot be used."""


class DeviceUnavailable(UserError, RuntimeError):
    """The requested device does not exist here."""


class StoreError(UserError, RuntimeError):
    """The store cannot be opened or written."""


class RunAlreadyFinished(StoreError):
    """The run is already DONE (or DIVERGED) in the store: it is never reset or overwritten."""


class RunHeldElsewhere(StoreError):
    """Another live sweep holds the run (it is RUNNING there, or took it over): never run or
    stored twice."""


class ExportError(UserError, RuntimeError):
    """An export cannot be written."""


class WorkerFailed(UserError, RuntimeError):
    """A worker process of the run failed; the message names it and says how."""


def one_line(error: BaseException) -> str:
    """The error in one line; batchlab's own errors are already worded for the user, others get
    their type name in front."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if not isinstance(error, UserError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:500]
