"""Where a training step and an inference pass of seed-cnn spend their time, against this
machine's GEMM ceiling and against the plain PyTorch loop: the roofline behind docs/performance.md.

    python bench/profile_step.py [--batch-size 4096] [--steps 3]

Profiles batchlab's real code path (channels-last model, automatic micro-batches, the built-in
layers, this process set up as a run's: denormals flushed, freed memory kept) and splits the time
into the convolutions, the linear layers, the optimizer's update and everything else (pooling,
ReLU, dropout, loss, framework), with the FLOPs of seed-cnn's layers counted by hand (the profiler
counts none for oneDNN's ops): what rate the compute ran at, and what throughput would be left if
everything else took no time at all. The plain loop bench/run.py compares with (the network moved
to channels-last, torch.optim.SGD) is split the same way beside it, per step, so the parts both
pay (the floor a faster loop cannot go below with the same libraries) and the parts batchlab saves
show side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

from run import gemm_flops, plain_network  # noqa: E402

from batchlab.core.cpus import available_cores  # noqa: E402
from batchlab.device.heap import keep_freed_memory  # noqa: E402
from batchlab.device.threads import flush_denormals  # noqa: E402
from batchlab.nn import microbatch, models  # noqa: E402
from batchlab.nn.placement import place  # noqa: E402
from batchlab.train.engine import make_optimizer, train_step  # noqa: E402

# FLOPs per image that seed-cnn's layers really compute (2 per multiply-add), on its 25×25 input
# crop (models.py): conv1 4x4x1 → 22x22x32, conv2 4x4x32 → 8x8x64, fc1 1024 → 500, fc2 500 → 10.
# Backward: conv1 needs only its weight gradient. (The nominal network, on 28×28, costs 7.0 and
# 20.3 MFLOP per image; bench/run.py's "% of ceiling" uses those.)
CONV_FORWARD = 2 * (22 * 22 * 32 * 16 + 8 * 8 * 64 * 512)
CONV_BACKWARD = 2 * (22 * 22 * 32 * 16) + 2 * 2 * (8 * 8 * 64 * 512)
LINEAR_FORWARD = 2 * (1024 * 500 + 500 * 10)
PARTS = ("convolutions", "linear layers", "optimizer update", "everything else")
CATEGORIES = {  # op → part of the step, for it and the ops it calls (the optimizer's step: its update)
    "aten::mkldnn_convolution": "convolutions", "aten::convolution_backward": "convolutions",
    "aten::thnn_conv2d": "convolutions", "aten::_slow_conv2d_forward": "convolutions",
    "aten::_slow_conv2d_backward": "convolutions",
    "mkldnn::_linear_pointwise": "linear layers", "aten::mm": "linear layers", "aten::addmm": "linear layers",
}


def part_of(event) -> str:
    """The part of PARTS an op belongs to: that of its nearest enclosing op with one (a layout copy
    inside a convolution's backward is the convolution's), else everything else."""
    while event is not None:
        if event.name.startswith("Optimizer.step#"):
            return "optimizer update"
        if event.name in CATEGORIES:
            return CATEGORIES[event.name]
        event = event.cpu_parent
    return "everything else"


def profiled_parts(call: Callable[[], None], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per call of `call` by part of PARTS (self time of each op, under the profiler), and
    by op name for the ops in "everything else"."""
    call()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            call()
    seconds, rest = dict.fromkeys(PARTS, 0.0), {}
    for event in prof.events():
        part, spent = part_of(event), event.self_cpu_time_total / 1e6 / repeats
        seconds[part] += spent
        if part == "everything else":
            rest[event.name] = rest.get(event.name, 0.0) + spent
    return seconds, rest


def report(batchlab: tuple[dict, dict], plain: tuple[dict, dict], images: int, flops: dict[str, float],
           ceiling: float, title: str) -> None:
    (batchlab, rest), (plain, plain_rest) = batchlab, plain
    total, plain_total = sum(batchlab.values()), sum(plain.values())
    print(f"\n{title}, per call of {images} images under the profiler: batchlab {images / total:,.0f} images/s, "
          f"plain loop (channels-last) {images / plain_total:,.0f}")
    print(f"{'part':<17} {'batchlab µs':>12} {'share':>6} {'GFLOP/s':>8} {'of ceiling':>10} {'plain µs':>10}")
    for part in PARTS:
        rate = flops[part] * images / batchlab[part] if flops.get(part) and batchlab[part] else None
        print(f"{part:<17} {batchlab[part] * 1e6:12,.0f} {batchlab[part] / total:6.1%} "
              + (f"{rate / 1e9:8.0f} {rate / ceiling:10.0%}" if rate else f"{'—':>8} {'—':>10}")
              + f" {plain[part] * 1e6:10,.0f}")
    print(f"{'total':<17} {total * 1e6:12,.0f} {'':>6} {'':>8} {'':>10} {plain_total * 1e6:10,.0f}")
    compute = batchlab["convolutions"] + batchlab["linear layers"]
    print(f"if everything but the convolutions and linear layers took no time: {images / compute:,.0f} images/s")
    print("largest in everything else, µs (batchlab / plain): " + ", ".join(
        f"{name} {seconds * 1e6:,.0f} / {plain_rest.get(name, 0.0) * 1e6:,.0f}"
        for name, seconds in sorted(rest.items(), key=lambda item: -item[1])[:8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    flush_denormals()  # as a run's own process does (bench/run.py too)
    keep_freed_memory()
    torch.set_num_threads(available_cores())
    ceiling = max(gemm_flops().values())
    print(f"GEMM ceiling {ceiling / 1e9:,.0f} GFLOP/s")
    batch = args.batch_size
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = place(models.build("seed-cnn"), device, "fp32")
    plain = plain_network("seed-cnn", channels_last=True)  # the peer bench/run.py times
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    slices = microbatch.slice_size(microbatch.AUTOMATIC, batch, model, images[:1])
    optimizer = make_optimizer("momentum", model.parameters(), 0.01)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)  # as plain_torch's loop
    print(f"batch {batch}, micro-batches of at most {slices} images")

    def plain_step() -> None:
        plain_optimizer.zero_grad()
        F.cross_entropy(plain(images), labels).backward()
        plain_optimizer.step()

    ours = profiled_parts(lambda: train_step(model, optimizer, images, labels, slice_size=slices), args.steps)
    theirs = profiled_parts(plain_step, args.steps)
    report(ours, theirs, batch, {"convolutions": CONV_FORWARD + CONV_BACKWARD, "linear layers": 3 * LINEAR_FORWARD},
           ceiling, "training")

    model.eval()
    plain.eval()

    def infer() -> None:
        with torch.inference_mode():
            for start, stop in microbatch.bounds(batch, slices):
                model(images[start:stop])

    def plain_infer() -> None:
        with torch.inference_mode():
            plain(images)

    ours, theirs = profiled_parts(infer, args.steps), profiled_parts(plain_infer, args.steps)
    report(ours, theirs, batch, {"convolutions": CONV_FORWARD, "linear layers": LINEAR_FORWARD}, ceiling, "inference")


if __name__ == "__main__":
    main()
