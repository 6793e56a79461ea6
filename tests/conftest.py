"""Shared fixtures. Real data only: Fashion-MNIST from Debian's dataset-fashion-mnist package (or
$BATCHLAB_TEST_FASHION_DIR), real MNIST test-set files from $BATCHLAB_TEST_MNIST_DIR. Tests that
need a missing one are skipped with the reason; CI provides both."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

FASHION_DIRS = [os.environ.get("BATCHLAB_TEST_FASHION_DIR"), "/usr/share/datasets/fashion-mnist"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's real cache and $BATCHLAB_DATA."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("BATCHLAB_DATA", raising=False)
    return cache


@pytest.fixture
def fashion_dir() -> Path:
    for candidate in FASHION_DIRS:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def mnist_test_dir() -> Path:
    directory = os.environ.get("BATCHLAB_TEST_MNIST_DIR")
    if not directory or not (Path(directory) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST test files not given ($BATCHLAB_TEST_MNIST_DIR)")
    return Path(directory)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 20, seed: int = 0) -> Path:
    """A small image-folder dataset, one sub-folder per class, each class its own brightness and
    stripe pattern so that a model can learn it quickly."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.normal(40 + 80 * label, 12, (28, 28))
            pixels[:, label::classes] += 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Path of a 3-class, 60-image folder dataset (use as --dataset folder:PATH)."""
    return write_image_folder(tmp_path / "images")
