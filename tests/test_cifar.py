"""CIFAR-10 and CIFAR-100 from small archives of the official layout that the tests write
(tests/synthetic.py), registered in-process under the real names with their own MD5s and served
from a local HTTP server: download, decoding, look-up, and the refusals (a corrupted, wrong,
missing or unreachable archive; a pickle that asks for code; batches that do not add up)."""

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic import (
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CifarContent,
    cifar10_content,
    cifar100_content,
    cifar_batch,
    cifar_pickle,
    dead_mirror,
    write_tar_gz,
)
from typer.testing import CliRunner

from batchlab.cli.app import app
from batchlab.core.errors import DataError
from batchlab.data import registry as data
from batchlab.data.download import download
from batchlab.spec.run import RunSpec

CIFAR10, CIFAR100 = data.CIFAR10_ARCHIVE, data.CIFAR100_ARCHIVE
CIFAR_NAMES = ("cifar10", "cifar100", "cifar100-coarse")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def register(monkeypatch, name: str, archive: Path, mirrors=()) -> None:
    """Register dataset `name`, in this process only, with the file at `archive` as the publisher's
    archive (its own MD5) and these mirrors."""
    info = data.DATASETS[name]
    published = dataclasses.replace(info.files[0], md5=md5(archive))
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(info, files=(published,), mirrors=tuple(mirrors)))


@dataclasses.dataclass(frozen=True)
class Published:
    path: Path  # the archive, alone in its folder: serve(path.parent) is a mirror, or a --data-dir
    content: CifarContent


@pytest.fixture
def cifar10(tmp_path) -> Published:
    content = cifar10_content()  # 5 training batches of 4 images, 6 test images
    return Published(write_tar_gz(tmp_path / "published" / CIFAR10.name, CIFAR10.folder, content.members), content)


@pytest.fixture
def cifar100(tmp_path) -> Published:
    content = cifar100_content()  # 12 training images, 6 test images
    return Published(write_tar_gz(tmp_path / "published100" / CIFAR100.name, CIFAR100.folder, content.members),
                     content)


def arrays_checksum(dataset) -> str:
    """The recipe the checksum recorded with a run follows: SHA-256 over the four arrays' SHA-256s."""
    digest = hashlib.sha256()
    for array in (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels):
        digest.update(hashlib.sha256(array.tobytes()).digest())
    return digest.hexdigest()[:16]


def one_line_error(action) -> str:
    with pytest.raises(DataError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    return message


# Download and decoding.

def test_download_then_load_cifar10(cifar10, serve, monkeypatch):
    register(monkeypatch, "cifar10", cifar10.path, [dead_mirror(), serve(cifar10.path.parent)])
    dest = download("cifar10")
    assert dest == data.cache_dir() / "cifar10"
    assert [path.name for path in dest.iterdir()] == [CIFAR10.name]  # the archive, kept as it is
    dataset = data.load("cifar10")
    content = cifar10.content
    assert dataset.train_images.shape == (20, 3, 32, 32) and dataset.test_images.shape == (6, 3, 32, 32)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int64
    # A stored row is 1024 red, 1024 green, 1024 blue values, each plane row-major: (C, H, W) as it is.
    assert np.array_equal(dataset.train_images.reshape(20, -1), content.train_rows)
    assert np.array_equal(dataset.test_images[3, 1, 0], content.test_rows[3, 1024:1056])
    assert dataset.train_labels.tolist() == content.train_labels[b"labels"].tolist()  # batches 1..5 in order
    assert dataset.test_labels.tolist() == content.test_labels[b"labels"].tolist()
    assert dataset.classes == 10 and dataset.class_names == CIFAR10_NAMES
    assert dataset.source == str(dest / CIFAR10.name)
    assert dataset.checksum == arrays_checksum(dataset)
    download("cifar10", mirrors=[dead_mirror()])  # a valid copy is kept, not fetched again


def test_cifar100_fine_and_coarse_labels_from_one_download(cifar100, serve, monkeypatch):
    for name in ("cifar100", "cifar100-coarse"):
        register(monkeypatch, name, cifar100.path, [serve(cifar100.path.parent)])
    dest = download("cifar100-coarse")
    assert dest == data.cache_dir() / "cifar100"  # where cifar100 finds it too: one download serves both
    assert data.locate("cifar100") == dest == data.locate("cifar100-coarse")
    fine, coarse = data.load("cifar100"), data.load("cifar100-coarse")
    content = cifar100.content
    assert fine.train_labels.tolist() == content.train_labels[b"fine_labels"].tolist()
    assert fine.test_labels.tolist() == content.test_labels[b"fine_labels"].tolist()
    assert coarse.train_labels.tolist() == content.train_labels[b"coarse_labels"].tolist()
    assert coarse.test_labels.tolist() == content.test_labels[b"coarse_labels"].tolist()
    assert (fine.classes, fine.class_names) == (100, CIFAR100_FINE_NAMES)
    assert (coarse.classes, coarse.class_names) == (20, CIFAR100_COARSE_NAMES)
    assert fine.train_images.shape == (12, 3, 32, 32)
    assert np.array_equal(fine.train_images.reshape(12, -1), content.train_rows)
    assert np.array_equal(coarse.test_images, fine.test_images)


# Look-up.

def test_data_dir_alone_is_read(cifar10, cifar100, tmp_path, monkeypatch):
    register(monkeypatch, "cifar10", cifar10.path)
    register(monkeypatch, "cifar100-coarse", cifar100.path)
    cached, chosen = data.cache_dir() / "cifar10", tmp_path / "chosen"
    for folder in (cached, chosen / "cifar10", chosen / "cifar100"):
        folder.mkdir(parents=True)
    shutil.copy(cifar10.path, cached)
    shutil.copy(cifar10.path, chosen / "cifar10")
    shutil.copy(cifar100.path, chosen / "cifar100")
    assert data.locate("cifar10") == cached
    assert data.locate("cifar10", chosen) == chosen / "cifar10"  # its NAME/ sub-folder
    assert data.load("cifar10", chosen).source == str(chosen / "cifar10" / CIFAR10.name)
    # cifar100-coarse reads CIFAR-100's archive, in a cifar100/ sub-folder as well as its own.
    assert data.locate("cifar100-coarse", chosen) == chosen / "cifar100"
    assert data.load("cifar100-coarse", chosen).classes == 20

    empty = tmp_path / "empty"
    empty.mkdir()
    assert data.locate("cifar10", empty) is None  # not the cached copy
    assert one_line_error(lambda: data.load("cifar10", empty)) == (
        f"--data-dir {empty} holds no complete cifar10: missing {CIFAR10.name} "
        f"(`batchlab data download cifar10 --dest {empty}` fetches it)")


# Refusals: one line, naming the URL or the archive, and nothing kept.

def flipped_byte(archive: Path, folder: Path) -> Path:
    """A copy of `archive` in `folder` with one byte in the middle of the compressed stream changed."""
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    folder.mkdir(parents=True, exist_ok=True)
    (folder / archive.name).write_bytes(bytes(raw))
    return folder / archive.name


@pytest.mark.parametrize("mirror_has", ["a corrupted archive", "another archive", "nothing", "no server"])
def test_bad_download_is_refused_and_leaves_nothing(mirror_has, cifar10, tmp_path, serve, monkeypatch):
    register(monkeypatch, "cifar10", cifar10.path)
    folder = tmp_path / "mirror"
    folder.mkdir()
    if mirror_has == "a corrupted archive":
        flipped_byte(cifar10.path, folder)
    if mirror_has == "another archive":  # a valid gzip tar, of the other layout
        write_tar_gz(folder / CIFAR10.name, CIFAR100.folder, cifar100_content().members)
    mirror = dead_mirror() if mirror_has == "no server" else serve(folder)
    dest = tmp_path / "dest"
    message = one_line_error(lambda: download("cifar10", dest, [mirror]))
    url = f"{mirror}{CIFAR10.name}"
    if mirror_has == "nothing":
        assert message == f"could not download {CIFAR10.name}: {url}: HTTP 404 File not found"
    elif mirror_has == "no server":
        assert message.startswith(f"could not download {CIFAR10.name}: {url}: ") and "Connection refused" in message
    else:
        assert message == (f"could not download {CIFAR10.name}: {url}: MD5 mismatch ({md5(folder / CIFAR10.name)[:12]}…, "
                           f"expected {md5(cifar10.path)[:12]}…): corrupted, or not {CIFAR10.name}")
    assert list(dest.iterdir()) == []


def test_download_that_does_not_decode_is_refused(tmp_path, serve, monkeypatch):
    # Registered with its own MD5, so only the decoding that follows the MD5 check can tell.
    not_a_tar = tmp_path / "mirror" / CIFAR10.name
    not_a_tar.parent.mkdir()
    not_a_tar.write_bytes(b"<html>a mirror's error page</html>" * 40)
    register(monkeypatch, "cifar10", not_a_tar)
    dest = tmp_path / "dest"
    message = one_line_error(lambda: download("cifar10", dest, [serve(not_a_tar.parent)]))
    assert "cifar-10-python.tar.gz: not a readable gzip tar archive" in message
    assert list(dest.iterdir()) == []


class Mkdir:
    """Unpickled, it would make a folder: code the pickle runs."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_pickle_asking_for_code_is_refused(tmp_path, serve, monkeypatch):
    ran = tmp_path / "code-ran"
    members = cifar10_content().members
    members["test_batch"] = cifar_pickle({b"data": Mkdir(ran), b"labels": []})
    archive = write_tar_gz(tmp_path / "published" / CIFAR10.name, CIFAR10.folder, members)
    register(monkeypatch, "cifar10", archive, [serve(archive.parent)])  # its MD5 passes: the unpickler decides
    refused = re.escape(f"{CIFAR10.folder}/test_batch: refused: the pickle asks for {os.mkdir.__module__}.mkdir")
    with pytest.raises(DataError, match=f"^{re.escape(str(archive))}: {refused}"):
        data.load("cifar10", archive.parent)
    with pytest.raises(DataError, match=refused):
        download("cifar10", tmp_path / "dest")
    assert not ran.exists()
    assert list((tmp_path / "dest").iterdir()) == []


def batch(rows: int, labels: list[int]) -> bytes:
    return cifar_batch(np.zeros((rows, 3072), dtype=np.uint8), {b"labels": np.array(labels)})


@pytest.mark.parametrize("change, problem", [
    ({"../escape": b"x"}, f"member {CIFAR10.folder}/../escape lies outside {CIFAR10.folder}/"),
    ({"data_batch_3": None}, f"lacks {CIFAR10.folder}/data_batch_3"),
    ({"test_batch": batch(3, [0, 1, 10])}, "test_batch: labels outside 0..9"),
    ({"test_batch": batch(3, [0, -1, 2])}, "test_batch: labels outside 0..9"),
    ({"test_batch": batch(3, [0, 1])}, "test_batch: 3 images but labels of shape (2,)"),
    ({"test_batch": b"not a pickle"}, f"{CIFAR10.folder}/test_batch: not a readable pickle"),
    ({"batches.meta": cifar_pickle({b"label_names": [b"cat"] * 9})}, "meta: 9 class names, expected 10"),
])
def test_archive_that_does_not_add_up_is_refused(change, problem, tmp_path, monkeypatch):
    members = {**cifar10_content().members, **change}
    members = {name: content for name, content in members.items() if content is not None}
    archive = write_tar_gz(tmp_path / CIFAR10.name, CIFAR10.folder, members)
    register(monkeypatch, "cifar10", archive)
    message = one_line_error(lambda: data.load("cifar10", tmp_path))
    assert message.startswith(f"{archive}: ") and problem in message


# Verify, and the names elsewhere.

def test_verify_reports_ok_and_a_corrupted_archive(cifar10, tmp_path, monkeypatch):
    register(monkeypatch, "cifar10", cifar10.path)
    assert data.verify("cifar10", cifar10.path.parent) == [(str(cifar10.path), "ok (MD5, decoded)")]
    corrupted = flipped_byte(cifar10.path, tmp_path / "corrupted")
    assert one_line_error(lambda: data.verify("cifar10", corrupted.parent)) == (
        f"{corrupted}: MD5 mismatch ({md5(corrupted)[:12]}…, expected {md5(cifar10.path)[:12]}…): corrupted, or not "
        f"{CIFAR10.name}; delete it and run `batchlab data download cifar10`")


def test_cifar_names_are_valid_in_specs_and_listed():
    for name in CIFAR_NAMES:
        RunSpec(dataset=name).validated()
    result = CliRunner().invoke(app, ["data", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")}
    assert set(CIFAR_NAMES) <= rows
