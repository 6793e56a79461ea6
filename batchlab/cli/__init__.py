"""The `batchlab` command (app.py). Torch-free at import: `--help`, `report` and `data list` work
without torch."""

from .app import app

__all__ = ["app"]
