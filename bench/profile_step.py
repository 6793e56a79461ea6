"""Where a training step and an inference pass of seed-cnn spend their time, against this
machine's GEMM ceiling: the roofline behind docs/performance.md.

    python bench/profile_step.py [--batch-size 4096] [--steps 3]

Profiles batchlab's real code path (channels-last model, automatic micro-batches, the built-in
layers) and splits the time into the convolutions, the linear layers (both oneDNN) and everything
else (pooling, ReLU, dropout, loss, optimizer, framework), with the FLOPs of seed-cnn's layers
counted by hand (the profiler counts none for oneDNN's ops): what rate the compute ran at, and
what throughput would be left if everything else took no time at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

from run import gemm_flops  # noqa: E402

from batchlab.nn import microbatch, models  # noqa: E402
from batchlab.nn.placement import place  # noqa: E402
from batchlab.train.engine import make_optimizer, train_step

# FLOPs per image that seed-cnn's layers really compute (2 per multiply-add), on its 25×25 input
# crop (models.py): conv1 4x4x1 → 22x22x32, conv2 4x4x32 → 8x8x64, fc1 1024 → 500, fc2 500 → 10.
# Backward: conv1 needs only its weight gradient. (The nominal network, on 28×28, costs 7.0 and
# 20.3 MFLOP per image; bench/run.py's "% of ceiling" uses those.)
CONV_FORWARD = 2 * (22 * 22 * 32 * 16 + 8 * 8 * 64 * 512)
CONV_BACKWARD = 2 * (22 * 22 * 32 * 16) + 2 * 2 * (8 * 8 * 64 * 512)
LINEAR_FORWARD = 2 * (1024 * 500 + 500 * 10)
CATEGORIES = {  # aten op → part of the step
    "aten::mkldnn_convolution": "convolutions", "aten::convolution_backward": "convolutions",
    "mkldnn::_linear_pointwise": "linear layers", "aten::mm": "linear layers", "aten::addmm": "linear layers",
}


def split(prof, images: int, flops: dict[str, float], ceiling: float, title: str) -> None:
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        part = CATEGORIES.get(event.key, "everything else")
        seconds[part] = seconds.get(part, 0.0) + event.self_cpu_time_total / 1e6
    total = sum(seconds.values())
    print(f"\n{title}: {images / total:,.0f} images/s under the profiler")
    print(f"{'part':<16} {'share':>6} {'GFLOP/s':>8} {'of ceiling':>10}")
    for part in ("convolutions", "linear layers", "everything else"):
        rate = flops[part] * images / seconds[part] if part in flops else None
        print(f"{part:<16} {seconds[part] / total:6.1%} " + (f"{rate / 1e9:8.0f} {rate / ceiling:10.0%}" if rate else
                                                             f"{'—':>8} {'—':>10}"))
    compute = seconds["convolutions"] + seconds["linear layers"]
    print(f"if everything else took no time: {images / compute:,.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    ceiling = max(gemm_flops().values())
    print(f"GEMM ceiling {ceiling / 1e9:,.0f} GFLOP/s")
    batch = args.batch_size
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = place(models.build("seed-cnn"), device, "fp32")
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    slices = microbatch.slice_size(microbatch.AUTOMATIC, batch, model, images[:1])
    optimizer = make_optimizer("momentum", model.parameters(), 0.01)
    print(f"batch {batch}, micro-batches of at most {slices} images")

    train_step(model, optimizer, images, labels, slice_size=slices)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            train_step(model, optimizer, images, labels, slice_size=slices)
    split(prof, batch * args.steps, {"convolutions": CONV_FORWARD + CONV_BACKWARD, "linear layers": 3 * LINEAR_FORWARD},
          ceiling, "training")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    model.eval()

    def infer() -> None:
        with torch.inference_mode():
            for start, stop in microbatch.bounds(batch, slices):
                model(images[start:stop])

    infer()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            infer()
    split(prof, batch * args.steps, {"convolutions": CONV_FORWARD, "linear layers": LINEAR_FORWARD}, ceiling, "inference")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
