"""Shared fixtures.

Data: every test that only needs *some* data trains and reads data the tests write themselves
(tests/synthetic.py), so that nothing is skipped where the real datasets are missing:
- `synthetic_dataset`: a small MNIST-like dataset as four gzipped IDX files, registered in-process
  in batchlab.data.registry.DATASETS (under `synthetic_dataset.name`, with the files' own SHA-256s);
  for the data layer and for runs in this process. A monkeypatched registry does not reach other
  processes (a sweep's run workers, DDP ranks): those take a `folder:` dataset;
- `synthetic_folder`: the same 10 classes as a `folder:` dataset with train/ and test/ (2,000 and
  500 images); `image_folder`: a tiny 3-class, 60-image one.

Tests whose subject is the real data (its checksums, its known contents, accuracy on it) are
marked `real_data` and take `fashion_dir` (Debian's dataset-fashion-mnist package, or
$BATCHLAB_TEST_FASHION_DIR) or `mnist_test_dir` (real MNIST test-set files in
$BATCHLAB_TEST_MNIST_DIR); they are skipped, with the reason, where those are missing. CI provides
both. BATCHLAB_TEST_FASHION_DIR=/nonexistent hides the system copy, from the tests and from
batchlab's look-up in the tests' process alike.
"""

from __future__ import annotations

import atexit
import functools
import http.server
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from synthetic import IDX_FILES, dataset_info, write_folder_dataset, write_idx_dataset, write_image_folder

FASHION_ENV = "BATCHLAB_TEST_FASHION_DIR"
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
REAL_DATA_FIXTURES = {"fashion_dir", "mnist_test_dir"}


def keep_hypothesis_out_of_the_repository() -> None:
    """Even without an example database, Hypothesis caches Unicode tables and the constants it
    finds in the code under ./.hypothesis, the constants while pytest collects the tests: its home
    is a temporary folder of this session instead, set as this conftest is imported, before the
    test modules (unless $HYPOTHESIS_STORAGE_DIRECTORY names one)."""
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return
    home = tempfile.mkdtemp(prefix="batchlab-hypothesis-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    set_hypothesis_home_dir(home)


keep_hypothesis_out_of_the_repository()


def pytest_collection_modifyitems(config, items):
    """A test that takes the real data must say so (@pytest.mark.real_data): only those may be
    skipped for lack of data."""
    unmarked = [item.nodeid for item in items if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ()))
                and not item.get_closest_marker("real_data")]
    if unmarked:
        raise pytest.UsageError("tests that take fashion_dir or mnist_test_dir must be marked real_data: "
                                + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's real cache and $BATCHLAB_DATA; with
    $BATCHLAB_TEST_FASHION_DIR set, batchlab's system copy of Fashion-MNIST is that folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("BATCHLAB_DATA", raising=False)
    if os.environ.get(FASHION_ENV):
        import dataclasses

        from batchlab.data import registry

        fashion = registry.DATASETS["fashion-mnist"]
        monkeypatch.setitem(registry.DATASETS, "fashion-mnist",
                            dataclasses.replace(fashion, system_dirs=(os.environ[FASHION_ENV],)))
    return cache


# --- the real datasets (tests marked real_data) ----------------------------------------------------

@pytest.fixture
def fashion_dir() -> Path:
    directory = Path(os.environ.get(FASHION_ENV) or FASHION_SYSTEM_DIR)
    if not (directory / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found in {directory} (apt-get install dataset-fashion-mnist, "
                    f"or ${FASHION_ENV})")
    return directory


@pytest.fixture
def mnist_test_dir() -> Path:
    directory = os.environ.get("BATCHLAB_TEST_MNIST_DIR")
    if not directory or not (Path(directory) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST test files not given ($BATCHLAB_TEST_MNIST_DIR)")
    return Path(directory)


# --- synthetic data --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def synthetic_idx_dir(tmp_path_factory) -> Path:
    """A folder holding the synthetic dataset's four gzipped IDX files (2,000 training and 500 test
    images). Shared by the session: copy the files before changing them."""
    return write_idx_dataset(tmp_path_factory.mktemp("synthetic-idx"))


@dataclass(frozen=True)
class RegisteredDataset:
    name: str  # the registry name: RunSpec(dataset=name), data.load(name, directory)
    directory: Path  # the four .gz files (do not change them: copy them first)
    info: object  # its batchlab.data.registry.DatasetInfo

    @property
    def files(self):
        """The registry's DataFiles: train images, train labels, test images, test labels."""
        return self.info.files

    def path(self, index: int) -> Path:
        """The .gz file of files[index]."""
        return self.directory / f"{IDX_FILES[index]}.gz"


@pytest.fixture
def synthetic_dataset(synthetic_idx_dir, monkeypatch) -> RegisteredDataset:
    """The synthetic IDX dataset registered, for this test and in this process only, as
    `synthetic` (10 classes named in synthetic.CLASS_NAMES, SHA-256s of its own files, no system
    folder, a mirror nothing listens on)."""
    from batchlab.data import registry

    info = dataset_info(synthetic_idx_dir)
    monkeypatch.setitem(registry.DATASETS, info.name, info)
    return RegisteredDataset(info.name, synthetic_idx_dir, info)


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory) -> Path:
    """The synthetic dataset as a folder of PNGs, train/CLASS/ and test/CLASS/ (2,000 and 500
    images): use as --dataset folder:PATH; it reaches every process a run starts. Shared by the
    session: do not change it."""
    return write_folder_dataset(tmp_path_factory.mktemp("synthetic-folder"))


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Path of a 3-class, 60-image folder dataset (use as --dataset folder:PATH)."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def serve():
    """serve(folder) → the base URL of a local HTTP server for that folder (a mirror in a test)."""
    servers = []

    def start(directory):
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
