"""The loops a user writes with plain PyTorch: a DataLoader over a TensorDataset, model(x),
loss.backward(), opt.step(); model.eval() + inference_mode for inference. The peer batchlab's
engine is measured against (same network, data, optimizer, threads), with the network written as
the studies (and a user) write it: conv → ReLU → pool, PyTorch's default memory layout."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def seed_cnn(classes: int = 10, channels: int = 1, side: int = 28) -> nn.Module:
    """The TensorFlow batch-size study's CNN as its paper draws it (same parameters as batchlab's),
    on `channels` x `side` x `side` images (28 → 4x4 maps for the dense layer, 32 → 5x5)."""
    side_map = ((side - 3) // 2 - 3) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * side_map * side_map, 500), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(500, classes),
    )


def keras_cnn(classes: int = 10, channels: int = 1, side: int = 28) -> nn.Module:
    """The Keras MNIST example CNN (same parameters as batchlab's keras-cnn): conv3 → ReLU, conv3 →
    ReLU, pool 2, dense 128."""
    side_map = (side - 4) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 32, kernel_size=3), nn.ReLU(), nn.Conv2d(32, 64, kernel_size=3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * side_map * side_map, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, classes),
    )


MODELS = {"seed-cnn": seed_cnn, "keras-cnn": keras_cnn}  # batchlab's built-in name → the plain network


def train_step(model, optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One step of the loop a user writes: zero the gradients, forward, loss, backward, update."""
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()


def train_images_per_second(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float = 0.01) -> float:
    """Train on `images` (float, normalised) once in shuffled batches; images/s of the whole pass."""
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        train_step(model, optimizer, x, y)
    return len(images) / (time.perf_counter() - start)


def infer_images_per_second(model, images: torch.Tensor, batch_size: int) -> float:
    loader = DataLoader(TensorDataset(images), batch_size=batch_size)
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for (x,) in loader:
            model(x)
    return len(images) / (time.perf_counter() - start)


def test_accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in
                      DataLoader(TensorDataset(images, labels), batch_size=1000))
    return correct / len(labels)
