"""What training and inference share around a CUDA graph capture that may fail: the stream it
leaves current, and the line that says why it failed."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..core.errors import one_line


@contextlib.contextmanager
def stream_kept(device: torch.device) -> Iterator[None]:
    """CUDA only: after the block, the work queued inside it (on any stream) has finished and the
    current stream is the one before it. When a capture breaks (a host sync inside it), ending the
    capture raises in torch.cuda.graph's exit before it restores the previous stream, which would
    leave the rest of the run on the capture stream. Once per capture, so the sync costs nothing."""
    stream = torch.cuda.current_stream(device)
    try:
        yield
    finally:
        torch.cuda.synchronize(device)
        torch.cuda.set_stream(stream)


def capture_failure(error: BaseException) -> str:
    """Why a capture failed, in one line: the first error of the chain, since ending a broken
    capture raises again with the first error as its context."""
    while error.__context__ is not None:
        error = error.__context__
    return f"capture failed: {one_line(error)}"
