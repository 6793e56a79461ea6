"""Shared fixtures. Real data only: Fashion-MNIST from Debian's dataset-fashion-mnist package (or
$BATCHLAB_TEST_FASHION_DIR), real MNIST test-set files from $BATCHLAB_TEST_MNIST_DIR. Tests that
need a missing one are skipped with the reason; CI provides both."""

from __future__ import annotations

import os
from pathlib import Path

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
