"""Downloads against a local HTTP server: a dead mirror, a mirror serving corrupted files, a good one."""

import functools
import gzip
import http.server
import shutil
import socket
import threading

import pytest

from batchlab.core.errors import DataError
from batchlab.data import registry as data
from batchlab.data.download import download, fetch_file


@pytest.fixture
def serve():
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


def dead_mirror() -> str:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def corrupted_mirror(tmp_path, mnist_test_dir):
    folder = tmp_path / "corrupted"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        content = bytearray(gzip.decompress((mnist_test_dir / f"{name}.gz").read_bytes()))
        content[-1] ^= 0x01
        (folder / f"{name}.gz").write_bytes(gzip.compress(bytes(content)))
    return folder


def test_fetch_falls_back_past_dead_and_corrupted_mirrors(serve, mnist_test_dir, corrupted_mirror, tmp_path):
    mirrors = [dead_mirror(), serve(corrupted_mirror), serve(mnist_test_dir)]
    dest = tmp_path / "cache"
    for file in data.DATASETS["mnist"].files[2:]:
        path = fetch_file(file, mirrors, dest)
        assert path == dest / f"{file.name}.gz"
        data.read_verified(path, file)  # valid copy kept
    assert sorted(p.name for p in dest.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_fetch_error_names_every_mirror_and_keeps_nothing(serve, corrupted_mirror, tmp_path):
    mirrors = [dead_mirror(), serve(corrupted_mirror), serve(tmp_path / "empty-dir-404")]
    dest = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        fetch_file(data.DATASETS["mnist"].files[3], mirrors, dest)
    message = str(caught.value)
    assert "served a corrupted file, checksum mismatch" in message
    assert "HTTP 404" in message and "Connection refused" in message
    assert list(dest.iterdir()) == []  # no partial or corrupted file left behind


def test_download_whole_dataset_into_cache_then_load(serve, fashion_dir, isolated_cache):
    dest = download("fashion-mnist", mirrors=[dead_mirror(), serve(fashion_dir)])
    assert dest == data.cache_dir() / "fashion-mnist"
    assert data.locate("fashion-mnist") == dest  # found before the system copy
    assert data.load("fashion-mnist").train_images.shape == (60_000, 28, 28)


def test_download_replaces_a_corrupted_cached_file(serve, fashion_dir, tmp_path):
    dest = tmp_path / "fm"
    dest.mkdir()
    for file in data.DATASETS["fashion-mnist"].files:
        shutil.copy(fashion_dir / f"{file.name}.gz", dest)
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    download("fashion-mnist", dest=dest, mirrors=[serve(fashion_dir)])
    assert data.verify("fashion-mnist", dest)
