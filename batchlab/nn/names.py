"""The model names a spec may give, known without importing torch (spec validation, CLI help)."""

from __future__ import annotations

BUILTIN_MODELS = ("seed-cnn", "keras-cnn", "mlp")
TORCHVISION_PREFIX = "torchvision:"
# The forms of a model name besides the built-ins, for messages: "choose one of <built-ins>, <forms>".
MODEL_FORMS = f"{TORCHVISION_PREFIX}NAME, package.module:factory or path/to/file.py:factory"


def is_torchvision_model(name: str) -> bool:
    """`torchvision:NAME`: a classifier of torchvision.models (whether NAME is one is known only
    with torchvision imported: models.build says)."""
    return name.startswith(TORCHVISION_PREFIX)


def is_known_model(name: str) -> bool:
    """A built-in model, `torchvision:NAME`, `package.module:factory` or `path/to/file.py:factory`."""
    if name in BUILTIN_MODELS:
        return True
    before, _, after = name.rpartition(":")
    return bool(before and after)
