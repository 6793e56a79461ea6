"""Download a registered dataset into the cache from its mirrors, verified before it is kept.

Each file is fetched to a temporary name in the destination, checked as its format says (IDX: the
SHA-256 of the decompressed content and the IDX structure; a CIFAR archive: the publisher's MD5,
then that it decodes) and only then renamed into place, so an interrupted, corrupted or wrong
download never leaves a file that looks valid. Mirrors are tried in order; the error names every
failure.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import DataError
from .registry import IDX, DataFile, DataFormat, cache_dir, registered

TIMEOUT_SECONDS = 30


def fetch_file(file: DataFile, mirrors: list[str] | tuple[str, ...], dest: Path,
               data_format: DataFormat = IDX) -> Path:
    """Fetch `file` (by its served name: NAME.gz for IDX) from the first mirror that serves a valid
    copy into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    served = data_format.served_name(file)
    target = dest / served
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + served
        handle, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{served}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            problem = data_format.served_problem(tmp, file)
            if problem:
                failures.append(f"{url}: {problem}")
                continue
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
    dest = Path(dest) if dest else cache_dir() / info.download_folder
    for file in info.files:
        present = info.format.file_path(dest, file)
        if present is not None:
            try:
                info.format.check_file(present, file, name)
                continue
            except DataError:
                present.unlink()  # corrupted: replace it with a fresh copy
        fetch_file(file, mirrors or info.mirrors, dest, info.format)
    return dest
