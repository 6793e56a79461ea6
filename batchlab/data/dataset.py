"""A whole dataset in host memory, as every loader returns it (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """A whole dataset in host memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: int
    checksum: str  # one hash over the content of all files: recorded with every run
    source: str  # where it was loaded from
    class_names: tuple[str, ...]  # label i is class_names[i]; recorded with the run
    notes: tuple[str, ...] = field(default=())  # what the loader decided or skipped: said to the user, recorded
    skipped: tuple[str, ...] = field(default=())  # files that could not be decoded, each "path (why)"
    preloaded: bool = False  # loaded by the run-worker server before this run's fork (registry.preload)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(int(size) for size in self.train_images.shape[1:])
