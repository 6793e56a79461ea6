"""Datasets: registry, where the files are looked up, IDX reading with checksums, folders of images.

A registered dataset names its files and its format: how the files sit in a folder, how they are
verified and how they become a Dataset. Two formats:
- IDX (here): MNIST and Fashion-MNIST as their four original IDX files (gzipped or not), each
  verified by the SHA-256 of its decompressed content;
- a CIFAR archive (cifar.py): CIFAR-10 and CIFAR-100 as their official python-version archive,
  read in place, verified by the publisher's MD5 before anything in it is unpickled.
Either way a truncated download, a corrupted file or a look-alike from another dataset is rejected
with a one-line error.

Look-up for a registered dataset NAME: with --data-dir, that folder only (a user who names a
folder must never silently get another copy). Without it: $BATCHLAB_DATA, the user cache dir
(where `batchlab data download` writes), then system directories a distribution installs
(Debian/Ubuntu's `dataset-fashion-mnist`). In each directory the files may sit in a NAME/
sub-folder (or that of a dataset sharing them: cifar100-coarse reads cifar100's archive) or
directly in it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import platformdirs

from ..core.errors import DataError
from .cifar import CifarArchive, CifarArrays, CifarLabels, decode, md5_problem
from .dataset import Dataset
from .resize import resized


@dataclass(frozen=True)
class DataFile:
    """One IDX file of a dataset."""

    name: str  # file name without .gz, e.g. train-images-idx3-ubyte
    # SHA-256 of the decompressed content; None where no trusted published value is known
    # (the file is then checked structurally and its hash recorded with the run).
    sha256: str | None


class DataFormat(Protocol):
    """How a registered dataset's files sit in a folder, are checked and become a Dataset. `file`
    is one of DatasetInfo.files, of the kind the format reads."""

    def classes(self, info: DatasetInfo) -> int:
        """How many classes the dataset has."""

    def contents(self, info: DatasetInfo) -> str:
        """What a user puts in a folder to have the dataset, for messages."""

    def file_path(self, directory: Path, file) -> Path | None:
        """The file in `directory`, if present (not yet checked)."""

    def missing_name(self, file) -> str:
        """The file as a message names it when it is missing."""

    def served_name(self, file) -> str:
        """Its name on a mirror, and in the folder a download writes to."""

    def served_problem(self, path: Path, file) -> str | None:
        """What is wrong with a downloaded copy, or None; may raise DataError or OSError too."""

    def check_file(self, path: Path, file, dataset: str) -> str:
        """Verify the file at `path` as fully as loading it would; the status `verify` shows."""

    def load(self, info: DatasetInfo, directory: Path) -> Dataset:
        """The dataset from the files in `directory`, verified; DataError if anything is wrong."""


class IdxFormat:
    """Four IDX files (train images, train labels, test images, test labels), gzipped or plain,
    each verified by the SHA-256 of its decompressed content and by its IDX structure."""

    def classes(self, info: DatasetInfo) -> int:
        return len(info.class_names)  # IDX files hold no names: the registry lists them

    def contents(self, info: DatasetInfo) -> str:
        return "the four IDX files"

    def file_path(self, directory: Path, file: DataFile) -> Path | None:
        return file_path(directory, file)

    def missing_name(self, file: DataFile) -> str:
        return f"{file.name}(.gz)"

    def served_name(self, file: DataFile) -> str:
        return f"{file.name}.gz"

    def served_problem(self, path: Path, file: DataFile) -> str | None:
        raw = path.read_bytes()
        if not raw:  # gunzip would make it empty content, reported as a checksum mismatch
            return "the file is empty (0 bytes)"
        content = gunzip(raw)
        problem = checksum_problem(content, file)
        if problem:
            return f"served a corrupted file, {problem}"
        parse_idx(content, "served file")
        return None

    def check_file(self, path: Path, file: DataFile, dataset: str) -> str:
        parse_idx(read_verified(path, file, dataset), str(path))
        return "ok (SHA-256)" if file.sha256 else "ok (structure only: no published SHA-256)"

    def load(self, info: DatasetInfo, directory: Path) -> Dataset:
        digest = hashlib.sha256()
        arrays = []
        for file in info.files:
            path = file_path(directory, file)
            content = read_verified(path, file, info.name)
            digest.update(hashlib.sha256(content).digest())
            arrays.append(parse_idx(content, str(path)))
        train_x, train_y, test_x, test_y = arrays
        for images, labels, part in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{directory}: {part} images {images.shape} and labels {labels.shape} do not match")
            if labels.max(initial=0) >= info.classes:
                raise DataError(f"{directory}: {part} labels exceed {info.classes} classes")
        # IDX holds gray images (N, H, W): one channel each.
        return Dataset(info.name, train_x[:, None], train_y.astype(np.int64), test_x[:, None],
                       test_y.astype(np.int64), info.classes, digest.hexdigest()[:16], str(directory),
                       info.class_names)


@dataclass(frozen=True)
class CifarFormat:
    """One official CIFAR archive (cifar.py), read in place: the publisher's MD5 is checked
    before anything in it is unpickled, then the batches are decoded and checked."""

    labels: CifarLabels  # which labels and class names of the archive the dataset uses

    def classes(self, info: DatasetInfo) -> int:
        return self.labels.classes  # the names come from the archive's meta

    def contents(self, info: DatasetInfo) -> str:
        return " ".join(archive.name for archive in info.files) + " (as published, not extracted)"

    def file_path(self, directory: Path, archive: CifarArchive) -> Path | None:
        path = directory / archive.name
        return path if path.is_file() else None

    def missing_name(self, archive: CifarArchive) -> str:
        return archive.name

    def served_name(self, archive: CifarArchive) -> str:
        return archive.name

    def served_problem(self, path: Path, archive: CifarArchive) -> str | None:
        problem = md5_problem(path, archive)
        if problem:
            return problem
        decode(path, archive, self.labels)  # the publisher's file, but does it hold what we read?
        return None

    def check_file(self, path: Path, archive: CifarArchive, dataset: str) -> str:
        self.checked_arrays(path, archive, dataset)
        return "ok (MD5, decoded)"

    def load(self, info: DatasetInfo, directory: Path) -> Dataset:
        archive = info.files[0]
        path = self.file_path(directory, archive)
        arrays = self.checked_arrays(path, archive, info.name)
        return Dataset(info.name, arrays.train_images, arrays.train_labels, arrays.test_images,
                       arrays.test_labels, self.labels.classes, arrays.checksum(), str(path), arrays.class_names)

    def checked_arrays(self, path: Path, archive: CifarArchive, dataset: str) -> CifarArrays:
        try:
            problem = md5_problem(path, archive)
        except OSError as error:
            raise DataError(f"{path}: cannot be read ({error}); {download_hint(dataset)}") from None
        if problem:
            raise DataError(f"{path}: {problem}; {download_hint(dataset)}")
        try:
            return decode(path, archive, self.labels)
        except DataError as error:
            # The publisher's file, yet not as read here: downloading it again would not help.
            raise DataError(f"{path}: {error}") from None


IDX = IdxFormat()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    # What sits on disk and on the mirrors, of the kind `format` reads: IDX's train images, train
    # labels, test images and test labels; a CIFAR archive.
    files: tuple[DataFile, ...] | tuple[CifarArchive, ...]
    mirrors: tuple[str, ...]  # base URLs; a file's URL is base + its served name
    class_names: tuple[str, ...] = ()  # label i is class_names[i]; () where the files name them
    system_dirs: tuple[str, ...] = ()
    format: DataFormat = IDX
    shares_files_with: str | None = None  # a dataset whose folder holds this one's files too

    @property
    def classes(self) -> int:
        return self.format.classes(self)

    @property
    def folders(self) -> tuple[str, ...]:
        """Sub-folders of a data directory that may hold the files, in the order looked in."""
        return (self.name,) + ((self.shares_files_with,) if self.shares_files_with else ())

    @property
    def download_folder(self) -> str:
        """The cache's sub-folder a download writes to: shared files are fetched once."""
        return self.shares_files_with or self.name


CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
# The publishers' archives and their MD5s (as published on the mirror's page, and used by torchvision).
CIFAR10_ARCHIVE = CifarArchive(
    "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{number}" for number in range(1, 6)), test_members=("test_batch",),
    meta_member="batches.meta")
CIFAR100_ARCHIVE = CifarArchive(
    "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
    train_members=("train",), test_members=("test",), meta_member="meta")

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
    "cifar10": DatasetInfo(
        name="cifar10", files=(CIFAR10_ARCHIVE,), mirrors=CIFAR_MIRRORS,
        format=CifarFormat(CifarLabels(b"labels", b"label_names", classes=10)),
    ),
    "cifar100": DatasetInfo(
        name="cifar100", files=(CIFAR100_ARCHIVE,), mirrors=CIFAR_MIRRORS,
        format=CifarFormat(CifarLabels(b"fine_labels", b"fine_label_names", classes=100)),
    ),
    # The 20 superclasses of CIFAR-100, from the same archive.
    "cifar100-coarse": DatasetInfo(
        name="cifar100-coarse", files=(CIFAR100_ARCHIVE,), mirrors=CIFAR_MIRRORS,
        format=CifarFormat(CifarLabels(b"coarse_labels", b"coarse_label_names", classes=20)),
        shares_files_with="cifar100",
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


def dirs_under(root: Path, info: DatasetInfo) -> list[Path]:
    """Where in a data directory the dataset's files may sit: its sub-folders, then the directory."""
    return [root / folder for folder in info.folders] + [root]


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Directories looked in, in order, for dataset `name`."""
    info = registered(name)
    if data_dir:
        # --data-dir is a promise: only that folder. Falling back to another copy would train
        # on data the user did not choose, without a word.
        return dirs_under(Path(data_dir), info)
    env = os.environ.get("BATCHLAB_DATA")
    dirs = []
    for root in ([Path(env)] if env else []) + [cache_dir()]:
        dirs += dirs_under(root, info)
    return dirs + [Path(p) for p in info.system_dirs]


def file_path(directory: Path, file: DataFile) -> Path | None:
    """The IDX file in `directory`, gzipped or plain, if present."""
    for candidate in (directory / (file.name + ".gz"), directory / file.name):
        if candidate.is_file():
            return candidate
    return None


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    """First directory holding all files of the dataset, or None."""
    info = registered(name)
    for directory in search_dirs(name, data_dir):
        if all(info.format.file_path(directory, f) for f in info.files):
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
        return gunzip(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot be read or decompressed ({error}); {download_hint(dataset)}") from None


def gunzip(raw: bytes) -> bytes:
    """gzip.decompress, a corrupted deflate stream raised as gzip.BadGzipFile (an OSError, which
    the callers report in one line): gzip lets zlib.error, no OSError, through as a traceback."""
    try:
        return gzip.decompress(raw)
    except zlib.error as error:
        raise gzip.BadGzipFile(f"corrupted compressed data ({error})") from None


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


# NumPy 1.x holds at most 32 dimensions (2.x: 64); a header claiming more would fail the reshape.
MAX_IDX_DIMS = 32


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
    if ndim > MAX_IDX_DIMS:
        raise DataError(f"{source}: IDX header claims {ndim} dimensions (at most {MAX_IDX_DIMS} are read)")
    shape = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    # NumPy refuses a shape whose nonzero sizes multiply beyond its index range, even with a size
    # 0 among them (0 x 2**31 x 2**31 x 2 holds no byte, yet cannot be made).
    if math.prod(size for size in shape if size) > np.iinfo(np.intp).max:
        raise DataError(f"{source}: IDX sizes {'x'.join(map(str, shape))} are too large")
    # math.prod, exact: np.prod wraps around in int64, and dimensions whose product wraps to the
    # data's length (e.g. 2**31 x 2**31 x 4 = 2**64 -> 0) would pass this check and fail the reshape.
    expected = header + math.prod(shape)
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
    return take_preloaded(name, info, directory) or info.format.load(info, directory)


# The dataset the run-worker server loaded before it forked a run (runner/worker_server.py), with its
# name and the identity of its files: the fork finds it here, verified, instead of reading,
# decompressing and hashing the files again (Fashion-MNIST: ~0.35 s of every run). The name too: two
# datasets can read the same files (cifar100 and cifar100-coarse) into different labels. One dataset
# at most. A file replaced or written since is read again.
_preloaded: tuple[str, tuple, Dataset] | None = None


def take_preloaded(name: str, info: DatasetInfo, directory: Path) -> Dataset | None:
    """The preloaded dataset if it is `name` from these very files, handed over: this process keeps
    no reference to it, so a run frees what it does not copy to its device (a maxbatch probe keeps
    only its batch's images, and --memory-limit counts nothing more than without the server)."""
    global _preloaded
    if _preloaded is None or _preloaded[:2] != (name, files_identity(info, directory)):
        return None
    dataset, _preloaded = _preloaded[2], None
    return dataclasses.replace(dataset, preloaded=True)


def files_identity(info: DatasetInfo, directory: Path) -> tuple | None:
    """Path, size, modification and change times, inode and device of each of the dataset's files in
    `directory`; None where one is missing or cannot be read."""
    identity = []
    for file in info.files:
        path = info.format.file_path(directory, file)
        try:
            found = os.stat(path) if path is not None else None
        except OSError:
            found = None
        if found is None:
            return None
        # ctime too: a copy that keeps the old time and size (cp -p onto the file) changes only it.
        identity.append((str(path), found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino, found.st_dev))
    return tuple(identity)


def drop_preloaded() -> None:
    """Hold no preloaded dataset (the next run's is not registered, or could not be loaded)."""
    global _preloaded
    _preloaded = None


def preload(name: str, data_dir: str | Path | None = None) -> None:
    """Load registered dataset `name` for the runs forked from this process (the run-worker server
    only: a dataset held here is shared with every later fork), in place of the one loaded before.
    Anything wrong with it is left for the run to find and report: nothing is held then."""
    global _preloaded
    if not is_known_dataset(name) or name.startswith(FOLDER_PREFIX):
        drop_preloaded()
        return
    directory = locate(name, data_dir)
    info = registered(name)
    identity = files_identity(info, directory) if directory is not None else None
    if identity is None:
        _preloaded = None
    elif _preloaded is None or _preloaded[:2] != (name, identity):
        _preloaded = None  # freed before the next one is read: never two in memory
        try:
            _preloaded = (name, identity, info.format.load(info, directory))
        except DataError:
            pass


def data_dir_problem(name: str, data_dir: str | Path) -> str | None:
    """What keeps `data_dir` (itself or its NAME/ sub-folder) from holding dataset `name`, or None.
    Existence only: the content is verified on load."""
    if name.startswith(FOLDER_PREFIX):
        return "--data-dir does not apply to folder: datasets; the path is in --dataset folder:PATH"
    info = registered(name)
    root = Path(data_dir)
    if not root.exists():
        return f"--data-dir {root} does not exist"
    if not root.is_dir():
        return f"--data-dir {root} is not a folder"
    # Name the files lacking in the candidate closest to complete: that is the one the user meant.
    data_format = info.format
    lacking = {d: [data_format.missing_name(f) for f in info.files if not data_format.file_path(d, f)]
               for d in [root] + [root / folder for folder in info.folders]}
    best = min(lacking, key=lambda d: len(lacking[d]))  # on a tie, the folder itself
    if not lacking[best]:
        return None
    where = f" in {best}" if best != root else ""
    them = "it" if len(info.files) == 1 else "them"
    return (f"--data-dir {root} holds no complete {name}: missing {', '.join(lacking[best])}{where} "
            f"(`batchlab data download {name} --dest {root}` fetches {them})")


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
    info = registered(name)
    looked = ", ".join(str(d) for d in search_dirs(name, data_dir))
    hint = f"run `batchlab data download {name}` (needs network)"
    if name == "fashion-mnist":
        hint += ", install Debian/Ubuntu's dataset-fashion-mnist package"
    return (f"dataset {name} not found (looked in {looked}); {hint}, "
            f"or put {info.format.contents(info)} in a folder and pass --data-dir")


def dataset_problem(name: str) -> str | None:
    """What is wrong with the dataset name itself, or None: `folder:` without a path would
    otherwise read the current folder."""
    if name.startswith(FOLDER_PREFIX) and not name[len(FOLDER_PREFIX):].strip():
        return "folder: needs a path, e.g. --dataset folder:~/images"
    return None


def load(name: str, data_dir: str | Path | None = None, image_size: int = 0, strict_images: bool = False) -> Dataset:
    """Load a registered dataset or a `folder:PATH` of images, verified, at `image_size` (0 = the
    data's own; see resize.py). `strict_images`: refuse a folder with an undecodable image."""
    problem = dataset_problem(name)
    if problem:
        raise DataError(problem)
    if name.startswith(FOLDER_PREFIX):
        from .imagefolder import load_folder  # Pillow only where it is needed
        return load_folder(name[len(FOLDER_PREFIX):], image_size, strict_images)
    return resized(load_registered(name, data_dir), image_size)


def verify(name: str, data_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(file path, status) for every file of a registered dataset; raises DataError if any is bad."""
    directory = locate(name, data_dir)
    if directory is None:
        raise DataError(missing_message(name, data_dir))
    info = registered(name)
    rows = []
    for file in info.files:
        path = info.format.file_path(directory, file)
        rows.append((str(path), info.format.check_file(path, file, name)))
    return rows
