"""CIFAR-10 and CIFAR-100 from their official python-version archives, read in place (numpy only).

An archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz) holds one folder of pickled batches:
dicts whose byte-string keys give b"data", a uint8 array (N, 3072), each row 1024 red, 1024 green
and 1024 blue values of a 32x32 image in row-major order, and the labels as a list; a meta pickle
gives the class names.

Pickles run code when loaded, so nothing here unpickles an archive before its MD5 has been checked
against the publisher's (the registry does that first), and the unpickler itself accepts no global
but numpy's array reconstruction: a file that asks for anything else is refused. Members are read
from the compressed stream, never extracted to disk, and a member outside the archive's folder
refuses the whole archive.

Errors raised here say what is wrong without saying where: the caller prefixes the archive's path
or the URL it came from.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..core.errors import DataError

SIDE = 32
CHANNELS = 3


@dataclass(frozen=True)
class CifarArchive:
    """One published archive: the file a registered CIFAR dataset is made of."""

    name: str  # file name, on the mirror and on disk, e.g. cifar-10-python.tar.gz
    md5: str  # the publisher's MD5 of the archive file
    folder: str  # the one folder inside the archive, e.g. cifar-10-batches-py
    train_members: tuple[str, ...]  # pickles of the training set, in order
    test_members: tuple[str, ...]
    meta_member: str  # the pickle of the class names


@dataclass(frozen=True)
class CifarLabels:
    """Which labels of an archive a dataset uses: CIFAR-100 holds fine and coarse ones."""

    labels_key: bytes  # in each batch, e.g. b"fine_labels"
    names_key: bytes  # in the meta pickle, e.g. b"fine_label_names"
    classes: int


@dataclass(frozen=True)
class CifarArrays:
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: np.ndarray  # int64 (N,), native byte order
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    def checksum(self) -> str:
        """First 16 hex digits of a SHA-256 over the SHA-256s of the four arrays' bytes (the IDX
        recipe, with arrays for files): the same decoded data gives the same value on any machine."""
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            digest.update(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
        return digest.hexdigest()[:16]


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def md5_problem(path: Path, archive: CifarArchive) -> str | None:
    """None if `path` is the publisher's archive, else what is wrong with it."""
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    digest = md5_of(path)
    if digest == archive.md5:
        return None
    return f"MD5 mismatch ({digest[:12]}…, expected {archive.md5[:12]}…): corrupted, or not {archive.name}"


try:
    from numpy._core.multiarray import _reconstruct as RECONSTRUCT
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as RECONSTRUCT

# The only globals a CIFAR pickle names: numpy's array reconstruction. The archives were written by
# Python 2 and numpy 1 (numpy.core); numpy 2 writes numpy._core. dicts, lists, byte strings and ints
# are built by pickle opcodes, not globals, so no builtin needs to be allowed.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise DataError(f"refused: the pickle asks for {module}.{name}, which no CIFAR file holds")
        return allowed


def unpickle(content: bytes, member: str) -> dict:
    try:
        # encoding="bytes": the Python 2 strings (keys, names, the arrays' raw data) stay bytes.
        loaded = ArraysOnlyUnpickler(io.BytesIO(content), encoding="bytes").load()
    except DataError as error:
        raise DataError(f"{member}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as error:
        raise DataError(f"{member}: not a readable pickle ({error})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{member}: holds a {type(loaded).__name__}, not a dict")
    return loaded


def member_problem(member: tarfile.TarInfo, folder: str) -> str | None:
    """What keeps `member` from belonging in the archive's one folder, or None."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (folder,):
        return f"member {member.name} lies outside {folder}/"
    return None


def read_members(path: Path, archive: CifarArchive) -> dict[str, dict]:
    """The archive's train, test and meta pickles, decoded, by member name (without the folder).
    One pass over the compressed stream: tarfile re-reads a .tar.gz from the start on every
    backward seek."""
    wanted = set(archive.train_members + archive.test_members + (archive.meta_member,))
    decoded: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                problem = member_problem(member, archive.folder)
                if problem:
                    raise DataError(problem)
                name = PurePosixPath(member.name).relative_to(archive.folder).as_posix()
                if name not in wanted:
                    continue  # e.g. CIFAR-10's readme.html
                if not member.isfile():
                    raise DataError(f"member {member.name} is not a regular file")
                if name in decoded:
                    raise DataError(f"member {member.name} appears twice")
                decoded[name] = unpickle(tar.extractfile(member).read(), member.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"not a readable gzip tar archive ({error})") from None
    missing = sorted(wanted - set(decoded))
    if missing:
        raise DataError(f"lacks {', '.join(f'{archive.folder}/{name}' for name in missing)}")
    return decoded


def batch_arrays(batch: dict, member: str, labels: CifarLabels) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels (N,) of one batch, checked."""
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != CHANNELS * SIDE * SIDE:
        shape = getattr(data, "shape", None)
        raise DataError(f"{member}: b'data' is not uint8 rows of {CHANNELS * SIDE * SIDE} values (got {shape})")
    try:
        label_array = np.asarray(batch[labels.labels_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{member}: no list of integer {labels.labels_key!r}") from None
    if label_array.ndim != 1 or len(label_array) != len(data):
        raise DataError(f"{member}: {len(data)} images but labels of shape {label_array.shape}")
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= labels.classes):
        raise DataError(f"{member}: labels outside 0..{labels.classes - 1}")
    return data.reshape(len(data), CHANNELS, SIDE, SIDE), label_array


def split_arrays(decoded: dict[str, dict], members: tuple[str, ...], labels: CifarLabels):
    parts = [batch_arrays(decoded[name], name, labels) for name in members]
    # concatenate copies: the arrays are writable and contiguous, as torch wants them.
    return np.concatenate([images for images, _ in parts]), np.concatenate([lab for _, lab in parts])


def class_names(meta: dict, labels: CifarLabels) -> tuple[str, ...]:
    names = meta.get(labels.names_key)
    if not isinstance(names, list) or not all(isinstance(name, (bytes, str)) for name in names):
        raise DataError(f"meta: no list of names under {labels.names_key!r}")
    if len(names) != labels.classes:
        raise DataError(f"meta: {len(names)} class names, expected {labels.classes}")
    return tuple(name.decode("utf-8") if isinstance(name, bytes) else name for name in names)


def decode(path: Path, archive: CifarArchive, labels: CifarLabels) -> CifarArrays:
    """The arrays of an archive whose MD5 has been checked. Raises DataError saying what is wrong."""
    decoded = read_members(path, archive)
    train_images, train_labels = split_arrays(decoded, archive.train_members, labels)
    test_images, test_labels = split_arrays(decoded, archive.test_members, labels)
    return CifarArrays(train_images, train_labels, test_images, test_labels,
                       class_names(decoded[archive.meta_member], labels))
