"""Benchmark of the input paths on a CIFAR-shaped workload (3x32x32, 10 classes, synthetic pixels:
timing does not depend on what the pixels show): batchlab's device path and loader path against
plain PyTorch DataLoader loops, same network (seed-cnn sized for 3x32x32), same threads, CPU.

- batchlab device: the uint8 images on the device, batches gathered by index (`--input device`);
- batchlab loader: a DataLoader over the host images, one call per batch (`--input loader`),
  in the training process or in `--loader-workers` processes;
- plain tensors: DataLoader(TensorDataset(normalised float images), shuffle=True), the fastest loop
  a user writes by hand;
- plain per-image: a Dataset that converts (and with augmentation crops and flips) one uint8 image
  per __getitem__, as torchvision's CIFAR10 with ToTensor/Normalize/RandomCrop/RandomHorizontalFlip
  does; DataLoader(shuffle=True, num_workers=N).

Each figure is training images/s over one pass of IMAGES images after a 2-batch warm-up, and the
share of that time the loop waited for its batches (time spent in next() on the batches).

Inference, the same network at INFER_BATCH_SIZES: batchlab's is `batchlab infer`'s compute-only
series (infer/measure.py, on these images); the plain loops are the model in eval mode called under
torch.inference_mode on DataLoader batches of the normalised images, in its default layout and
moved to channels-last as a user may (model.to(memory_format=torch.channels_last)).

    python bench/images.py [--quick] [--repeats 3] [--model torchvision:resnet18]

`--model torchvision:NAME` times that torchvision classifier instead (the plain loops build it as a
user does, torchvision.models.get_model(NAME, num_classes=10)); it needs a torchvision that imports
beside the installed torch: `make bench-vision` makes such an environment and runs resnet18.

Writes bench/results/<date>-<host>-images[-MODEL].json and prints the tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))

import plain_torch  # noqa: E402
from run import engine_parts, rotated, spread, write_results  # noqa: E402

from batchlab.core.cpus import available_cores  # noqa: E402
from batchlab.core.stats import images_per_second  # noqa: E402
from batchlab.data.dataset import Dataset as BatchlabDataset  # noqa: E402
from batchlab.data.device import to_device  # noqa: E402
from batchlab.device.heap import keep_freed_memory  # noqa: E402
from batchlab.device.machine import fingerprint  # noqa: E402
from batchlab.device.threads import flush_denormals  # noqa: E402
from batchlab.infer.measure import measure  # noqa: E402
from batchlab.nn.names import TORCHVISION_PREFIX  # noqa: E402
from batchlab.spec.run import InferSpec, RunSpec  # noqa: E402
from batchlab.train.engine import StepLoop, input_source  # noqa: E402

SHAPE = (3, 32, 32)
CLASSES = 10
TRAIN_IMAGES = 50_000  # CIFAR-10's training set
IMAGES = 8192  # images per timed pass (seed-cnn)
TORCHVISION_IMAGES = 2048  # per pass of a torchvision model: resnet18 trains ~10x slower than seed-cnn
BATCH_SIZES = [32, 128, 512]
INFER_BATCH_SIZES = [1, 4, 16, 64, 256]


def synthetic_cifar() -> BatchlabDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(TRAIN_IMAGES + 1000, *SHAPE), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=TRAIN_IMAGES + 1000).astype(np.int64)
    return BatchlabDataset("synthetic-cifar", images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES], images[TRAIN_IMAGES:],
                           labels[TRAIN_IMAGES:], CLASSES, "", "synthetic", tuple(map(str, range(CLASSES))))


def batchlab_pass(dataset, model_name: str, images: int, batch: int, input: str, workers: int = 0,
                  augment: bool = False) -> tuple[float, float]:
    """(images/s, data-wait share) of batchlab's hot loop on `input`, as `batchlab train` runs it."""
    spec = RunSpec(model=model_name, batch_size=batch, input=input, loader_workers=workers, augment=augment)
    dd = to_device(dataset, 0.0, 0, torch.device("cpu"), input)
    model, optimizer, slices = engine_parts(spec, dd, dd.device)
    source = input_source(spec, dd)
    try:
        loop = StepLoop(model, optimizer, dd, batch, slice_size=slices, source=source)
        order = torch.randperm(dd.train_count)
        loop.train(order[:2 * batch])  # warm-up (starts the loader's workers)
        start = time.perf_counter()
        work = loop.train(order[:images])
        seconds = time.perf_counter() - start
    finally:
        source.close()
    return images / seconds, work.data_wait_seconds / seconds


class PerImage(Dataset):
    """One uint8 image per call → normalised float, optionally cropped and flipped (torchvision style)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 augment: bool):
        self.images, self.labels, self.mean, self.std, self.augment = images, labels, mean, std, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.augment:
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = F.pad(image, (4, 4, 4, 4))[:, top:top + 32, left:left + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, self.labels[index]


def plain_network(model_name: str) -> torch.nn.Module:
    """The network as a user builds it: seed-cnn by hand, a torchvision model by its builder."""
    if model_name.startswith(TORCHVISION_PREFIX):
        import torchvision.models  # only for --model torchvision:NAME: it may not import beside this torch

        return torchvision.models.get_model(model_name[len(TORCHVISION_PREFIX):], num_classes=CLASSES)
    return plain_torch.seed_cnn(CLASSES, SHAPE[0], SHAPE[1])


def plain_pass(loader_dataset, model_name: str, images: int, batch: int, workers: int = 0) -> tuple[float, float]:
    """(images/s, data-wait share) of the loop a user writes around a DataLoader."""
    torch.manual_seed(0)
    model = plain_network(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    sampler = torch.randperm(len(loader_dataset))[:images].tolist()
    warm = DataLoader(loader_dataset, batch_size=batch, sampler=sampler[:2 * batch], num_workers=workers)
    loader = DataLoader(loader_dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0)

    for x, y in warm:
        plain_torch.train_step(model, optimizer, x, y)
    batches = iter(loader)  # (re)starts workers, as a user's epoch loop does, outside the clock
    waited, start = 0.0, time.perf_counter()
    while True:
        asked = time.perf_counter()
        pair = next(batches, None)
        waited += time.perf_counter() - asked
        if pair is None:
            break
        plain_torch.train_step(model, optimizer, *pair)
    seconds = time.perf_counter() - start
    return images / seconds, waited / seconds


def batchlab_infer(dataset, model_name: str, batch: int) -> float:
    """images/s of `batchlab infer`'s compute-only series on the synthetic images. The spec names
    CIFAR-10, whose shape they have; measure() is handed the images themselves."""
    result = measure(InferSpec(model=model_name, dataset="cifar10", batch_size=batch), dataset=dataset)
    return images_per_second(batch, result.compute_seconds)


def plain_infer(normalized: torch.Tensor, model_name: str, batch: int, channels_last: bool) -> float:
    """images/s of the plain inference loop (plain_torch.infer_images_per_second), after one warm-up batch."""
    torch.manual_seed(0)
    model = plain_network(model_name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = normalized[torch.arange(max(4 * batch, 256)) % len(normalized)]  # the test set tiled, as measure() does
    plain_torch.infer_images_per_second(model, images[:batch], batch)
    return plain_torch.infer_images_per_second(model, images, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one batch size, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="seed-cnn", help="seed-cnn (sized for 3x32x32) or torchvision:NAME")
    args = parser.parse_args()
    if args.model != "seed-cnn" and not args.model.startswith(TORCHVISION_PREFIX):
        parser.error(f"--model {args.model}: seed-cnn or torchvision:NAME")
    model, images_per_pass = args.model, IMAGES if args.model == "seed-cnn" else TORCHVISION_IMAGES
    repeats = 1 if args.quick else args.repeats
    sizes = [128] if args.quick else BATCH_SIZES
    flush_denormals()  # as in a run's own process, for every loop timed here (peers too)
    keep_freed_memory()  # likewise
    torch.set_num_threads(available_cores())
    dataset = synthetic_cifar()
    images = torch.from_numpy(dataset.train_images)
    labels = torch.from_numpy(dataset.train_labels)
    mean = images[:5000].float().mean(dim=(0, 2, 3)).view(-1, 1, 1)
    std = images[:5000].float().std(dim=(0, 2, 3)).view(-1, 1, 1)
    tensors = TensorDataset((images.float() - mean) / std, labels)

    def per_image(augment: bool) -> PerImage:
        return PerImage(images, labels, mean / 255, std / 255, augment)

    def plain(loader_dataset, workers: int = 0):
        return lambda b: plain_pass(loader_dataset, model, images_per_pass, b, workers)

    def ours(input: str, workers: int = 0, augment: bool = False):
        return lambda b: batchlab_pass(dataset, model, images_per_pass, b, input, workers, augment)

    loops = {
        "plain tensors": plain(tensors),
        "plain per-image": plain(per_image(False)),
        "batchlab device": ours("device"),
        "batchlab loader": ours("loader"),
        "batchlab loader 1 worker": ours("loader", workers=1),
        "plain per-image augment": plain(per_image(True)),
        "plain per-image augment 1 worker": plain(per_image(True), workers=1),
        "batchlab device augment": ours("device", augment=True),
        "batchlab loader augment": ours("loader", augment=True),
        "batchlab loader augment 1 worker": ours("loader", workers=1, augment=True),
    }
    test_images = (torch.from_numpy(dataset.test_images).float() - mean) / std
    infer_loops = {
        "plain": lambda b: plain_infer(test_images, model, b, channels_last=False),
        "plain channels-last": lambda b: plain_infer(test_images, model, b, channels_last=True),
        "batchlab": lambda b: batchlab_infer(dataset, model, b),
    }
    results = {"machine": fingerprint(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": model, "shape": "x".join(map(str, SHAPE)), "images_per_pass": images_per_pass,
               "threads": torch.get_num_threads(), "repeats": repeats, "train": {}, "infer": {}}
    for batch in sizes:
        figures = {name: [] for name in loops}
        for turn in range(repeats):  # every loop once per repeat, so a slow spell hits all of them alike
            for name in rotated(list(loops), turn):
                figures[name].append(loops[name](batch))
        row = {name: {"images_per_second": spread([f[0] for f in values]),
                      "data_wait_share": spread([f[1] for f in values])} for name, values in figures.items()}
        results["train"][batch] = row
        best_plain = max(row[name]["images_per_second"]["median"] for name in ("plain tensors", "plain per-image"))
        best_plain_augment = max(row[name]["images_per_second"]["median"]
                                 for name in ("plain per-image augment", "plain per-image augment 1 worker"))
        for name, figure in row.items():
            rate = figure["images_per_second"]["median"]
            against = best_plain_augment if "augment" in name else best_plain
            print(f"bs={batch:>4} {name:<34} {rate:>8,.0f} img/s  data wait {figure['data_wait_share']['median']:6.1%}"
                  + (f"  ÷ best plain loop {rate / against:.2f}x" if name.startswith("batchlab") else ""), flush=True)
    for batch in [16] if args.quick else INFER_BATCH_SIZES:
        figures = {name: [] for name in infer_loops}
        for turn in range(repeats):  # alternating, as the training loops above
            for name in rotated(list(infer_loops), turn):
                figures[name].append(infer_loops[name](batch))
        row = {name: spread(values) for name, values in figures.items()}
        results["infer"][batch] = row
        best_plain = max(row["plain"]["median"], row["plain channels-last"]["median"])
        print(f"infer bs={batch:>4} " + "  ".join(f"{name} {figure['median']:,.0f}" for name, figure in row.items())
              + f" img/s  ÷ best plain loop {row['batchlab']['median'] / best_plain:.2f}x", flush=True)
    write_results(results, "-images" + ("" if model == "seed-cnn" else "-" + model.split(":")[-1]))


if __name__ == "__main__":
    main()
