"""Benchmark: batchlab's engine against the stacks users would otherwise run, on this machine.

Same network (seed-cnn, or keras-cnn with --model), same data (Fashion-MNIST), fp32, CPU, all cores:
- batchlab: the code paths `batchlab train` (train/engine.StepLoop) and `batchlab infer` (infer/measure.measure) use;
- plain PyTorch: DataLoader over a TensorDataset (plain_torch.py), the network in PyTorch's default
  layout and, as a second peer, moved to channels-last;
- Keras 3 on TensorFlow (keras_peer.py), if the optional environment exists (`make bench-tf`).
Also: this machine's fp32 GEMM rate, every training/inference figure as a fraction of it, the cost
of the engine's measurement (per-step buffers) against the same loop without it, and test accuracy
after 2 epochs at batch 64 for batchlab and the plain loop (these extras for seed-cnn only).

    python bench/run.py [--quick] [--repeats 3] [--model keras-cnn]

Writes bench/results/<date>-<host>[-keras-cnn].json and prints the tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import plain_torch  # noqa: E402
import standing  # noqa: E402
from standing import FLOP_PER_IMAGE  # noqa: E402

import batchlab  # noqa: E402
from batchlab.core.cpus import available_cores  # noqa: E402
from batchlab.core.stats import images_per_second  # noqa: E402
from batchlab.device.heap import keep_freed_memory  # noqa: E402
from batchlab.device.machine import fingerprint, precision_units  # noqa: E402
from batchlab.device.threads import flush_denormals  # noqa: E402
from batchlab.infer.measure import measure  # noqa: E402
from batchlab.spec.run import InferSpec, RunSpec  # noqa: E402
from batchlab.train.engine import (  # noqa: E402
    StepLoop,
    build_model,
    gns_slices,
    make_optimizer,
    prepare,
    slice_size_for,
    train_step,
)
from batchlab.train.gns import NoiseScale  # noqa: E402

TRAIN_SIZES = [1, 4, 16, 64, 256, 1024, 4096]
GNS_BATCH = 256  # the batch size the --gns overhead goal is stated at
# Steps of small batches are bound by fixed costs per operator, which a shared machine's slow spells
# stretch most: on a 2-core VM, seed-cnn's batch-1 steps with two threads ran 0.54x to 1.51x as fast
# as with one from one round of alternating runs to the next, a second or two apart. The PyTorch
# loops at these sizes get more alternating runs than --repeats (Keras, run after them in its own
# process, keeps --repeats).
NOISY_MAX_BATCH = 64
NOISY_REPEATS = 5
INFER_SIZES = [1, 4, 16, 64, 256, 1024, 4096, 10000, 40000]
HERE = Path(__file__).parent
TF_PYTHON = HERE / ".venv-tf" / "bin" / "python"


def gemm_flops(side: int = 4096, seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """FLOP/s of a side² matrix product in `dtype` through both of PyTorch's CPU GEMM libraries: MKL
    (torch.mm) and oneDNN (which runs the convolutions). They differ 2x on some CPUs (MKL takes a
    slower path on AMD), so the ceiling is the faster one."""
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    out = torch.empty(side, side, dtype=dtype)
    a_onednn, b_onednn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
    products = {"mkl": lambda: torch.mm(a, b, out=out),
                "onednn": lambda: torch._C._nn.mkldnn_linear(a_onednn, b_onednn, None)}
    rates = {}
    for name, product in products.items():
        product()  # warm-up
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            product()
            calls += 1
        rates[name] = 2 * side**3 * calls / (time.perf_counter() - start)
    return rates


def images_for(batch: int) -> int:
    """Images per timed training pass: enough steps to time, bounded for huge batches."""
    return min(60000, max(4 * batch, 2048))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rotated(names: list[str], turn: int) -> list[str]:
    """`names` starting at position `turn` (mod its length): each loop of a comparison takes every
    place in the order in turn, so none always runs right after the same one (or first, after the
    process's start-up)."""
    shift = turn % len(names)
    return names[shift:] + names[:shift]


def write_results(results: dict, suffix: str = "") -> None:
    """bench/results/<date>-<host><suffix>.json"""
    out = HERE / "results" / f"{datetime.now():%Y%m%d-%H%M}-{socket.gethostname()}{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")


def engine_parts(spec: RunSpec, dd, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """(model, optimizer, micro-batch size) as engine.prepare sets a run up: seeded, the model in
    the device's layout and training mode, automatic micro-batches, the benches' momentum SGD."""
    torch.manual_seed(0)
    model = build_model(spec, dd, device).train()
    slices = slice_size_for(spec, model, dd)
    return model, make_optimizer("momentum", model.parameters(), 0.01), slices


def batchlab_train(prep, batch: int, repeats: int, record: bool = True, gns: bool = False,
                   precision: str = "fp32", model_name: str = "seed-cnn") -> list[float]:
    """images/s of the engine's hot loop (StepLoop.train, as `batchlab train` runs it); with
    record=False the same steps without keeping each step's results (the measurement's cost);
    with gns=True measuring the gradient noise scale as `--gns` does; at `precision`."""
    spec = RunSpec(model=model_name, batch_size=batch, gns=gns, precision=precision)
    rates = []
    for _ in range(repeats):
        model, optimizer, slices = engine_parts(spec, prep.dd, prep.device)
        slices = gns_slices(spec, model, slices) if gns else slices
        loop = StepLoop(model, optimizer, prep.dd, batch, precision, slice_size=slices)
        loop.noise = NoiseScale(model) if gns else None
        indices = torch.randperm(prep.dd.train_count)[:images_for(batch)]
        loop.train(indices[:2 * batch])  # warm-up
        start = time.perf_counter()
        if record:
            loop.train(indices)
        else:
            for step in range(0, len(indices), batch):
                index = indices[step:step + batch]
                train_step(model, optimizer, prep.dd.normalize(prep.dd.train_images[index]), prep.dd.train_labels[index],
                           precision, slice_size=slices)
        rates.append(len(indices) / (time.perf_counter() - start))
    return rates


def plain_network(model_name: str, channels_last: bool) -> torch.nn.Module:
    """The plain network, seeded, in PyTorch's default layout or moved to channels-last as a user may."""
    torch.manual_seed(0)
    model = plain_torch.MODELS[model_name]()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def plain_train(prep, batch: int, repeats: int, model_name: str = "seed-cnn", channels_last: bool = False) -> list[float]:
    images = prep.dd.normalize(prep.dd.train_images)
    rates = []
    for _ in range(repeats):
        model = plain_network(model_name, channels_last)
        subset = torch.randperm(len(images))[:images_for(batch)]
        plain_torch.train_images_per_second(model, images[subset[:2 * batch]], prep.dd.train_labels[subset[:2 * batch]], batch)
        rates.append(plain_torch.train_images_per_second(model, images[subset], prep.dd.train_labels[subset], batch))
    return rates


def batchlab_infer(batch: int, data_dir: str | None, repeats: int, model_name: str = "seed-cnn",
                   graph: str = "auto") -> list[float]:
    """images/s of `batchlab infer`'s compute-only series (at least 3 timed calls and 1 s), once
    per repeat, each in a fresh measurement as `batchlab infer` makes it (`graph`: its --graph)."""
    rates = []
    for _ in range(repeats):
        result = measure(InferSpec(model=model_name, batch_size=batch, graph=graph), data_dir)
        rates.append(images_per_second(batch, result.compute_seconds))
    return rates


def plain_infer(prep, batch: int, repeats: int, model_name: str = "seed-cnn", channels_last: bool = False) -> list[float]:
    images = prep.dd.normalize(prep.dd.test_images)
    tiled = images[torch.arange(max(batch, 2048)) % len(images)]
    model = plain_network(model_name, channels_last)
    plain_torch.infer_images_per_second(model, tiled[:batch], batch)  # warm-up
    return [plain_torch.infer_images_per_second(model, tiled, batch) for _ in range(repeats)]


class KerasPeer:
    """Keras/TensorFlow in its own environment, one process per batch size (so it runs right after
    the PyTorch loops at that size, in the same spell of this machine's load)."""

    def __init__(self, prep, scratch: Path):
        self.available = TF_PYTHON.exists()
        self.version = None
        self.data = scratch / "data.npz"
        if self.available:
            np.savez(self.data, images=prep.dd.normalize(prep.dd.train_images).squeeze(1).numpy(),
                     labels=prep.dd.train_labels.numpy())

    def rates(self, mode: str, batch: int, repeats: int, model_name: str = "seed-cnn") -> list[float] | None:
        if not self.available:
            return None
        done = subprocess.run([str(TF_PYTHON), str(HERE / "keras_peer.py"), str(self.data), mode, str(batch),
                               str(repeats), model_name], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"Keras/TensorFlow peer failed at {mode} bs={batch}: {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return None
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        self.version = answer["keras"]
        return answer["rates"]


ACCURACY_SEEDS = (0, 1, 2)
BF16_SIZES = [64, 256, 1024]


def bf16_check(prep, data_dir: str | None, repeats: int, quick: bool) -> dict:
    """--precision bf16 against fp32: training images/s at BF16_SIZES (the two alternating run by
    run), and test accuracy after 2 epochs at batch 256 over ACCURACY_SEEDS (weights, gradients
    and the optimizer stay fp32: autocast runs the forward pass in bf16)."""
    units = precision_units("bf16", torch.device("cpu"))
    print(f"bf16 instructions of this CPU: {', '.join(units) if units else 'none (bf16 is emulated here)'}")
    # The hardware's own ratio, for the training ratios to be read against: a bf16 unit that
    # multiplies slower than fp32's (measured: a Xeon whose AMX a VM hid) makes bf16 training slower too.
    gemm = {str(dtype).removeprefix("torch."): max(gemm_flops(dtype=dtype).values())
            for dtype in (torch.float32, torch.bfloat16)}
    print(f"GEMM 4096²: fp32 {gemm['float32'] / 1e9:,.0f} GFLOP/s, bf16 {gemm['bfloat16'] / 1e9:,.0f}: "
          f"bf16 ÷ fp32 {gemm['bfloat16'] / gemm['float32']:.2f}x")
    found = {"precision_units": units, "gemm_flops": gemm, "train": {}}
    for batch in BF16_SIZES:
        pairs = [(batchlab_train(prep, batch, 1)[0], batchlab_train(prep, batch, 1, precision="bf16")[0])
                 for _ in range(max(repeats, 3))]
        fp32, bf16 = spread([p[0] for p in pairs]), spread([p[1] for p in pairs])
        found["train"][batch] = {"fp32": fp32, "bf16": bf16, "ratio": bf16["median"] / fp32["median"]}
        print(f"train bs={batch:>5}: fp32 {fp32['median']:>8,.0f} img/s  bf16 {bf16['median']:>8,.0f}  "
              f"bf16 ÷ fp32 {bf16['median'] / fp32['median']:.2f}x", flush=True)
    if not quick:
        accuracy = {}
        for precision in ("fp32", "bf16"):
            accuracy[precision] = spread([batchlab.run(RunSpec(batch_size=256, epochs=2, optimizer="momentum", lr=0.01,
                                                               seed=seed, precision=precision), data_dir)
                                          .epochs[-1].test_accuracy for seed in ACCURACY_SEEDS])
        found["accuracy_after_2_epochs_bs256"] = accuracy
        print("test accuracy after 2 epochs at batch 256:", accuracy)
    return found


def accuracy_check(data_dir: str | None, batch: int, epochs: int, lr: float, limit_train: int = 0) -> dict:
    """Test accuracy after `epochs` at `batch` with momentum SGD at `lr` (on `limit_train` images of
    batchlab's stratified sample, 0 = all), over several seeds for each loop: the seeds' spread is
    the noise the two loops' difference is judged against."""
    spec = RunSpec(batch_size=batch, epochs=epochs, optimizer="momentum", lr=lr, limit_train=limit_train)
    dd = prepare(spec, data_dir).dd  # the same training images for both loops
    engine, plain = [], []
    images = dd.normalize(dd.train_images)
    for seed in ACCURACY_SEEDS:
        run = batchlab.run(dataclasses.replace(spec, seed=seed), data_dir)
        engine.append(run.epochs[-1].test_accuracy)
        torch.manual_seed(seed)
        model = plain_torch.seed_cnn()
        for _ in range(epochs):
            plain_torch.train_images_per_second(model, images, dd.train_labels, batch, lr)
        plain.append(plain_torch.test_accuracy(model, dd.normalize(dd.test_images), dd.test_labels))
    return {"batchlab": spread(engine), "plain_torch": spread(plain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only-bf16", action="store_true", help="only the bf16-against-fp32 part")
    parser.add_argument("--model", choices=sorted(FLOP_PER_IMAGE), default="seed-cnn",
                        help="the network the three stacks train and infer (the extras: seed-cnn only)")
    args = parser.parse_args()
    model_name, flops = args.model, FLOP_PER_IMAGE[args.model]
    repeats = 1 if args.quick else args.repeats
    train_sizes = [1, 64, 1024] if args.quick else TRAIN_SIZES
    infer_sizes = [1, 256, 10000] if args.quick else INFER_SIZES
    flush_denormals()  # as in a run's own process, for every loop timed here (peers too)
    keep_freed_memory()  # likewise
    torch.set_num_threads(available_cores())
    prep = prepare(RunSpec(), args.data_dir)
    if args.only_bf16:
        write_results({"machine": fingerprint(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "bf16": bf16_check(prep, args.data_dir, repeats, args.quick)}, "-bf16")
        return

    gemm = gemm_flops()
    ceiling = max(gemm.values())
    print(f"fp32 GEMM 4096²: MKL {gemm['mkl'] / 1e9:,.0f}, oneDNN {gemm['onednn'] / 1e9:,.0f} GFLOP/s → {model_name} training ceiling "
          f"{ceiling / flops['train']:,.0f} img/s, inference ceiling {ceiling / flops['infer']:,.0f} img/s")
    results = {"machine": fingerprint(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": model_name, "gemm_flops": ceiling, "gemm_flops_by_library": gemm, "repeats": repeats, "train": {}, "infer": {}}
    scratch = tempfile.TemporaryDirectory()
    keras = KerasPeer(prep, Path(scratch.name))
    if not keras.available:
        print("Keras/TensorFlow: not installed (make bench-tf); timing the PyTorch loops only")
    # Each plain loop twice: in PyTorch's default layout, and moved to channels-last as a user may
    # (for seed-cnn's inference the faster of the two).
    # Inference also times batchlab's eager pass (--graph off) beside its default oneDNN graph: not a peer,
    # the measure of what the graph adds (its name is in standing.OWN_VARIANTS, so no peer).
    modes = [("train", train_sizes, flops["train"], lambda b: batchlab_train(prep, b, 1, model_name=model_name), {},
              {"plain_torch": lambda b: plain_train(prep, b, 1, model_name),
               "plain_torch_channels_last": lambda b: plain_train(prep, b, 1, model_name, channels_last=True)}),
             ("infer", infer_sizes, flops["infer"], lambda b: batchlab_infer(b, args.data_dir, 1, model_name),
              {"batchlab_eager": lambda b: batchlab_infer(b, args.data_dir, 1, model_name, graph="off")},
              {"plain_torch": lambda b: plain_infer(prep, b, 1, model_name),
               "plain_torch_channels_last": lambda b: plain_infer(prep, b, 1, model_name, channels_last=True)})]
    for mode, sizes, flop_per_image, ours, own_variants, plains in modes:
        for batch in sizes:
            # batchlab and the plain loops alternate repeat by repeat, Keras follows at the same size.
            figures = {"batchlab": [], **{name: [] for name in own_variants}, **{name: [] for name in plains}}
            for _ in range(repeats if args.quick or batch > NOISY_MAX_BATCH else max(repeats, NOISY_REPEATS)):
                figures["batchlab"].append(ours(batch)[0])
                for name, run in {**own_variants, **plains}.items():
                    figures[name].append(run(batch)[0])
            rates = {name: spread(values) for name, values in figures.items()}
            keras_rates = keras.rates(mode, batch, repeats, model_name)
            if keras_rates:
                rates["keras"] = spread(keras_rates)
            results[mode][batch] = rates
            mine = rates["batchlab"]["median"]
            _, best = standing.fastest_peer(rates)
            eager = (f" (eager {rates['batchlab_eager']['median']:>8,.0f})" if "batchlab_eager" in rates else "")
            print(f"{mode} bs={batch:>5}: batchlab {mine:>8,.0f} img/s{eager} ({mine * flop_per_image / ceiling:5.1%} of GEMM)  "
                  f"plain PyTorch {rates['plain_torch']['median']:>8,.0f} (channels-last "
                  f"{rates['plain_torch_channels_last']['median']:>7,.0f})  Keras "
                  + (f"{rates['keras']['median']:>8,.0f}" if "keras" in rates else f"{'—':>8}")
                  + f"  ÷ best peer {mine / best:.2f}x", flush=True)
    scratch.cleanup()
    results["keras_version"] = keras.version
    if model_name != "seed-cnn":
        write_results(results, f"-{model_name}")
        print(standing.table(results))
        return
    for batch in (1, 64):
        # The recorded loop between two runs of the bare one, so that a slow spell of a shared
        # machine or a position effect hits both alike; the two bare runs' difference is the noise.
        costs, noises = [], []
        for _ in range(max(repeats, 5)):
            before = batchlab_train(prep, batch, 1, record=False)[0]
            recorded = batchlab_train(prep, batch, 1)[0]
            after = batchlab_train(prep, batch, 1, record=False)[0]
            costs.append(1 - recorded / ((before + after) / 2))
            noises.append(abs(1 - after / before))
        cost, noise = statistics.median(costs), statistics.median(noises)
        results.setdefault("measurement_cost", {})[batch] = {"cost": cost, "noise": noise}
        print(f"measurement cost at bs={batch}: {cost:+.1%} (median over {len(costs)} recorded runs, each against the "
              f"bare runs before and after it; those two differ by {noise:.1%})")
    # --gns: the same loop measuring the gradient noise scale, alternating with the plain loop.
    plain_rates, gns_rates = [], []
    for _ in range(max(repeats, 5)):
        plain_rates.append(batchlab_train(prep, GNS_BATCH, 1)[0])
        gns_rates.append(batchlab_train(prep, GNS_BATCH, 1, gns=True)[0])
    overhead = 1 - statistics.median(gns_rates) / statistics.median(plain_rates)
    results["gns_overhead"] = {"batch": GNS_BATCH, "overhead": overhead, "plain": spread(plain_rates),
                               "gns": spread(gns_rates)}
    print(f"--gns at bs={GNS_BATCH}: {statistics.median(gns_rates):,.0f} img/s with, {statistics.median(plain_rates):,.0f} "
          f"without: overhead {overhead:+.1%} (medians of {len(gns_rates)} alternating runs each; plain runs spread "
          f"{min(plain_rates):,.0f}–{max(plain_rates):,.0f})")
    if not args.quick:
        results["accuracy_after_2_epochs_bs64"] = accuracy_check(args.data_dir, 64, 2, 0.01)
        print("test accuracy after 2 epochs at batch 64:", results["accuracy_after_2_epochs_bs64"])
        # Batch 2 takes other code paths (im2col convolutions): 1 epoch of 10,000 images, 5,000 steps,
        # at a learning rate that does not diverge there (0.01 did, in both loops).
        results["accuracy_after_1_epoch_bs2_10k"] = accuracy_check(args.data_dir, 2, 1, 0.001, limit_train=10_000)
        print("test accuracy after 1 epoch of 10,000 images at batch 2:", results["accuracy_after_1_epoch_bs2_10k"])
    results["bf16"] = bf16_check(prep, args.data_dir, repeats, args.quick)
    write_results(results)
    print(standing.table(results))


if __name__ == "__main__":
    main()
