"""Where a training step's batch comes from: the two input paths of `--input`.

- device: the whole uint8 training set sits on the device (data/device.py); a batch is gathered by
  indexing it with a slice of the epoch's permutation. No copies, no processes.
- loader: the training set stays in host memory; a torch DataLoader (`--loader-workers N` worker
  processes, or the training process itself with 0) gathers each batch there, pinned on a GPU, and
  the batch is copied to the device. For datasets that would not fit on the device.

Both yield the same batches for the same permutation (and, with --augment, the same augmented
images on the CPU), so the paths differ in where the work happens, not in what is trained on.
"""

from __future__ import annotations

import multiprocessing
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import batch_seed, random_crop_flip
from .device import DeviceData

FORK = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W) and int64 labels, on the device
NO_AUGMENT = -1  # the batch seed of a batch that is not augmented


class DeviceBatches:
    """Batches gathered on the device from the epoch's index sequence."""

    def __init__(self, dd: DeviceData, batch_size: int, augment_seeds: AugmentSeeds | None = None):
        self.dd, self.batch_size, self.augment_seeds = dd, batch_size, augment_seeds

    def epoch(self, indices: torch.Tensor, warm_up: bool = False) -> Iterator[Batch]:
        """The batches of `indices`, in order (warm_up: the epoch count unchanged)."""
        images, labels, size = self.dd.train_images, self.dd.train_labels, self.batch_size
        seeds = self.augment_seeds.for_epoch(warm_up) if self.augment_seeds else None
        for number, start in enumerate(range(0, len(indices), size)):
            index = indices[start:start + size]
            batch = images[index]
            yield (random_crop_flip(batch, seeds(number)) if seeds else batch), labels[index]

    def close(self) -> None:
        pass


class AugmentSeeds:
    """The per-batch augmentation seeds of one training process (`stream`: its worker or rank)."""

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream, self.epoch = seed, stream, 0

    def for_epoch(self, warm_up: bool = False):
        """The seeds of the next epoch's batches, by batch number; the warm-up's (epoch 0, augmented
        too, so first-call costs fall there) leave the count unchanged."""
        if not warm_up:
            self.epoch += 1
        epoch = 0 if warm_up else self.epoch
        return lambda number: batch_seed(self.seed, self.stream, epoch, number)


class HostImages(Dataset):
    """The training set in host memory, read a whole batch at a time: the key is (augmentation seed,
    image indices), so one call gathers (and augments) the batch, not one call per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> Batch:
        seed, indices = key
        index = torch.from_numpy(indices)
        batch = self.images[index]
        return (random_crop_flip(batch, seed) if seed != NO_AUGMENT else batch), self.labels[index]


class EpochBatches(Sampler):
    """The keys of the current epoch's batches; set by the training process before each epoch (the
    sampler runs in the training process, so persistent loader workers see each epoch's order)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.keys: list[tuple[int, np.ndarray]] = []

    def set(self, indices: np.ndarray, seeds) -> None:
        size = self.batch_size
        self.keys = [(seeds(number) if seeds else NO_AUGMENT, indices[start:start + size])
                     for number, start in enumerate(range(0, len(indices), size))]

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class LoaderBatches:
    """Batches from a torch DataLoader over the host-memory training set, copied to the device."""

    def __init__(self, dd: DeviceData, batch_size: int, workers: int, augment_seeds: AugmentSeeds | None = None):
        self.device, self.augment_seeds = dd.device, augment_seeds
        self.sampler = EpochBatches(batch_size)
        pinned = dd.device.type == "cuda"  # page-locked host batches copy to a GPU asynchronously
        # batch_size=None: each sampler key is one whole batch (HostImages gathers it in one call).
        # Persistent workers start once per run (in the warm-up), not once per epoch.
        # Its own generator: the seed a DataLoader draws per iteration would otherwise come from the
        # global one and shift the model's dropout masks away from the device path's.
        # Forked workers where the platform allows: they inherit the images, where spawned ones (the
        # default inside hogwild workers and DDP ranks, themselves spawned) would import torch and
        # receive a copy of the training set through shared memory.
        self.loader = DataLoader(HostImages(dd.train_images, dd.train_labels), sampler=self.sampler, batch_size=None,
                                 num_workers=workers, pin_memory=pinned, persistent_workers=workers > 0,
                                 generator=torch.Generator(),
                                 multiprocessing_context=FORK if workers else None)

    def epoch(self, indices: torch.Tensor, warm_up: bool = False) -> Iterator[Batch]:
        """The batches of `indices`, in order (warm_up: the epoch count unchanged)."""
        seeds = self.augment_seeds.for_epoch(warm_up) if self.augment_seeds else None
        self.sampler.set(indices.cpu().numpy(), seeds)
        device = self.device
        for images, labels in self.loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def close(self) -> None:
        """Stop the persistent loader workers now, not whenever the run's objects are collected: a
        run that failed mid-epoch keeps the suspended epoch (and its iterator) in its traceback.
        The persistent iterator's _shutdown_workers is what its own finaliser calls (private API;
        if it is gone, dropping the loader still ends the workers when it is collected)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader = None


def batch_source(dd: DeviceData, batch_size: int, loader_workers: int, augment: bool, seed: int,
                 stream: int = 0) -> DeviceBatches | LoaderBatches:
    """The input path `dd` was prepared for (dd.input), with --augment seeds for this process."""
    seeds = AugmentSeeds(seed, stream) if augment else None
    if dd.input == "loader":
        return LoaderBatches(dd, batch_size, loader_workers, seeds)
    return DeviceBatches(dd, batch_size, seeds)
