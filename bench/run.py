"""Benchmark: batchlab's engine against the stacks users would otherwise run, on this machine.

Same network (seed-cnn), same data (Fashion-MNIST), fp32, CPU, all cores:
- batchlab: the code paths `batchlab train` (engine.StepLoop) and `batchlab infer` (inference.measure) use;
- plain PyTorch: DataLoader over a TensorDataset (plain_torch.py);
- Keras 3 on TensorFlow (keras_peer.py), if the optional environment exists (`make bench-tf`).
Also: this machine's fp32 GEMM rate, every training/inference figure as a fraction of it, the cost
of the engine's measurement (per-step buffers) against the same loop without it, and test accuracy
after 2 epochs at batch 64 for batchlab and the plain loop.

    python bench/run.py [--quick] [--repeats 3]

Writes bench/results/<date>-<host>.json and prints the tables. Not part of the test suite.
"""

from __future__ import annotations

import argparse
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

import batchlab  # noqa: E402
from batchlab import microbatch, models  # noqa: E402
from batchlab.engine import StepLoop, make_optimizer, place, prepare, train_step  # noqa: E402
from batchlab.inference import images_per_second, measure  # noqa: E402
from batchlab.machine import fingerprint  # noqa: E402
from batchlab.spec import InferSpec, RunSpec  # noqa: E402

TRAIN_FLOP_PER_IMAGE = 20.3e6  # seed-cnn forward + backward
INFER_FLOP_PER_IMAGE = 7.0e6  # seed-cnn forward
TRAIN_SIZES = [1, 4, 16, 64, 256, 1024, 4096]
INFER_SIZES = [1, 4, 16, 64, 256, 1024, 4096, 10000, 40000]
HERE = Path(__file__).parent
TF_PYTHON = HERE / ".venv-tf" / "bin" / "python"


def gemm_flops(side: int = 4096, seconds: float = 2.0) -> dict[str, float]:
    """fp32 FLOP/s of a side² matrix product through both of PyTorch's CPU GEMM libraries: MKL
    (torch.mm) and oneDNN (which runs the convolutions). They differ 2x on some CPUs (MKL takes a
    slower path on AMD), so the ceiling is the faster one."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    out = torch.empty(side, side)
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


def batchlab_train(prep, batch: int, repeats: int, record: bool = True) -> list[float]:
    """images/s of the engine's hot loop (StepLoop.train, as `batchlab train` runs it); with
    record=False the same steps without the per-step result buffers (the measurement's cost)."""
    rates = []
    for _ in range(repeats):
        torch.manual_seed(0)
        # As engine.prepare sets a run up: the model in the device's layout, automatic micro-batches.
        model = place(models.build("seed-cnn"), prep.device).train()
        slices = microbatch.slice_size(microbatch.AUTOMATIC, batch, model, prep.dd.normalize(prep.dd.train_images[:1]))
        optimizer = make_optimizer("momentum", model.parameters(), 0.01)
        loop = StepLoop(model, optimizer, prep.dd, batch, slice_size=slices)
        indices = torch.randperm(prep.dd.train_count)[:images_for(batch)]
        loop.train(indices[:2 * batch])  # warm-up
        start = time.perf_counter()
        if record:
            loop.train(indices)
        else:
            for step in range(0, len(indices), batch):
                index = indices[step:step + batch]
                train_step(model, optimizer, prep.dd.normalize(prep.dd.train_images[index]), prep.dd.train_labels[index],
                           slice_size=slices)
        rates.append(len(indices) / (time.perf_counter() - start))
    return rates


def plain_train(prep, batch: int, repeats: int) -> list[float]:
    images = prep.dd.normalize(prep.dd.train_images)
    rates = []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = plain_torch.seed_cnn()
        subset = torch.randperm(len(images))[:images_for(batch)]
        plain_torch.train_images_per_second(model, images[subset[:2 * batch]], prep.dd.train_labels[subset[:2 * batch]], batch)
        rates.append(plain_torch.train_images_per_second(model, images[subset], prep.dd.train_labels[subset], batch))
    return rates


def batchlab_infer(batch: int, data_dir: str | None) -> list[float]:
    """images/s of each timed call of `batchlab infer`'s compute-only series (at least 3 calls and
    1 s), so the spread is over calls, as for the peer's repeated passes."""
    result = measure(InferSpec(batch_size=batch), data_dir)
    return [images_per_second(batch, [seconds]) for seconds in result.compute_seconds]


def plain_infer(prep, batch: int, repeats: int) -> list[float]:
    images = prep.dd.normalize(prep.dd.test_images)
    tiled = images[torch.arange(max(batch, 2048)) % len(images)]
    model = plain_torch.seed_cnn()
    plain_torch.infer_images_per_second(model, tiled[:batch], batch)  # warm-up
    return [plain_torch.infer_images_per_second(model, tiled, batch) for _ in range(repeats)]


def keras(prep, train_sizes: list[int], infer_sizes: list[int]) -> dict | None:
    if not TF_PYTHON.exists():
        return None
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data.npz"
        np.savez(data, images=prep.dd.normalize(prep.dd.train_images).squeeze(1).numpy(),
                 labels=prep.dd.train_labels.numpy())
        done = subprocess.run([str(TF_PYTHON), str(HERE / "keras_peer.py"), str(data),
                               ",".join(map(str, train_sizes)), ",".join(map(str, infer_sizes))],
                              capture_output=True, text=True)
    if done.returncode != 0:
        print(f"Keras/TensorFlow peer failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy_check(prep, data_dir: str | None) -> dict:
    engine = batchlab.run(RunSpec(batch_size=64, epochs=2, optimizer="momentum", lr=0.01), data_dir)
    torch.manual_seed(0)
    model = plain_torch.seed_cnn()
    images = prep.dd.normalize(prep.dd.train_images)
    for _ in range(2):
        plain_torch.train_images_per_second(model, images, prep.dd.train_labels, 64)
    plain = plain_torch.test_accuracy(model, prep.dd.normalize(prep.dd.test_images), prep.dd.test_labels)
    return {"batchlab": engine.epochs[-1].test_accuracy, "plain_torch": plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    train_sizes = [1, 64, 1024] if args.quick else TRAIN_SIZES
    infer_sizes = [1, 256, 10000] if args.quick else INFER_SIZES
    torch.set_num_threads(batchlab.spec.available_cores())
    prep = prepare(RunSpec(), args.data_dir)

    gemm = gemm_flops()
    ceiling = max(gemm.values())
    print(f"fp32 GEMM 4096²: MKL {gemm['mkl'] / 1e9:,.0f}, oneDNN {gemm['onednn'] / 1e9:,.0f} GFLOP/s → training ceiling {ceiling / TRAIN_FLOP_PER_IMAGE:,.0f} img/s, "
          f"inference ceiling {ceiling / INFER_FLOP_PER_IMAGE:,.0f} img/s")
    results = {"machine": fingerprint(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "gemm_flops": ceiling, "gemm_flops_by_library": gemm, "repeats": repeats, "train": {}, "infer": {}}
    for batch in train_sizes:
        mine, peer = spread(batchlab_train(prep, batch, repeats)), spread(plain_train(prep, batch, repeats))
        results["train"][batch] = {"batchlab": mine, "plain_torch": peer}
        print(f"train bs={batch:>5}: batchlab {mine['median']:>8,.0f} img/s ({mine['median'] * TRAIN_FLOP_PER_IMAGE / ceiling:5.1%}"
              f" of GEMM)  plain PyTorch {peer['median']:>8,.0f}  ratio {mine['median'] / peer['median']:.2f}x")
    for batch in infer_sizes:
        mine, peer = spread(batchlab_infer(batch, args.data_dir)), spread(plain_infer(prep, batch, repeats))
        results["infer"][batch] = {"batchlab": mine, "plain_torch": peer}
        print(f"infer bs={batch:>5}: batchlab {mine['median']:>8,.0f} img/s ({mine['median'] * INFER_FLOP_PER_IMAGE / ceiling:5.1%}"
              f" of GEMM)  plain PyTorch {peer['median']:>8,.0f}  ratio {mine['median'] / peer['median']:.2f}x")
    for batch in (1, 64):
        # Interleaved, so that a slow spell of a shared machine hits both alike.
        pairs = [(batchlab_train(prep, batch, 1)[0], batchlab_train(prep, batch, 1, record=False)[0])
                 for _ in range(max(repeats, 5))]
        recorded, bare = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        results.setdefault("measurement_cost", {})[batch] = 1 - recorded / bare
        print(f"measurement cost at bs={batch}: {1 - recorded / bare:+.1%} (recorded {recorded:,.0f} vs bare {bare:,.0f} img/s)")
    results["keras"] = keras(prep, train_sizes, infer_sizes)
    print("Keras/TensorFlow:", "not installed (make bench-tf)" if results["keras"] is None else results["keras"])
    if not args.quick:
        results["accuracy_after_2_epochs_bs64"] = accuracy_check(prep, args.data_dir)
        print("test accuracy after 2 epochs at batch 64:", results["accuracy_after_2_epochs_bs64"])
    out = HERE / "results" / f"{datetime.now():%Y%m%d-%H%M}-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
