"""Small datasets the tests write themselves, so that no test needs a real dataset to have *some*
data: 10 classes of 28x28 grayscale shapes (bars, diagonals, a cross, a ring...), each image its
class's shape shifted by up to 4 pixels, with random contrast and noise. The classes share strokes
(a plus holds both bars, a square and its corners overlap), so a model has to learn them: chance
is 0.1; one epoch on the 2,000 training images in batches of 32 gives mlp about 0.95 and seed-cnn
about 0.8 on the 500 test images, and 8 steps of mlp in batches of 256 about 0.55.

The same images come in two forms:
- IDX: the four gzipped IDX files of an MNIST-like dataset (`write_idx_dataset`), to be registered
  in-process in `batchlab.data.registry.DATASETS` with their own SHA-256s (`dataset_info`), for the
  data layer's own tests: parsing, checksums, corruption, look-up, downloads;
- a `folder:` dataset (`write_folder_dataset`): its path is in the dataset's name, so it reaches
  the processes a sweep or a DDP run starts, where an in-process registry entry does not.

Apart from them: the content of small archives laid out as the official CIFAR-10 and CIFAR-100
python-version archives (`cifar10_content`, `cifar100_content`: random pixels, a few images a
batch) and `write_tar_gz`, which packs the members into such an archive; a test registers it with
its own MD5.

tests/conftest.py wraps both in fixtures."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDE = 28
CLASS_NAMES = ("hbar", "vbar", "diagonal", "antidiagonal", "square", "blob", "plus", "cross", "ring", "corners")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN, TEST = 2000, 500  # images in the synthetic training and test sets


def shapes() -> np.ndarray:
    """One 28x28 float pattern (0..1) per class, strokes 6 pixels wide in the 21x21 centre
    (seed-cnn crops to 25x25, and a shift of 4 keeps them inside)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(float)
    c = (SIDE - 1) / 2
    radius = np.hypot(y - c, x - c)
    inside = (np.abs(y - c) <= 10) & (np.abs(x - c) <= 10)
    hbar = (np.abs(y - c) <= 2.5) & inside
    vbar = (np.abs(x - c) <= 2.5) & inside
    diagonal = (np.abs(y - x) <= 3.5) & inside
    antidiagonal = (np.abs(y + x - 2 * c) <= 3.5) & inside
    square = inside & ~((np.abs(y - c) <= 5) & (np.abs(x - c) <= 5))
    blob = radius <= 7
    corners = inside & (np.abs(y - c) >= 5) & (np.abs(x - c) >= 5)
    patterns = [hbar, vbar, diagonal, antidiagonal, square, blob, hbar | vbar, diagonal | antidiagonal,
                (radius >= 5) & (radius <= 10), corners]
    return np.stack(patterns).astype(float)


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (uint8, N x 28 x 28) with balanced labels (uint8) in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASS_NAMES)).astype(np.uint8)
    patterns = shapes()
    images = np.empty((count, SIDE, SIDE), dtype=np.uint8)
    for index, label in enumerate(labels):
        dy, dx = rng.integers(-4, 5, size=2)
        shape = np.roll(patterns[label], (dy, dx), axis=(0, 1))
        pixels = 20 + shape * rng.uniform(80, 220) + rng.normal(0, 25, (SIDE, SIDE))
        images[index] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels


def splits(train: int = TRAIN, test: int = TEST, seed: int = 0) -> list[np.ndarray]:
    """Train images, train labels, test images, test labels: the order of IDX_FILES."""
    train_x, train_y = make_images(train, seed)
    test_x, test_y = make_images(test, seed + 1)
    return [train_x, train_y, test_x, test_y]


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8) as IDX: 0, 0, type 0x08, number of dimensions, one big-endian uint32 each."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_dataset(root: Path, train: int = TRAIN, test: int = TEST, seed: int = 0) -> Path:
    """The four gzipped IDX files (train-images-idx3-ubyte.gz, ...) of the synthetic dataset in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_FILES, splits(train, test, seed)):
        (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return root


def dataset_info(root: Path, name: str = "synthetic", system_dirs: tuple[str, ...] = ()):
    """A registry entry for the IDX files in `root`: each file's SHA-256 is its own decompressed
    content's, so the registry verifies them as it verifies MNIST's."""
    from batchlab.data.registry import DataFile, DatasetInfo

    files = tuple(DataFile(file, hashlib.sha256(gzip.decompress((root / f"{file}.gz").read_bytes())).hexdigest())
                  for file in IDX_FILES)
    return DatasetInfo(name=name, files=files, mirrors=("http://127.0.0.1:9/",), class_names=CLASS_NAMES,
                       system_dirs=system_dirs)


def write_folder_dataset(root: Path, train: int = TRAIN, test: int = TEST, seed: int = 0) -> Path:
    """The synthetic dataset as a `folder:` dataset: root/train/CLASS/*.png and root/test/CLASS/*.png."""
    from PIL import Image

    train_x, train_y, test_x, test_y = splits(train, test, seed)
    for part, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        for name in CLASS_NAMES:
            (root / part / name).mkdir(parents=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / part / CLASS_NAMES[label] / f"{index}.png")
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 20, seed: int = 0) -> Path:
    """A tiny image-folder dataset, one sub-folder per class (class0, class1, ...), without train/
    and test/, each class its own brightness and stripe pattern so that a model can learn it quickly."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.normal(40 + 80 * label, 12, (SIDE, SIDE))
            pixels[:, label::classes] += 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


# --- CIFAR-layout archives -------------------------------------------------------------------------

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_FINE_NAMES = tuple(f"fine{index:02d}" for index in range(100))
CIFAR100_COARSE_NAMES = tuple(f"coarse{index:02d}" for index in range(20))
CIFAR_ROW = 3 * 32 * 32  # one image: 1024 red, 1024 green, 1024 blue values, each plane row-major


@dataclass(frozen=True)
class CifarContent:
    """What a CIFAR-layout archive holds: its members, and the arrays they were made of."""

    members: dict[str, bytes]  # member name (without the folder) -> its pickled content
    train_rows: np.ndarray  # uint8 (N, 3072) as stored, the training batches in order
    train_labels: dict[bytes, np.ndarray]  # by label key: b"labels", or b"fine_labels" and b"coarse_labels"
    test_rows: np.ndarray
    test_labels: dict[bytes, np.ndarray]


def cifar_pickle(content: dict) -> bytes:
    """`content` pickled so that it reads as the official batches do: byte-string keys, and numpy
    arrays named by numpy.core.multiarray, as the numpy that wrote the archives named them."""
    return pickle.dumps(content, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_batch(rows: np.ndarray, labels: dict[bytes, np.ndarray]) -> bytes:
    """A pickled batch: the image rows as a uint8 array, each label list as a list of ints."""
    content = {b"batch_label": b"synthetic batch", b"data": rows,
               b"filenames": [f"image_{index}.png".encode() for index in range(len(rows))]}
    content.update({key: values.tolist() for key, values in labels.items()})
    return cifar_pickle(content)


def cifar10_content(per_batch: int = 4, test: int = 6, seed: int = 0) -> CifarContent:
    """The members of cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    train_rows = rng.integers(0, 256, (5 * per_batch, CIFAR_ROW), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 5 * per_batch)
    test_rows = rng.integers(0, 256, (test, CIFAR_ROW), dtype=np.uint8)
    test_labels = rng.integers(0, 10, test)
    members = {}
    for number in range(1, 6):
        part = slice((number - 1) * per_batch, number * per_batch)
        members[f"data_batch_{number}"] = cifar_batch(train_rows[part], {b"labels": train_labels[part]})
    members["test_batch"] = cifar_batch(test_rows, {b"labels": test_labels})
    members["batches.meta"] = cifar_pickle({b"label_names": [name.encode() for name in CIFAR10_NAMES],
                                            b"num_cases_per_batch": per_batch, b"num_vis": CIFAR_ROW})
    return CifarContent(members, train_rows, {b"labels": train_labels}, test_rows, {b"labels": test_labels})


def cifar100_content(train: int = 12, test: int = 6, seed: int = 0) -> CifarContent:
    """The members of cifar-100-python/: train, test, meta. Each image has a fine label and a
    coarse one (here fine % 20)."""
    rng = np.random.default_rng(seed)
    rows = {"train": rng.integers(0, 256, (train, CIFAR_ROW), dtype=np.uint8),
            "test": rng.integers(0, 256, (test, CIFAR_ROW), dtype=np.uint8)}
    fine = {part: rng.integers(0, 100, len(rows[part])) for part in rows}
    labels = {part: {b"fine_labels": fine[part], b"coarse_labels": fine[part] % 20} for part in rows}
    members = {part: cifar_batch(rows[part], labels[part]) for part in rows}
    members["meta"] = cifar_pickle({b"fine_label_names": [name.encode() for name in CIFAR100_FINE_NAMES],
                                    b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE_NAMES]})
    return CifarContent(members, rows["train"], labels["train"], rows["test"], labels["test"])


def write_tar_gz(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    """A gzipped tar at `path` holding FOLDER/NAME for every member, as the official archives do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            entry = tarfile.TarInfo(f"{folder}/{name}")
            entry.size = len(content)
            tar.addfile(entry, io.BytesIO(content))
    return path


def dead_mirror() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
