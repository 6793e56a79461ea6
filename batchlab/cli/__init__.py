"""The `batchlab` command (app.py). Torch-free at import: `--help`, `report` and `data list` work
without torch."""

from . import advise_command  # noqa: F401  (registers `batchlab advise` on the app)
from .app import app

__all__ = ["app"]
