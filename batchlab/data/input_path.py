"""Which input path a run takes (`--input auto|device|loader`, data/batches.py), and why.

`auto` takes the device path unless the dataset would fill more than DEVICE_SHARE of the device's
memory, which must also hold the model, its gradients and the activations of a batch; then the
loader path, with a note that says so; so does `--loader-workers N` (N > 0). On the CPU the device's memory is host memory, where the
loader path would hold the same images too: `auto` keeps the device path there.
"""

from __future__ import annotations

import torch

from .dataset import Dataset

DEVICE_SHARE = 0.5


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of an accelerator; None for the CPU (its memory is the host's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "mps":
        return torch.mps.recommended_max_memory()
    return None


def dataset_bytes(dataset: Dataset) -> int:
    """What the device path puts on the device: every image and label of the dataset."""
    return sum(array.nbytes for array in (dataset.train_images, dataset.train_labels,
                                          dataset.test_images, dataset.test_labels))


def gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def choose_input(requested: str, data_bytes: int, device: torch.device, loader_workers: int = 0,
                 capacity: int | None = None) -> tuple[str, str | None]:
    """(input path, a note for the user or None). `capacity`: the device's memory (default: asked)."""
    if requested != "auto":
        return requested, None
    if loader_workers:
        return "loader", f"input: loader, for the {loader_workers} loader worker(s) asked for"
    capacity = device_memory_bytes(device) if capacity is None else capacity
    if capacity is None or data_bytes <= DEVICE_SHARE * capacity:
        return "device", None
    return "loader", (f"input: loader, since the images ({gib(data_bytes)}) would take more than "
                      f"{DEVICE_SHARE:.0%} of {device}'s {gib(capacity)}; --input device to override")
