"""What one run depends on: RunSpec (a training run), InferSpec (an inference measurement), and
their validation. ExperimentSpec (a grid of them) is in experiment.py.

A RunSpec is one flat, frozen record. Its key (a hash of every field) identifies the run in the
store, so a sweep started again can skip what already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..core.cpus import available_cores
from ..core.errors import SpecError
from ..data import registry as data
from ..nn import names
from .fields import setting

IMAGE_SIZE_HELP = ("Bring every image to N×N: shorter side to N, then a centre crop; 0 = the data's own size "
                   "(a folder of mixed sizes: the most common shorter side, with a note).")
STRICT_IMAGES_HELP = "Refuse a folder dataset with an image that cannot be decoded (default: skip it, with a note)."
MICRO_BATCH_HELP = ("Images per slice of a batch (gradients accumulate to one update); 0 = automatic "
                    "(cache-sized on CPU, whole on GPU), ≥ batch size = whole batches.")
OPTIMIZERS = ("sgd", "momentum", "adam")
STRATEGIES = ("single", "hogwild", "ddp")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
INPUTS = ("auto", "device", "loader")  # data/batches.py, data/input_path.py
GRAPHS = ("auto", "off")  # infer/cpu_graph.py, infer/graphs.py
GRAPH_HELP = ("auto = time the forward pass as a graph where it runs and matches eager (oneDNN Graph on the CPU "
              "in fp32 and bf16, CUDA graphs for whole batches), recording why not elsewhere; off = eager PyTorch.")
LR_SCALINGS = ("none", "linear", "sqrt")  # train/schedule.py
SCHEDULES = ("constant", "cosine", "step")


def need(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


# The store keeps whole numbers in SQLite INTEGER columns: signed 64 bits.
STORABLE_INTS = range(-2**63, 2**63)


def check_storable(spec: RunSpec | InferSpec) -> None:
    """Every whole number of `spec` fits the store (e.g. not seed = 2**63, or 2**63 - 1 with a
    second repeat: seed + 1), and every real number is finite (lr = inf is no learning rate)."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value not in STORABLE_INTS:
            raise SpecError(f"{f.name} = {value} is out of range: the store holds whole numbers "
                            "from -2**63 to 2**63 - 1")
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{f.name} must be a finite number, got {value}")


def check_common(spec: RunSpec | InferSpec) -> None:
    """The checks training and inference specs share (torch-free: the registries' names only)."""
    check_storable(spec)
    need(data.dataset_problem(spec.dataset) is None, data.dataset_problem(spec.dataset) or "")
    need(data.is_known_dataset(spec.dataset),
         f"unknown dataset {spec.dataset!r}; choose one of {', '.join(data.DATASETS)} or folder:PATH")
    need(names.is_known_model(spec.model),
         f"unknown model {spec.model!r}; choose one of {', '.join(names.BUILTIN_MODELS)}, {names.MODEL_FORMS}")
    need(spec.batch_size >= 1, f"batch size must be at least 1, got {spec.batch_size}")
    need(re.fullmatch(r"cpu|mps|cuda(:\d+)?", spec.device) is not None,
         f"unknown device {spec.device!r}; use cpu, cuda, cuda:N or mps")
    need(spec.threads >= 0, f"threads must be at least 1 (or 0 for all cores), got {spec.threads}")
    need(spec.precision in PRECISIONS,
         f"unknown precision {spec.precision!r}; choose one of {', '.join(PRECISIONS)}")
    # TF32 is a mode of NVIDIA tensor cores; the GPU's generation is judged where torch can ask
    # it (device/fp32_math.py).
    need(spec.precision != "tf32" or spec.device.startswith("cuda"),
         f"tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (Ampere); this run's device is {spec.device}")
    need(spec.micro_batch >= 0, f"micro-batch must be at least 1 (or 0 for automatic), got {spec.micro_batch}")
    need(spec.image_size >= 0, f"image size must be at least 1 (or 0 for the data's own), got {spec.image_size}")


# Fields added after runs were stored, left out of the key at their default value: the runs
# stored before them keep their keys (and so are found finished).
UNKEYED_DEFAULTS = {"nodes": 1}


class Keyed:
    """Identity and serialisation shared by the spec records."""

    KIND = "train"

    @property
    def key(self) -> str:
        """Stable identity: a hash over the kind and every field (so also repeat and seed)."""
        payload = json.dumps({"kind": self.KIND, **self.identity()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """Every field, but those of UNKEYED_DEFAULTS at their default: what identifies the spec."""
        values = dataclasses.asdict(self)
        return {name: value for name, value in values.items()
                if name not in UNKEYED_DEFAULTS or value != UNKEYED_DEFAULTS[name]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"unknown {cls.KIND} setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass(frozen=True)
class RunSpec(Keyed):
    dataset: str = setting("fashion-mnist", "mnist, fashion-mnist, cifar10, cifar100, cifar100-coarse or folder:PATH.")
    model: str = setting("seed-cnn", "seed-cnn, keras-cnn, mlp, torchvision:NAME, package.module:factory or "
                                     "file.py:factory.")
    batch_size: int = setting(64, "Images per optimizer step (per worker).")
    epochs: int = setting(1, "Passes over the training set.")
    # SGD with momentum 0.9 at lr 0.01: a standard choice that learns seed-cnn within an epoch.
    optimizer: str = setting("momentum", "sgd, momentum (0.9) or adam.")
    lr: float = setting(0.01, "Learning rate (with --lr-scaling: the learning rate at --base-batch).")
    # The LR given is the LR at base_batch; each run's is scaled to its own batch (Goyal et al. 2017:
    # linear; Krizhevsky 2014, Hoffer et al. 2017: square root). Reported as effective_lr.
    lr_scaling: str = setting("none", "none, linear (lr x B / base batch) or sqrt (lr x sqrt(B / base batch)); "
                                      "B is the global batch for ddp, the worker's batch for hogwild.")
    base_batch: int = setting(64, "The batch size the given --lr is meant for, with --lr-scaling.")
    warmup_epochs: float = setting(0.0, "Raise the LR linearly over this many epochs (step k of W at lr x k/W).")
    schedule: str = setting("constant", "After the warm-up: constant, cosine (down to 0 at the last step) or step "
                                        "(x0.1 at 50% and at 75% of the steps).")
    device: str = setting("cpu", "cpu, cuda, cuda:N or mps (in a sweep, missing devices are skipped).")
    strategy: str = setting("single", "single, hogwild (async, shared memory) or ddp (sync all-reduce).")
    workers: int = setting(1, "Worker processes for hogwild/ddp (batch size is per worker).")
    nodes: int = setting(1, "Nodes a ddp run's workers are spread over, workers/nodes on each (needs --executor "
                            "slurm: one job whose tasks are the ranks).")
    # 0 means "available cores / workers", resolved by validated().
    threads: int = setting(0, "torch intra-op threads per process; 0 = cores / workers.")
    precision: str = setting("fp32", "fp32 (IEEE, also on GPUs), tf32 (fp32 matmuls and convolutions on tensor "
                                     "cores: CUDA, Ampere or newer), bf16 or fp16 (autocast forward passes).")
    val_split: float = setting(0.0, "Fraction of the training set held out (seeded) for validation.")
    limit_train: int = setting(0, "Train on N training images, a fixed sample stratified by class; 0 = all.")
    # False: the last, smaller batch of an epoch is trained on (every image once per epoch).
    drop_last: bool = setting(False, "Skip the last, smaller batch of each epoch.", grid=False)
    target_accuracy: float = setting(
        0.0, "Report the train seconds until this accuracy (validation if held out, else test); 0 = none.")
    # A run that stops once it reached the target spends no time it would not report (advise's runs).
    stop_at_target: bool = setting(False, "End the run after the epoch in which the target accuracy was reached.",
                                   grid=False)
    # Steps to target are only as fine as the evaluations: every epoch by default.
    eval_every: int = setting(0, "Also evaluate every N optimizer steps (outside train seconds); 0 = after each "
                                 "epoch only.")
    gns: bool = setting(False, "Measure the gradient noise scale B_simple while training, at each evaluation "
                               "(batches run in two slice sizes; ddp: a rank's batch against the global one).",
                        grid=False)
    # Each batch runs through the network in slices of this size whose gradients add up to the
    # batch's single update (microbatch.py). Reported as `slicing` (auto, whole or the size).
    micro_batch: int = setting(0, MICRO_BATCH_HELP, group="slicing")
    image_size: int = setting(0, IMAGE_SIZE_HELP)
    strict_images: bool = setting(False, STRICT_IMAGES_HELP, grid=False, group=None)
    # Reported as the path taken ("device" or "loader"): auto is resolved by the run.
    input: str = setting("auto", "device (the dataset on the device, batches by index), loader (a DataLoader from "
                                 "host memory) or auto (device unless the dataset would fill half the device).")
    loader_workers: int = setting(0, "DataLoader worker processes on the loader path; 0 = the training process loads.")
    augment: bool = setting(False, "Random crop (padding 1/8 of the size) and left-right flip of each training image.",
                            grid=False)
    seed: int = setting(0, "Seed of weights, batch order, dropout and augmentation; repeat r uses seed + r.",
                        group=None)
    repeat: int = setting(0, "Repeat number (set by --repeats).", flag=False, grid=False, group=None)

    def label(self) -> str:
        """Short human description for progress bars and messages."""
        precision = "" if self.precision == "fp32" else f" {self.precision}"
        loader = f" loader x{self.loader_workers}" if self.input == "loader" else ""
        return (f"{self.model} {self.dataset} bs={self.batch_size} {self.device}{precision}{loader}"
                f"{' augment' if self.augment else ''} {self.strategy}x{self.workers}"
                f"{f' on {self.nodes} nodes' if self.nodes > 1 else ''} t={self.threads} r={self.repeat}")

    @property
    def effective_lr(self) -> float:
        """The LR the run trains at (before warm-up and schedule): lr scaled from base_batch to the
        batch one update averages over (ddp: all ranks' together)."""
        batch = self.batch_size * (self.workers if self.strategy == "ddp" else 1)
        factor = {"none": 1.0, "linear": batch / self.base_batch, "sqrt": math.sqrt(batch / self.base_batch)}
        return self.lr * factor[self.lr_scaling]

    def validated(self) -> RunSpec:
        """Check every field; return a copy with defaults resolved (threads=0 → core count)."""
        check_common(self)
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.optimizer in OPTIMIZERS,
             f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        need(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        need(self.strategy in STRATEGIES,
             f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        need(self.workers >= 1, f"workers must be at least 1, got {self.workers}")
        need(self.strategy != "single" or self.workers == 1,
             "strategy 'single' runs exactly 1 worker (use --threads, or --strategy hogwild/ddp)")
        need(self.nodes >= 1, f"nodes must be at least 1, got {self.nodes}")
        need(self.nodes == 1 or self.strategy == "ddp", "--nodes spreads the ranks of a ddp run: use --strategy ddp")
        need(self.workers % self.nodes == 0,
             f"--workers {self.workers} do not split evenly over --nodes {self.nodes} (workers per node must be equal)")
        need(self.strategy != "hogwild" or self.device == "cpu",
             "strategy 'hogwild' shares parameters in CPU memory: use --device cpu (or ddp on GPUs)")
        need(0.0 <= self.val_split < 1.0, f"val split must be in [0, 1), got {self.val_split}")
        need(self.limit_train >= 0, f"limit-train must be at least 0, got {self.limit_train}")
        need(0.0 <= self.target_accuracy <= 1.0,
             f"target accuracy is a fraction in [0, 1], got {self.target_accuracy}")
        need(not self.stop_at_target or self.target_accuracy > 0,
             "--stop-at-target needs a --target-accuracy to stop at")
        need(not self.stop_at_target or self.strategy == "single",
             "--stop-at-target is decided by the one evaluating process: use --strategy single")
        need(self.repeat >= 0, f"repeat must be at least 0, got {self.repeat}")
        need(self.eval_every >= 0, f"eval-every must be at least 0 (0: after each epoch only), got {self.eval_every}")
        need(self.eval_every == 0 or self.strategy != "hogwild",
             "--eval-every: hogwild workers train without pausing; evaluate per epoch (--eval-every 0)")
        need(not self.gns or self.strategy != "hogwild",
             "--gns is measured with --strategy single or ddp (hogwild workers: not yet)")
        need(not self.gns or self.batch_size >= 2,
             "--gns compares the gradients of two batch sizes within each batch: use a batch size of at least 2")
        need(self.lr_scaling in LR_SCALINGS,
             f"unknown lr scaling {self.lr_scaling!r}; choose one of {', '.join(LR_SCALINGS)}")
        need(self.base_batch >= 1, f"base batch must be at least 1, got {self.base_batch}")
        need(self.warmup_epochs >= 0, f"warm-up epochs must be at least 0, got {self.warmup_epochs}")
        need(self.warmup_epochs < self.epochs,
             f"a warm-up of {self.warmup_epochs:g} epochs does not end within the run's {self.epochs} epoch(s)")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        need(self.input in INPUTS, f"unknown input {self.input!r}; choose one of {', '.join(INPUTS)}")
        need(self.loader_workers >= 0, f"loader workers must be at least 0, got {self.loader_workers}")
        need(self.loader_workers == 0 or self.input != "device",
             "--loader-workers needs the loader input path (--input loader or auto)")
        # Default: share the cores among the worker processes.
        threads = self.threads or max(1, available_cores() // self.workers)
        return dataclasses.replace(self, threads=threads)



@dataclass(frozen=True)
class InferSpec(Keyed):
    """One inference measurement: a model at one batch size on one device configuration."""

    KIND = "infer"
    dataset: str = setting("fashion-mnist", "Dataset whose test set is tiled into the batches.", grid=False,
                           cli_default="fashion-mnist")
    model: str = setting("seed-cnn", "Models (each with its own --weights).", cli_default="seed-cnn")
    batch_size: int = setting(256, "Batch sizes; larger than the test set is fine (tiled).",
                              cli_default="1,16,256,4096,40000")
    device: str = setting("cpu", "Devices, e.g. cpu,cuda (missing ones are skipped).", cli_default="cpu")
    threads: int = setting(0, "Intra-op thread counts; 0 = all available cores.", cli_default="0")
    precision: str = setting("fp32", "fp32, tf32 (CUDA, Ampere or newer), bf16, fp16.", cli_default="fp32")
    # A stored training run whose saved weights are used (and accuracy reported); "" = fresh weights.
    weights: str = setting("", "'' = fresh seeded weights; a training run's key (prefix) or 'latest' "
                               "(needs --save-weights on train).", grid=False, cli_default="")
    micro_batch: int = setting(0, MICRO_BATCH_HELP, group="slicing", cli_default="0")
    graph: str = setting("auto", GRAPH_HELP, cli_default="auto")
    image_size: int = setting(0, IMAGE_SIZE_HELP, grid=False, cli_default="0")
    strict_images: bool = setting(False, STRICT_IMAGES_HELP, grid=False, group=None, cli_default=None)
    seed: int = setting(0, "Seed of the fresh weights.", group=None, cli_default="0")

    def label(self) -> str:
        return (f"infer {self.model} {self.dataset} bs={self.batch_size} {self.device} t={self.threads} "
                f"{self.precision}{' trained' if self.weights else ''}{' graph=off' if self.graph == 'off' else ''}")

    def validated(self) -> InferSpec:
        check_common(self)
        need(self.graph in GRAPHS, f"unknown graph setting {self.graph!r}; choose one of {', '.join(GRAPHS)}")
        return dataclasses.replace(self, threads=self.threads or available_cores())


def field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


