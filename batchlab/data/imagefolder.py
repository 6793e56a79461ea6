"""`folder:PATH` datasets: a user's own images, one sub-folder per class.

Images keep their colours and, where they all share one, their size: a folder of grayscale
images gives 1 channel, any colour image (RGB, RGBA, palette, CMYK...) makes the dataset RGB
(3 channels; gray images among colour ones are repeated over the channels; transparency is
dropped). `--image-size N` (or `image_size`) resizes each image's shorter side to N and crops the
centre N×N; without it, images of mixed sizes are brought to one size chosen as below, and the
choice is said in a note recorded with the run.

If PATH has `train/` and `test/` sub-folders they are used as given; otherwise a seeded sixth of
the images (the MNIST test/train ratio) is held out as the test set. The class names are the
sorted sub-folder names (label i is the i-th); an empty class folder, or a test class with no
training folder, is an error rather than a silently skewed dataset.

An image that cannot be decoded is skipped with a note, counted and listed with the run (one
corrupt file among thousands should not cost a sweep); `strict_images` refuses the folder instead.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .dataset import Dataset
from .resize import fit_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
TEST_FRACTION = 1 / 6
SPLIT_SEED = 0
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # one channel of values (LA: plus alpha)
SHOWN_SKIPPED = 5  # skipped files named in a message; all are counted


@dataclass
class ImageFile:
    path: Path
    label: int
    size: tuple[int, int]  # width, height (from the header)
    gray: bool


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class sub-folders of `root`; hidden ones (.git, .ipynb_checkpoints)
    are tools' litter, not classes."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image file in the class folders `classes` of `root`; a class folder
    may be absent (a test set without that class) but not empty."""
    found = []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            # Its label would exist with no images: a class the model can never learn.
            raise DataError(f"{folder}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        found += [(path, label) for path in files]
    return found


def headers(files: list[tuple[Path, int]], skipped: list[str]) -> list[ImageFile]:
    """Size and mode of each file from its header (cheap: no pixels decoded); files that are not
    images go to `skipped`."""
    from PIL import Image, UnidentifiedImageError

    read = []
    for path, label in files:
        try:
            with Image.open(path) as image:
                read.append(ImageFile(path, label, image.size, image.mode in GRAY_MODES))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            skipped.append(f"{path} ({error})")
    return read


def chosen_size(images: list[ImageFile], image_size: int) -> tuple[tuple[int, int], str | None]:
    """(height, width) every image is brought to, and a note when the folder did not decide it:
    --image-size N gives N×N; one size shared by all images is kept; mixed sizes take the most
    common shorter side, square (the note says so and how to choose)."""
    if image_size:
        return (image_size, image_size), None
    sizes = Counter(image.size for image in images)
    if len(sizes) == 1:
        width, height = next(iter(sizes))
        return (height, width), None
    side = Counter(min(size) for size in (image.size for image in images)).most_common(1)[0][0]
    listed = ", ".join(f"{w}x{h}" for (w, h), _ in sizes.most_common(3)) + (", ..." if len(sizes) > 3 else "")
    return (side, side), (f"images have {len(sizes)} sizes ({listed}); each resized to {side}x{side} (shorter side "
                          f"{side}, the most common, then a centre crop): set --image-size N to choose")


def decode(images: list[ImageFile], shape: tuple[int, int, int], skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, C, H, W) uint8 and labels of `images` at `shape`; files that fail to decode
    (truncated, corrupt) go to `skipped`."""
    from PIL import Image

    channels, height, width = shape
    pixels = np.empty((len(images), *shape), dtype=np.uint8)
    labels = np.empty(len(images), dtype=np.int64)
    count = 0
    for image in images:
        try:
            with Image.open(image.path) as opened:
                converted = opened.convert("L" if channels == 1 else "RGB")
                fitted = fit_image(converted, height, width)
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for broken files
            skipped.append(f"{image.path} ({error})")
            continue
        array = np.asarray(fitted, dtype=np.uint8)
        pixels[count] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        labels[count] = image.label
        count += 1
    return pixels[:count], labels[:count]


def read_images(parts: list[list[tuple[Path, int]]], image_size: int, strict: bool, root: Path
                ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], list[str]]:
    """Decode every part (e.g. train and test files) at one shape: the arrays of each part, the
    notes to say, and the skipped files."""
    skipped: list[str] = []
    found = [headers(files, skipped) for files in parts]
    every = [image for images in found for image in images]
    if not every:
        raise DataError(f"{root}: no readable images in its class folders" + (f" ({skipped[0]})" if skipped else ""))
    channels = 1 if all(image.gray for image in every) else 3
    (height, width), note = chosen_size(every, image_size)
    arrays = [decode(images, (channels, height, width), skipped) for images in found]
    notes = [note] if note else []
    if skipped:
        shown = "; ".join(skipped[:SHOWN_SKIPPED]) + ("; ..." if len(skipped) > SHOWN_SKIPPED else "")
        if strict:
            raise DataError(f"{root}: {len(skipped)} image(s) cannot be decoded (--strict-images): {shown}")
        notes.append(f"skipped {len(skipped)} image(s) that cannot be decoded: {shown}")
    return arrays, notes, skipped


def load_folder(path: str, image_size: int = 0, strict_images: bool = False) -> Dataset:
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
        parts = [image_files(root / "train", classes), image_files(root / "test", classes)]
        ((train_x, train_y), (test_x, test_y)), notes, skipped = read_images(parts, image_size, strict_images, root)
    else:
        classes = class_folders(root)
        if len(classes) < 2:
            raise DataError(f"{root}: needs at least two class sub-folders (one per class)")
        ((images, labels),), notes, skipped = read_images([image_files(root, classes)], image_size, strict_images,
                                                           root)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        n_test = max(1, int(len(images) * TEST_FRACTION))
        test_idx, train_idx = order[:n_test], order[n_test:]
        train_x, train_y, test_x, test_y = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    unlearnable = [name for label, name in enumerate(classes) if not (train_y == label).any()]
    if unlearnable:  # every image of the class was skipped: a label the model could never learn
        raise DataError(f"{root}: no readable training images in class(es) {', '.join(unlearnable)}")
    digest = hashlib.sha256()
    for array in (train_x, train_y, test_x, test_y):
        digest.update(array.tobytes())
    digest.update("\n".join(classes).encode())
    return Dataset(f"folder:{root}", train_x, train_y, test_x, test_y, len(classes),
                   digest.hexdigest()[:16], str(root), tuple(classes), notes=tuple(notes), skipped=tuple(skipped))
