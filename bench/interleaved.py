"""batchlab's training steps against the plain loop's, timed in short interleaved chunks: the check
for small batches, where this VM's speed moves by up to 2x within minutes and whole passes timed
one after the other compare the machine's moments more than the loops.

    python bench/interleaved.py [--model seed-cnn|keras-cnn] [--batch-size 1] [--chunk 25] [--sets 60]

Each set takes `--chunk` new random batches and runs them through every loop in turn (the order
rotates from set to set), timing each loop's chunk. Every loop takes its batches as it does in
bench/run.py: batchlab gathers the uint8 images and normalises them (as its device path does), the
plain loops index the normalised float images. The figure per loop is the median over the sets of
(the plain loop's chunk time ÷ batchlab's for the same batches): batchlab's speed ÷ that loop's,
with its quartiles. Not part of the test suite; docs/performance.md (fourteenth session) has its
results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))

import plain_torch  # noqa: E402
import run as run_bench  # noqa: E402

from batchlab.core.cpus import available_cores  # noqa: E402
from batchlab.device.heap import keep_freed_memory  # noqa: E402
from batchlab.device.threads import flush_denormals  # noqa: E402
from batchlab.spec.run import RunSpec  # noqa: E402
from batchlab.train.engine import prepare, train_step  # noqa: E402

Step = Callable[[torch.Tensor], None]  # one training step on the images at these indices


def batchlab_step(prep, spec: RunSpec) -> Step:
    """The engine's step as `batchlab train` runs it (its model, layout, micro-batches, optimizer)."""
    dd = prep.dd
    model, optimizer, slices = run_bench.engine_parts(spec, dd, prep.device)

    def step(index: torch.Tensor) -> None:
        train_step(model, optimizer, dd.normalize(dd.train_images[index]), dd.train_labels[index], "fp32",
                   slice_size=slices)
    return step


def plain_step(prep, model_name: str, channels_last: bool, images: torch.Tensor) -> Step:
    """The plain loop's step (bench/plain_torch.py) on the normalised float `images`."""
    model = run_bench.plain_network(model_name, channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    labels = prep.dd.train_labels

    def step(index: torch.Tensor) -> None:
        plain_torch.train_step(model, optimizer, images[index], labels[index])
    return step


def interleaved_times(steps: dict[str, Step], batches: Callable[[], torch.Tensor], sets: int) -> dict[str, list[float]]:
    """Seconds per step of each loop in each set; `batches()` gives a set's (chunk, batch) indices."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(sets):
        chunk = batches()
        for name in run_bench.rotated(names, number):
            start = time.perf_counter()
            for index in chunk:
                steps[name](index)
            times[name].append((time.perf_counter() - start) / len(chunk))
    return times


def speed_against(times: dict[str, list[float]], base: str) -> dict[str, tuple[float, float, float]]:
    """Per loop other than `base`: the quartiles over the sets of its time ÷ base's time (base's speed
    ÷ its speed), set by set."""
    found = {}
    for name, seconds in times.items():
        if name != base:
            ratios = [theirs / ours for ours, theirs in zip(times[base], seconds)]
            low, middle, high = statistics.quantiles(ratios, n=4)
            found[name] = (low, middle, high)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(run_bench.FLOP_PER_IMAGE), default="seed-cnn")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=25, help="steps per loop per set")
    parser.add_argument("--sets", type=int, default=60)
    args = parser.parse_args()
    if min(args.batch_size, args.chunk) < 1 or args.sets < 2:
        parser.error("--batch-size and --chunk must be at least 1, --sets at least 2")
    flush_denormals()  # as a run's own process does (bench/run.py too)
    keep_freed_memory()
    torch.set_num_threads(available_cores())
    spec = RunSpec(model=args.model, batch_size=args.batch_size)
    prep = prepare(spec)
    images = prep.dd.normalize(prep.dd.train_images)
    steps = {"batchlab": batchlab_step(prep, spec),
             "plain_torch": plain_step(prep, args.model, False, images),
             "plain_torch_channels_last": plain_step(prep, args.model, True, images)}
    generator = torch.Generator().manual_seed(1)

    def batches() -> torch.Tensor:
        return torch.randint(0, prep.dd.train_count, (args.chunk, args.batch_size), generator=generator)

    interleaved_times(steps, batches, 1)  # warm-up: first calls, kernel choices
    times = interleaved_times(steps, batches, args.sets)
    print(f"{args.model}, batch {args.batch_size}: {args.sets} sets of {args.chunk} steps per loop")
    print(f"batchlab: median {statistics.median(times['batchlab']) * 1e6:,.0f} µs a step")
    for name, (low, middle, high) in speed_against(times, "batchlab").items():
        print(f"÷ {name}: {middle:.2f}x (q1-q3 {low:.2f}-{high:.2f}); its median "
              f"{statistics.median(times[name]) * 1e6:,.0f} µs a step")


if __name__ == "__main__":
    main()
