"""The run's data: train/validation/test split, normalisation, batch order, and where it lives.

On the device input path the whole dataset is copied to the device once, as uint8 (4x smaller
than float32); each batch is gathered by indexing with a slice of a seeded permutation and
converted to float there: no DataLoader, no worker processes, no host→device copy in the hot loop.
On the loader path the splits stay in host memory and batches travel (data/batches.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import Dataset

# The validation hold-out is drawn with a fixed seed, not the run's seed: every run of an
# experiment (all batch sizes, all repeats) is validated on the same images.
VAL_SPLIT_SEED = 12345
# Likewise the --limit-train sample: the same images for every run, whatever the run's seed.
LIMIT_TRAIN_SEED = 54321


STATS_CHUNK = 4096  # images per step of channel_stats: float64 sums without a float copy of the dataset


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel pixel mean and standard deviation of uint8 images (N, C, H, W), in 0..255
    units (a constant channel gets std 1: nothing to scale)."""
    channels = images.shape[1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), STATS_CHUNK):
        chunk = images[start:start + STATS_CHUNK].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
        count += chunk.size // channels
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean ** 2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) or 1.0 for s in std)


class Normalize:
    """uint8 images (N, C, H, W) → float32 of zero mean and unit variance per channel, in one op:
    -mean/std + images × 1/std (type promotion makes it float32); at batch 1 every op of the step
    counts. One channel: a scalar tensor and a Python float; several: (C, 1, 1) tensors on `device`."""

    def __init__(self, mean: tuple[float, ...] | float, std: tuple[float, ...] | float,
                 device: torch.device | str = "cpu"):
        # Weights saved before images had channels carry one float each.
        self.mean = tuple(mean) if isinstance(mean, (tuple, list)) else (float(mean),)
        self.std = tuple(std) if isinstance(std, (tuple, list)) else (float(std),)
        shift = [-m / s for m, s in zip(self.mean, self.std)]
        scale = [1 / s for s in self.std]
        if len(self.mean) == 1:  # a CPU scalar tensor adds to images on any device; made once, not per batch
            self.shift, self.scale = torch.tensor(shift[0]), scale[0]
        else:
            self.shift = torch.tensor(shift, device=device).view(-1, 1, 1)
            self.scale = torch.tensor(scale, device=device).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.scale, float):
            return torch.add(self.shift, images, alpha=self.scale)
        return torch.addcmul(self.shift, images, self.scale)


INPUTS = ("device", "loader")


@dataclass
class DeviceData:
    train_images: torch.Tensor  # uint8 (N, C, H, W): on the device, or in host memory for the loader path
    train_labels: torch.Tensor  # int64 (N,)
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    normalize: Normalize  # uint8 batch → float32, per channel by the training images actually used
    classes: int
    class_names: tuple[str, ...]  # label i is class_names[i]
    device: torch.device  # where the model computes
    input: str = "device"  # the input path: "device" (images on the device) or "loader" (in host memory)

    def head(self, count: int) -> torch.Tensor:
        """The first `count` training images (uint8) on the device: for probes and the warm-up."""
        return self.train_images[:count].to(self.device)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(int(size) for size in self.train_images.shape[1:])

    @property
    def train_count(self) -> int:
        return len(self.train_labels)

    def share_memory_(self) -> DeviceData:
        """Move the CPU tensors to shared memory, so worker processes read them without copies."""
        for tensor in (self.train_images, self.train_labels, self.val_images, self.val_labels,
                       self.test_images, self.test_labels):
            tensor.share_memory_()
        return self


def split_train(dataset: Dataset, val_split: float, limit_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation images within dataset.train_*."""
    count = len(dataset.train_labels)
    if val_split > 0:
        order = np.random.default_rng(VAL_SPLIT_SEED).permutation(count)
        n_val = int(round(count * val_split))
        val_idx, train_idx = order[:n_val], order[n_val:]
    else:
        val_idx, train_idx = np.empty(0, dtype=np.int64), np.arange(count)
    if limit_train:
        train_idx = stratified_sample(dataset.train_labels, train_idx, limit_train, LIMIT_TRAIN_SEED)
    return train_idx, val_idx


def stratified_sample(labels: np.ndarray, indices: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of `indices` (all if count >= their number), each class keeping its share of
    them, drawn with `seed` and returned in seeded random order. Taking the first `count`
    instead would keep only the first classes of a dataset stored class by class."""
    if count >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels[indices], return_counts=True)
    # Proportional quotas in integers; the images left over go to the largest remainders
    # (ties to the lower label), so the quotas sum to exactly `count`.
    quotas, remainders = np.divmod(sizes * count, len(indices))
    quotas[np.argsort(-remainders, kind="stable")[:count - quotas.sum()]] += 1
    chosen = [rng.choice(indices[labels[indices] == cls], size=quota, replace=False)
              for cls, quota in zip(classes, quotas)]
    return rng.permutation(np.concatenate(chosen))


def to_device(dataset: Dataset, val_split: float, limit_train: int, device: torch.device,
              input: str = "device") -> DeviceData:
    """The dataset's splits as tensors: on `device` for the device input path, in host memory for
    the loader path."""
    train_idx, val_idx = split_train(dataset, val_split, limit_train)
    train_np = dataset.train_images[train_idx]
    home = device if input == "device" else torch.device("cpu")

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(home)

    return DeviceData(
        train_images=tensor(train_np), train_labels=tensor(dataset.train_labels[train_idx]),
        val_images=tensor(dataset.train_images[val_idx]), val_labels=tensor(dataset.train_labels[val_idx]),
        test_images=tensor(dataset.test_images), test_labels=tensor(dataset.test_labels),
        normalize=Normalize(*channel_stats(train_np), device), classes=dataset.classes,
        class_names=dataset.class_names, device=torch.device(device), input=input,
    )


# Which images each process trains on in an epoch, in order, cut from the epoch's permutation.
# A process trains on its sequence in consecutive batches of `batch_size` (the last may be smaller).

def single_order(order: torch.Tensor, batch_size: int, drop_last: bool) -> torch.Tensor:
    return order[:len(order) // batch_size * batch_size] if drop_last else order


def hogwild_order(order: torch.Tensor, workers: int, rank: int, batch_size: int, drop_last: bool) -> torch.Tensor:
    """Worker `rank`'s contiguous share of the epoch: together the workers see every image once."""
    return single_order(order.tensor_split(workers)[rank], batch_size, drop_last)


def ddp_order(order: torch.Tensor, workers: int, rank: int, batch_size: int, drop_last: bool) -> torch.Tensor:
    """Rank `rank`'s part of each global batch of workers × batch_size images, so that step s of
    all ranks together is exactly global batch s of a single process. A last, partial global batch
    is split as evenly as possible; it is dropped (or with drop_last) if some rank would get none,
    since every rank must take the same number of synchronised steps."""
    global_batch = workers * batch_size
    full = len(order) // global_batch
    parts = [order[:full * global_batch].view(full, workers, batch_size)[:, rank].reshape(-1)]
    rest = order[full * global_batch:]
    if not drop_last and len(rest) >= workers:
        parts.append(rest.tensor_split(workers)[rank])
    return torch.cat(parts)
