"""Where a training step and an inference pass spend their time, against this machine's GEMM
ceiling and against the plain PyTorch loop: the roofline behind docs/performance.md.

    python bench/profile_step.py [--model seed-cnn|keras-cnn|torchvision:resnet18] [--batch-size 4096]
                                 [--steps 3] [--only training|inference] [--cifar]

(--steps calls per profile; each loop is profiled ROUNDS times, alternating, and each part's
median over them is shown.)

Profiles batchlab's real code path (channels-last model, automatic micro-batches, the built-in
layers, inference on the model `batchlab infer` prepares: batch norm folded, eval mode; this
process set up as a run's: denormals flushed, freed memory kept) and splits the time into the
convolutions, the linear layers, batch norm, the optimizer's update and everything else (pooling,
ReLU, dropout, loss, framework). The FLOPs of the convolutions and linear layers are counted from
the shapes they really see (the profiler counts none for oneDNN's ops): what rate the compute ran
at, and what throughput would be left if everything else took no time at all. The plain loop
moved to channels-last (bench/run.py's and bench/images.py's fastest plain peer below batch
1,024; torch.optim.SGD) is split the same way beside it, so the parts both pay (the floor a faster
loop cannot go below with the same libraries) and the parts batchlab saves show side by side.

seed-cnn and keras-cnn run on 1×28×28 images; seed-cnn with --cifar on 3×32×32 (CIFAR's shape, the
workload of bench/images.py, whose plain network is the peer then); torchvision models always run on
3×32×32 (they need torchvision: `make bench-vision` builds an environment with it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).parent))

import images as images_bench  # noqa: E402
import plain_torch  # noqa: E402
import run as run_bench  # noqa: E402

from batchlab.core.cpus import available_cores  # noqa: E402
from batchlab.device.heap import keep_freed_memory  # noqa: E402
from batchlab.device.threads import flush_denormals  # noqa: E402
from batchlab.nn import dense, microbatch, models  # noqa: E402
from batchlab.nn.folding import fold_batch_norms  # noqa: E402
from batchlab.nn.names import TORCHVISION_PREFIX  # noqa: E402
from batchlab.nn.placement import place  # noqa: E402
from batchlab.train.engine import make_optimizer, train_step  # noqa: E402

PARTS = ("convolutions", "linear layers", "batch norm", "optimizer update", "everything else")
DENSE_LABEL = "batchlab dense convolution"  # record_function label put around nn/dense.py's products
CATEGORIES = {  # op or autograd node → part of the step, for it and the ops it calls
    "aten::mkldnn_convolution": "convolutions", "aten::convolution_backward": "convolutions",
    "aten::thnn_conv2d": "convolutions", "aten::_slow_conv2d_forward": "convolutions",
    "aten::_slow_conv2d_backward": "convolutions", "mkldnn::_convolution_pointwise": "convolutions",
    DENSE_LABEL: "convolutions", "_RunProducts": "convolutions", "_RunProductsBackward": "convolutions",
    "mkldnn::_linear_pointwise": "linear layers", "aten::mm": "linear layers", "aten::addmm": "linear layers",
    "aten::native_batch_norm": "batch norm", "aten::native_batch_norm_backward": "batch norm",
    "aten::_native_batch_norm_legit": "batch norm", "aten::_native_batch_norm_legit_no_training": "batch norm",
}
NODE_PREFIX = "autograd::engine::evaluate_function: "
ROUNDS = 3  # profiles of each loop, alternating (alternated)


def part_of(event) -> str:
    """The part of PARTS an op belongs to: that of its nearest enclosing op or autograd node with
    one (a layout copy inside a convolution's backward is the convolution's), else everything else."""
    while event is not None:
        name = event.name.removeprefix(NODE_PREFIX)
        if name.startswith("Optimizer.step#"):
            return "optimizer update"
        if name in CATEGORIES:
            return CATEGORIES[name]
        event = event.cpu_parent
    return "everything else"


def label_dense_products() -> None:
    """Name nn/dense.py's matrix products in the profile: they are plain addmm_ calls, which would
    otherwise count as linear layers (training: inside _RunProducts; inference: called directly)."""
    products = dense.run_products

    def labelled(*args, **kwargs):
        with record_function(DENSE_LABEL):
            return products(*args, **kwargs)

    dense.run_products = labelled


def counted_flops(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(forward, backward) FLOPs per image (2 per multiply-add) of the model's convolutions and
    linear layers, from the shapes one image really meets (seed-cnn's crop included). The backward
    computes the weight's gradient and, where the layer's input needs one, the input's: the first
    layer, fed the images themselves, skips that."""
    totals = {"convolutions": [0.0, 0.0], "linear layers": [0.0, 0.0]}

    def count(module, inputs, output) -> None:
        if isinstance(module, nn.Conv2d):
            part, forward = "convolutions", 2 * output.numel() * module.weight[0].numel()
        elif isinstance(module, nn.Linear):
            part, forward = "linear layers", 2 * output.numel() * module.in_features
        else:
            return
        totals[part][0] += forward
        totals[part][1] += forward * (2 if inputs[0].requires_grad else 1)

    handles = [module.register_forward_hook(count) for module in model.modules()]
    training = model.training
    model.eval()  # batch norm in training mode refuses a single image's 1×1 maps
    model(sample)  # grad mode, so that requires_grad flows from layer to layer
    model.train(training)
    for handle in handles:
        handle.remove()
    return {part: (forward, backward) for part, (forward, backward) in totals.items()}


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


def alternated(ours: Callable[[], None], theirs: Callable[[], None], repeats: int,
               rounds: int = ROUNDS) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """profiled_parts of both loops, alternating for `rounds` rounds, each part's median over them:
    on this shared VM one op's time moved 8x between two profiles of the same loop a second apart
    (seed-cnn's 2 MB weight gradient at batch 1: 654 then 82 µs), so a single profile of each,
    one after the other, could charge a passing slowdown to either."""
    profiles = [[], []]
    for _ in range(rounds):
        for index, call in enumerate((ours, theirs)):
            profiles[index].append(profiled_parts(call, repeats))
    return tuple(_median_parts(runs) for runs in profiles)


def _median_parts(runs: list[tuple[dict[str, float], dict[str, float]]]) -> tuple[dict, dict]:
    names = {name for _, rest in runs for name in rest}
    return ({part: statistics.median(parts[part] for parts, _ in runs) for part in PARTS},
            {name: statistics.median(rest.get(name, 0.0) for _, rest in runs) for name in names})


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
    if batchlab["optimizer update"]:  # a pass over every weight, bound by memory: each loop makes one
        print(f"... but the optimizer's update too: {images / (compute + batchlab['optimizer update']):,.0f} images/s")
    at_ceiling = sum(flops.values()) * images / ceiling
    print(f"if they ran at the GEMM ceiling too: {images / at_ceiling:,.0f} images/s")
    print("largest in everything else, µs (batchlab / plain): " + ", ".join(
        f"{name} {seconds * 1e6:,.0f} / {plain_rest.get(name, 0.0) * 1e6:,.0f}"
        for name, seconds in sorted(rest.items(), key=lambda item: -item[1])[:8]))


def plain_network(name: str, cifar: bool) -> nn.Module:
    """The plain peer the benches time (bench/images.py's on CIFAR's shape), moved to channels-last."""
    if cifar:
        torch.manual_seed(0)
        return images_bench.plain_network(name).to(memory_format=torch.channels_last)
    return run_bench.plain_network(name, channels_last=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="seed-cnn", help="seed-cnn, keras-cnn or torchvision:NAME")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", choices=("training", "inference"), help="profile one of the two")
    parser.add_argument("--cifar", action="store_true", help="3×32×32 images (always so for torchvision models)")
    args = parser.parse_args()
    if args.cifar and args.model == "keras-cnn":
        parser.error("--cifar: bench/images.py's workload has seed-cnn and torchvision models, not keras-cnn")
    flush_denormals()  # as a run's own process does (bench/run.py too)
    keep_freed_memory()
    torch.set_num_threads(available_cores())
    label_dense_products()
    ceiling = max(run_bench.gemm_flops().values())
    print(f"{args.model}; GEMM ceiling {ceiling / 1e9:,.0f} GFLOP/s")
    batch, name = args.batch_size, args.model
    cifar = args.cifar or name.startswith(TORCHVISION_PREFIX)
    shape = images_bench.SHAPE if cifar else models.MNIST_SHAPE
    torch.manual_seed(0)
    model = place(models.build(name, input_shape=shape), torch.device("cpu"), "fp32")
    plain = plain_network(name, cifar)
    images, labels = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    flops = counted_flops(model, images[:1])

    if args.only != "inference":
        slices = microbatch.slice_size(microbatch.AUTOMATIC, batch, model, images[:1])
        print(f"training: batch {batch}, micro-batches of at most {slices} images")
        optimizer = make_optimizer("momentum", model.parameters(), 0.01)
        plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)  # as the benches' plain loops

        def plain_step() -> None:
            plain_torch.train_step(plain, plain_optimizer, images, labels)

        ours, theirs = alternated(lambda: train_step(model, optimizer, images, labels, slice_size=slices),
                                  plain_step, args.steps)
        report(ours, theirs, batch, {part: sum(pair) for part, pair in flops.items()}, ceiling, "training")

    if args.only != "training":
        prepared, _, _ = fold_batch_norms(model.eval())  # as batchlab infer prepares it (infer/measure.py)
        plain.eval()
        slices = microbatch.slice_size(microbatch.AUTOMATIC, batch, prepared, images[:1])
        print(f"\ninference: batch {batch}, micro-batches of at most {slices} images")

        def infer() -> None:
            with torch.inference_mode():
                for start, stop in microbatch.bounds(batch, slices):
                    prepared(images[start:stop])

        def plain_infer() -> None:
            with torch.inference_mode():
                plain(images)

        ours, theirs = alternated(infer, plain_infer, args.steps)
        report(ours, theirs, batch, {part: forward for part, (forward, _) in flops.items()}, ceiling, "inference")


if __name__ == "__main__":
    main()
