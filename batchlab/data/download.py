"""Download a registered dataset into the cache from its mirrors, verified before it is kept.

Each file is fetched to a temporary name, checked (SHA-256 of the decompressed content, IDX
structure) and only then renamed into place, so an interrupted or corrupted download never
leaves a file that looks valid. Mirrors are tried in order; the error names every failure.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import DataError
from .registry import DataFile, cache_dir, checksum_problem, file_path, parse_idx, read_verified, registered

TIMEOUT_SECONDS = 30


def fetch_file(file: DataFile, mirrors: list[str] | tuple[str, ...], dest: Path) -> Path:
    """Fetch `file` (as NAME.gz) from the first mirror that serves a valid copy into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / (file.name + ".gz")
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file.name + ".gz"
        handle, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{file.name}.", suffix=".part.gz")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            raw = tmp.read_bytes()
            if not raw:  # gunzip would make it empty content, reported as a checksum mismatch
                failures.append(f"{url}: the file is empty (0 bytes)")
                continue
            content = gzip.decompress(raw)
            problem = checksum_problem(content, file)
            if problem:
                failures.append(f"{url}: served a corrupted file, {problem}")
                continue
            parse_idx(content, url)
            os.replace(tmp, target)
            return target
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.reason}")
        except urllib.error.URLError as error:
            failures.append(f"{url}: {error.reason}")
        except (OSError, EOFError, gzip.BadGzipFile, DataError) as error:
            failures.append(f"{url}: {error}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {file.name}: " + "; ".join(failures))


def download(name: str, dest: Path | None = None, mirrors: list[str] | None = None) -> Path:
    """Make sure every file of dataset `name` is in `dest` (default: the cache) and valid.
    Files already there and valid are kept; the others are fetched."""
    info = registered(name)
    dest = Path(dest) if dest else cache_dir() / name
    for file in info.files:
        present = file_path(dest, file)
        if present is not None:
            try:
                parse_idx(read_verified(present, file, name), str(present))
                continue
            except DataError:
                present.unlink()  # corrupted: replace it with a fresh copy
        fetch_file(file, mirrors or info.mirrors, dest)
    return dest
