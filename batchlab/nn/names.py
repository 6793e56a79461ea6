"""The model names a spec may give, known without importing torch (spec validation, CLI help)."""

from __future__ import annotations

BUILTIN_MODELS = ("seed-cnn", "keras-cnn", "mlp")


def is_known_model(name: str) -> bool:
    """A built-in model, `package.module:factory` or `path/to/file.py:factory`."""
    return name in BUILTIN_MODELS or ":" in name
