"""Datasets: registry, where the files are looked up, IDX reading with checksums, folders of images.

MNIST and Fashion-MNIST are read from their original IDX files (gzipped or not). Every file is
verified by the SHA-256 of its decompressed content before use, so a truncated download, a
corrupted file or a look-alike from another dataset is rejected with a one-line error.

Look-up for a registered dataset NAME: with --data-dir, that folder only (a user who names a
folder must never silently get another copy). Without it: $BATCHLAB_DATA, the user cache dir
(where `batchlab data download` writes), then system directories a distribution installs
(Debian/Ubuntu's `dataset-fashion-mnist`). In each directory the files may sit in a NAME/
sub-folder or directly in it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from ..core.errors import DataError
from .dataset import Dataset


@dataclass(frozen=True)
class DataFile:
    name: str  # file name without .gz, e.g. train-images-idx3-ubyte
    # SHA-256 of the decompressed content; None where no trusted published value is known
    # (the file is then checked structurally and its hash recorded with the run).
    sha256: str | None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: tuple[DataFile, DataFile, DataFile, DataFile]  # train images, train labels, test images, test labels
    mirrors: tuple[str, ...]  # base URLs; a file's URL is base + name + ".gz"
    class_names: tuple[str, ...]  # label i is class_names[i]
    system_dirs: tuple[str, ...] = ()

    @property
    def classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        files=(
            # No SHA-256 of the decompressed MNIST training images has been published that we
            # can trust; the other three are the well-known values.
            DataFile("train-images-idx3-ubyte", None),
            DataFile("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            DataFile("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            DataFile("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        class_names=tuple(str(digit) for digit in range(10)),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        files=(
            DataFile("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            DataFile("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            DataFile("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            DataFile("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # The official label names (github.com/zalandoresearch/fashion-mnist), in label order.
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

FOLDER_PREFIX = "folder:"


def is_known_dataset(name: str) -> bool:
    return name in DATASETS or name.startswith(FOLDER_PREFIX)


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("batchlab")) / "datasets"


def registered(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Directories looked in, in order, for dataset `name`."""
    system_dirs = [Path(p) for p in registered(name).system_dirs]
    if data_dir:
        # --data-dir is a promise: only that folder. Falling back to another copy would train
        # on data the user did not choose, without a word.
        return [Path(data_dir) / name, Path(data_dir)]
    env = os.environ.get("BATCHLAB_DATA")
    dirs = []
    for root in ([Path(env)] if env else []) + [cache_dir()]:
        dirs += [root / name, root]
    return dirs + system_dirs


def file_path(directory: Path, file: DataFile) -> Path | None:
    """The file in `directory`, gzipped or plain, if present."""
    for candidate in (directory / (file.name + ".gz"), directory / file.name):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    """First directory holding all four files of the dataset, or None."""
    info = registered(name)
    for directory in search_dirs(name, data_dir):
        if all(file_path(directory, f) for f in info.files):
            return directory
    return None


def download_hint(dataset: str | None) -> str:
    return f"delete it and run `batchlab data download{' ' + dataset if dataset else ''}`"


def decompressed(path: Path, dataset: str | None = None) -> bytes:
    """Content of `path`, gunzipped if it ends in .gz. `dataset` names it in the advice."""
    try:
        raw = path.read_bytes()
        # Said plainly: gunzip turns an empty file into empty content, which would otherwise
        # be reported as a checksum mismatch or a bad IDX header.
        if not raw:
            raise DataError(f"{path}: the file is empty (0 bytes); {download_hint(dataset)}")
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot be read or decompressed ({error}); {download_hint(dataset)}") from None


def checksum_problem(content: bytes, file: DataFile) -> str | None:
    """None if `content` is `file` as registered, else what is wrong with it."""
    if file.sha256 is None:
        return None
    digest = hashlib.sha256(content).hexdigest()
    if digest == file.sha256:
        return None
    return f"checksum mismatch (SHA-256 {digest[:12]}…, expected {file.sha256[:12]}…)"


def read_verified(path: Path, file: DataFile, dataset: str | None = None) -> bytes:
    """Decompressed content of `path`, rejected unless its SHA-256 matches the registry."""
    content = decompressed(path, dataset)
    problem = checksum_problem(content, file)
    if problem:
        raise DataError(f"{path}: {problem}; the file is corrupted or not this dataset — {download_hint(dataset)}")
    return content


def parse_idx(content: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes (big-endian header: 0, 0, type 0x08 = ubyte, number of dimensions, then
    one uint32 per dimension) into a uint8 array; any inconsistency is a DataError."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number)")
    if content[2] != 0x08:
        raise DataError(f"{source}: IDX element type {content[2]:#04x} is not unsigned byte")
    ndim = content[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(content) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise DataError(f"{source}: IDX file is {len(content)} bytes, its header promises {expected} "
                        "(truncated or corrupted)")
    # A copy: frombuffer views the read-only bytes, and torch wants writable arrays.
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_registered(name: str, data_dir: str | Path | None = None) -> Dataset:
    directory = locate(name, data_dir)
    if directory is None:
        raise DataError(missing_message(name, data_dir))
    info = registered(name)
    digest = hashlib.sha256()
    arrays = []
    for file in info.files:
        path = file_path(directory, file)
        content = read_verified(path, file, name)
        digest.update(hashlib.sha256(content).digest())
        arrays.append(parse_idx(content, str(path)))
    train_x, train_y, test_x, test_y = arrays
    for images, labels, part in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{directory}: {part} images {images.shape} and labels {labels.shape} do not match")
        if labels.max(initial=0) >= info.classes:
            raise DataError(f"{directory}: {part} labels exceed {info.classes} classes")
    # IDX holds gray images (N, H, W): one channel each.
    return Dataset(name, train_x[:, None], train_y.astype(np.int64), test_x[:, None], test_y.astype(np.int64),
                   info.classes, digest.hexdigest()[:16], str(directory), info.class_names)


def data_dir_problem(name: str, data_dir: str | Path) -> str | None:
    """What keeps `data_dir` (itself or its NAME/ sub-folder) from holding dataset `name`, or None."""
    if name.startswith(FOLDER_PREFIX):
        return "--data-dir does not apply to folder: datasets; the path is in --dataset folder:PATH"
    info = registered(name)
    root = Path(data_dir)
    if not root.exists():
        return f"--data-dir {root} does not exist"
    if not root.is_dir():
        return f"--data-dir {root} is not a folder"
    # Name the files lacking in the candidate closest to complete: that is the one the user meant.
    lacking = {d: [f.name + "(.gz)" for f in info.files if not file_path(d, f)] for d in (root, root / name)}
    best = min(lacking, key=lambda d: len(lacking[d]))  # on a tie, the folder itself
    if not lacking[best]:
        return None
    where = f" in {best}" if best != root else ""
    return (f"--data-dir {root} holds no complete {name}: missing {', '.join(lacking[best])}{where} "
            f"(`batchlab data download {name} --dest {root}` fetches them)")


def check_data_dir(name: str, data_dir: str | Path | None) -> None:
    """Raise DataError unless `data_dir` (if given) holds dataset `name`: called before any run
    starts, so a wrong --data-dir stops a sweep at once instead of failing every run."""
    if not data_dir:
        return
    problem = data_dir_problem(name, data_dir)
    if problem:
        raise DataError(problem)


def missing_message(name: str, data_dir: str | Path | None = None) -> str:
    if data_dir:
        problem = data_dir_problem(name, data_dir)
        if problem:
            return problem
    looked = ", ".join(str(d) for d in search_dirs(name, data_dir))
    hint = f"run `batchlab data download {name}` (needs network)"
    if name == "fashion-mnist":
        hint += ", install Debian/Ubuntu's dataset-fashion-mnist package"
    return (f"dataset {name} not found (looked in {looked}); {hint}, "
            "or put the four IDX files in a folder and pass --data-dir")


def dataset_problem(name: str) -> str | None:
    """What is wrong with the dataset name itself, or None: `folder:` without a path would
    otherwise read the current folder."""
    if name.startswith(FOLDER_PREFIX) and not name[len(FOLDER_PREFIX):].strip():
        return "folder: needs a path, e.g. --dataset folder:~/images"
    return None


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load a registered dataset or a `folder:PATH` of images, verified."""
    problem = dataset_problem(name)
    if problem:
        raise DataError(problem)
    if name.startswith(FOLDER_PREFIX):
        from .imagefolder import load_folder  # Pillow only where it is needed
        return load_folder(name[len(FOLDER_PREFIX):])
    return load_registered(name, data_dir)


def verify(name: str, data_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(file path, status) for every file of a registered dataset; raises DataError if any is bad."""
    directory = locate(name, data_dir)
    if directory is None:
        raise DataError(missing_message(name, data_dir))
    rows = []
    for file in registered(name).files:
        path = file_path(directory, file)
        content = read_verified(path, file, name)
        parse_idx(content, str(path))
        status = "ok (SHA-256)" if file.sha256 else "ok (structure only: no published SHA-256)"
        rows.append((str(path), status))
    return rows
