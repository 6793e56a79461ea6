"""Downloads against a local HTTP server: a dead mirror, a mirror serving corrupted files, a good one,
of the synthetic dataset (tests/synthetic.py) registered in-process."""

import dataclasses
import gzip
import shutil

import pytest
from synthetic import TRAIN, dead_mirror

from batchlab.core.errors import DataError
from batchlab.data import registry as data
from batchlab.data.download import download, fetch_file


@pytest.fixture
def corrupted_mirror(tmp_path, synthetic_dataset):
    """A mirror serving the synthetic test files, each with its last byte changed (still valid gzip and IDX)."""
    folder = tmp_path / "corrupted"
    folder.mkdir()
    for index in (2, 3):
        content = bytearray(gzip.decompress(synthetic_dataset.path(index).read_bytes()))
        content[-1] ^= 0x01
        (folder / synthetic_dataset.path(index).name).write_bytes(gzip.compress(bytes(content)))
    return folder


def test_fetch_falls_back_past_dead_and_corrupted_mirrors(serve, synthetic_dataset, corrupted_mirror, tmp_path):
    mirrors = [dead_mirror(), serve(corrupted_mirror), serve(synthetic_dataset.directory)]
    dest = tmp_path / "cache"
    for index in (2, 3):
        file = synthetic_dataset.files[index]
        path = fetch_file(file, mirrors, dest)
        assert path == dest / f"{file.name}.gz"
        data.read_verified(path, file)  # valid copy kept: the good mirror's
        assert gzip.decompress(path.read_bytes()) == gzip.decompress(synthetic_dataset.path(index).read_bytes())
    assert sorted(p.name for p in dest.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_fetch_error_names_every_mirror_and_keeps_nothing(serve, synthetic_dataset, corrupted_mirror, tmp_path):
    mirrors = [dead_mirror(), serve(corrupted_mirror), serve(tmp_path / "empty-dir-404")]
    dest = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        fetch_file(synthetic_dataset.files[3], mirrors, dest)
    message = str(caught.value)
    assert "served a corrupted file, checksum mismatch" in message
    assert "HTTP 404" in message and "Connection refused" in message
    assert list(dest.iterdir()) == []  # no partial or corrupted file left behind


def test_download_whole_dataset_into_cache_then_load(serve, synthetic_dataset, isolated_cache, tmp_path, monkeypatch):
    name = synthetic_dataset.name
    system = tmp_path / "system"  # a complete copy where a distribution would install one
    shutil.copytree(synthetic_dataset.directory, system)
    monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(synthetic_dataset.info, system_dirs=(str(system),)))
    assert data.locate(name) == system
    dest = download(name, mirrors=[dead_mirror(), serve(synthetic_dataset.directory)])
    assert dest == data.cache_dir() / name
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in synthetic_dataset.directory.iterdir())
    assert data.locate(name) == dest  # found before the system copy
    assert data.load(name).train_images.shape == (TRAIN, 1, 28, 28)


def test_download_replaces_a_corrupted_cached_file(serve, synthetic_dataset, tmp_path):
    dest = tmp_path / "cached"
    shutil.copytree(synthetic_dataset.directory, dest)
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    served = tmp_path / "served"  # the mirror has only that file: the valid ones are kept, not fetched
    served.mkdir()
    shutil.copy(synthetic_dataset.path(3), served)
    download(synthetic_dataset.name, dest=dest, mirrors=[serve(served)])
    assert data.verify(synthetic_dataset.name, dest)
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == synthetic_dataset.path(3).read_bytes()
