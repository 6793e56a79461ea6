"""The loops a user writes with plain PyTorch: a DataLoader over a TensorDataset, model(x),
loss.backward(), opt.step(); model.eval() + inference_mode for inference. The peer batchlab's
engine is measured against (same model, data, optimizer, threads)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def train_images_per_second(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float = 0.01) -> float:
    """Train on `images` (float, normalised) once in shuffled batches; images/s of the whole pass."""
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
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
