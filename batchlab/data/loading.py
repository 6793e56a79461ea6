"""The dataset a run asks for: a registered dataset or a folder of images, at the image size the
run sets (`image_size`, 0 = the data's own), with its notes (what the loader chose or skipped)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import DataError
from . import registry
from .dataset import Dataset
from .resize import resized


def load_for_run(name: str, data_dir: str | Path | None = None, image_size: int = 0,
                 strict_images: bool = False) -> Dataset:
    problem = registry.dataset_problem(name)
    if problem:
        raise DataError(problem)
    if name.startswith(registry.FOLDER_PREFIX):
        from .imagefolder import load_folder  # Pillow only where it is needed
        return load_folder(name[len(registry.FOLDER_PREFIX):], image_size, strict_images)
    return resized(registry.load(name, data_dir), image_size)


def input_shape_text(shape: tuple[int, ...]) -> str:
    """(3, 32, 32) → "3x32x32": how reports and the store write an input shape."""
    return "x".join(str(size) for size in shape)
