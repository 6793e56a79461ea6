"""`folder:PATH` datasets: a user's own images, one sub-folder per class.

Images of any size and mode are converted to 28x28 grayscale so that every built-in model runs
on them. If PATH has `train/` and `test/` sub-folders they are used as given; otherwise a seeded
sixth of the images (the MNIST test/train ratio) is held out as the test set.

The class names are the sorted sub-folder names (label i is the i-th); an empty class folder, or
a test class with no training folder, is an error rather than a silently skewed dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .dataset import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
SIDE = 28
TEST_FRACTION = 1 / 6
SPLIT_SEED = 0


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class sub-folders of `root`; hidden ones (.git, .ipynb_checkpoints)
    are tools' litter, not classes."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_folders(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the class folders `classes` of `root`; a class folder may be absent
    (a test set without that class) but not empty."""
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            # Its label would exist with no images: a class the model can never learn.
            raise DataError(f"{folder}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            try:
                with Image.open(path) as image:
                    gray = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
                    images.append(np.asarray(gray, dtype=np.uint8)[None])
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(f"{path}: not a readable image ({error})") from None
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found in its class folders")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_folder(path: str) -> Dataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"folder dataset {root} does not exist or is not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = class_folders(root / "train")
        # Test images of a class never trained on would be silently dropped: refuse instead.
        untrained = sorted(set(class_folders(root / "test")) - set(classes))
        if untrained:
            raise DataError(f"{root / 'test'}: class folder(s) {', '.join(untrained)} have no "
                            f"counterpart in {root / 'train'}")
        train_x, train_y = read_class_folders(root / "train", classes)
        test_x, test_y = read_class_folders(root / "test", classes)
    else:
        classes = class_folders(root)
        if len(classes) < 2:
            raise DataError(f"{root}: needs at least two class sub-folders (one per class)")
        images, labels = read_class_folders(root, classes)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        n_test = max(1, int(len(images) * TEST_FRACTION))
        test_idx, train_idx = order[:n_test], order[n_test:]
        train_x, train_y, test_x, test_y = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    digest = hashlib.sha256()
    for array in (train_x, train_y, test_x, test_y):
        digest.update(array.tobytes())
    digest.update("\n".join(classes).encode())
    return Dataset(f"folder:{root}", train_x, train_y, test_x, test_y, len(classes),
                   digest.hexdigest()[:16], str(root), tuple(classes))
