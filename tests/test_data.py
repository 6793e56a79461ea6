import dataclasses
import gzip
import shutil

import numpy as np
import pytest
from synthetic import CLASS_NAMES, TEST, TRAIN

from batchlab.core.errors import DataError
from batchlab.data import registry as data
from batchlab.data.registry import DataFile, parse_idx, read_verified

MNIST_TEST_IMAGES = data.DATASETS["mnist"].files[2]
MNIST_TEST_LABELS = data.DATASETS["mnist"].files[3]


@pytest.mark.real_data
def test_reads_real_mnist_test_set(mnist_test_dir):
    images = parse_idx(read_verified(mnist_test_dir / "t10k-images-idx3-ubyte.gz", MNIST_TEST_IMAGES))
    labels = parse_idx(read_verified(mnist_test_dir / "t10k-labels-idx1-ubyte.gz", MNIST_TEST_LABELS))
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,)
    # Known facts of the MNIST test set: 1,135 ones, 980 zeros, first label is 7.
    assert np.bincount(labels)[1] == 1135 and np.bincount(labels)[0] == 980 and labels[0] == 7
    assert images.max() == 255 and images.min() == 0


def test_corrupted_file_is_rejected(synthetic_dataset, tmp_path):
    content = bytearray(gzip.decompress(synthetic_dataset.path(3).read_bytes()))
    read_verified(synthetic_dataset.path(3), synthetic_dataset.files[3])  # intact, it passes
    content[100] ^= 0xFF  # one flipped byte
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bytes(content))
    with pytest.raises(DataError, match="checksum mismatch"):
        read_verified(bad, synthetic_dataset.files[3])


def test_truncated_gzip_is_rejected(synthetic_dataset, tmp_path):
    raw = synthetic_dataset.path(2).read_bytes()
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot be read or decompressed"):
        read_verified(bad, synthetic_dataset.files[2])


def test_truncated_idx_is_rejected_by_structure(synthetic_dataset):
    content = gzip.decompress(synthetic_dataset.path(3).read_bytes())
    assert len(parse_idx(content, "labels")) == TEST  # whole, it parses
    with pytest.raises(DataError, match=f"header promises {8 + TEST}"):
        parse_idx(content[:-5], "labels")
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02" + content[2:], "labels")


def test_wrong_dataset_fails_checksum(synthetic_dataset):
    # The synthetic test labels are a valid IDX file of the right kind but not MNIST's: only the
    # checksum can tell.
    path = synthetic_dataset.path(3)
    assert len(parse_idx(gzip.decompress(path.read_bytes()))) == TEST
    with pytest.raises(DataError, match="not this dataset"):
        read_verified(path, MNIST_TEST_LABELS)


def test_loads_a_registered_dataset_with_checksums(synthetic_dataset):
    dataset = data.load(synthetic_dataset.name, synthetic_dataset.directory)
    assert dataset.train_images.shape == (TRAIN, 1, 28, 28) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (TEST, 1, 28, 28)
    assert np.bincount(dataset.train_labels).tolist() == [TRAIN // 10] * 10  # balanced, as written
    assert dataset.classes == 10 and dataset.class_names == CLASS_NAMES and len(dataset.checksum) == 16
    assert dataset.source == str(synthetic_dataset.directory)


@pytest.mark.real_data
def test_loads_fashion_mnist_with_checksums(fashion_dir):
    dataset = data.load("fashion-mnist", fashion_dir)
    assert dataset.train_images.shape == (60_000, 1, 28, 28)
    assert dataset.test_images.shape == (10_000, 1, 28, 28)
    assert np.bincount(dataset.train_labels).tolist() == [6000] * 10  # balanced, as published
    assert dataset.classes == 10 and len(dataset.checksum) == 16
    assert dataset.class_names[9] == "Ankle boot"


def test_lookup_data_dir_alone_else_env_then_cache(synthetic_dataset, tmp_path, monkeypatch):
    name = synthetic_dataset.name
    first, second, third = (tmp_path / "first", tmp_path / "second" / name,
                            tmp_path / "cache" / "batchlab" / "datasets" / name)
    for folder in (first, second, third):
        folder.mkdir(parents=True)
        for index in range(4):
            shutil.copy(synthetic_dataset.path(index), folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("BATCHLAB_DATA", str(tmp_path / "second"))
    assert data.locate(name, first) == first
    assert data.locate(name, tmp_path / "elsewhere") is None  # --data-dir alone is read
    assert data.locate(name) == second  # the NAME/ sub-folder of $BATCHLAB_DATA
    monkeypatch.delenv("BATCHLAB_DATA")
    assert data.locate(name) == third  # then the cache


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as caught:
        data.load("mnist", tmp_path)
    message = str(caught.value)
    assert "batchlab data download mnist" in message and str(tmp_path) in message
    assert "\n" not in message


def test_structure_only_file_still_rejects_truncation(tmp_path):
    unknown = DataFile("x-idx1-ubyte", None)
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]))  # promises 5 items, has 3
    with pytest.raises(DataError, match="truncated"):
        parse_idx(read_verified(path, unknown), str(path))


def test_folder_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 30), ("bright", 220)):
        (tmp_path / cls).mkdir()
        for i in range(12):
            pixels = np.clip(rng.normal(level, 10, (40, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(tmp_path / cls / f"{i}.png")
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.classes == 2
    assert len(dataset.train_images) + len(dataset.test_images) == 24 and len(dataset.test_images) == 4
    assert dataset.train_images.shape[1:] == (3, 40, 32)  # saved as RGB, 32 wide and 40 high: kept
    bright = dataset.train_images[dataset.train_labels == 0]  # classes sorted: bright=0, dark=1
    assert bright.mean() > 150
    (tmp_path / "dark" / "broken.png").write_bytes(b"not an image")
    assert len(data.load(f"folder:{tmp_path}").skipped) == 1  # skipped with a note (tests/test_image_shapes.py)


def test_a_preloaded_dataset_is_handed_over_once_while_its_files_are_unchanged(synthetic_dataset, tmp_path,
                                                                             monkeypatch):
    """The run-worker server's preload (registry.preload): the run forked after it gets the arrays it
    loaded, verified, without reading them again, and this process keeps no reference to them; not
    under another dataset's name reading the same files; a file replaced since is read and verified
    again, so a corrupted one is refused as it is without the preload, and nothing corrupted is held."""
    monkeypatch.setattr(data, "_preloaded", None)  # this process's, as a fresh server's
    folder = shutil.copytree(synthetic_dataset.directory, tmp_path / "copy")
    data.preload(synthetic_dataset.name, folder)
    held = data._preloaded[2]
    handed = data.load_registered(synthetic_dataset.name, folder)
    assert handed.preloaded and handed.train_images is held.train_images and data._preloaded is None
    again = data.load_registered(synthetic_dataset.name, folder)  # read from the files
    assert not again.preloaded and np.array_equal(again.train_images, held.train_images)
    # Another name over the same files (cifar100-coarse reads cifar100's archive into other labels).
    monkeypatch.setitem(data.DATASETS, "twin", dataclasses.replace(synthetic_dataset.info, name="twin"))
    data.preload(synthetic_dataset.name, folder)
    assert not data.load_registered("twin", folder).preloaded
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] ^= 0xFF  # one flipped byte, in a file that replaces the original as a download would
    (tmp_path / "new.gz").write_bytes(gzip.compress(bytes(content), mtime=0))
    (tmp_path / "new.gz").replace(labels)
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_registered(synthetic_dataset.name, folder)
    data.preload(synthetic_dataset.name, folder)  # corrupted: the run says so, the server holds nothing
    assert data._preloaded is None
    data.preload(synthetic_dataset.name, synthetic_dataset.directory)
    assert data._preloaded is not None
    data.preload("folder:" + str(tmp_path), None)  # a folder of images is decoded by each run: not held
    assert data._preloaded is None
