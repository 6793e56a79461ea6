"""What a run gives back, torch-free so that the store, reports and the CLI can read it anywhere:
EpochRecord (one epoch), RunResult (a training run), InferResult (an inference measurement), and
the statuses a run can end with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the specs sit above the core
    from ..spec.run import InferSpec, RunSpec

# STALE: was RUNNING, but its sweep ended without storing how (killed); core/owner.py.
STATUSES = ("PENDING", "RUNNING", "DONE", "FAILED", "OOM", "DIVERGED", "KILLED", "STALE")
FINISHED = ("DONE", "DIVERGED")  # outcomes a resumed sweep does not run again
# Outcomes that mean a run did not give its result (a sweep exits 1). DIVERGED and OOM (under
# --memory-limit: "this batch does not fit") are results.
FAILURES = ("FAILED", "KILLED")


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    train_seconds: float
    eval_seconds: float
    images: int  # images trained on in this epoch
    steps: int
    # Of train_seconds, the host time the training loop waited for its batches (gather, loader, copy
    # to the device); hogwild: the workers' mean; ddp: the longest rank's. None: not measured (runs
    # before schema 4).
    data_wait_seconds: float | None = None


@dataclass
class EvalRecord:
    """One evaluation of the watched split (validation if held out, else test) during training:
    after every epoch, and every --eval-every steps. Figures are cumulative from the run's start."""

    step: int  # optimizer steps taken (synchronised updates for ddp)
    epoch: int  # the epoch it fell in (1-based)
    images: int  # images trained on (all processes)
    train_seconds: float  # train seconds so far, evaluation excluded
    accuracy: float
    loss: float
    eval_seconds: float  # what this evaluation took (outside train seconds)
    gradient_noise_scale: float | None = None  # B_simple so far (--gns; train/gns.py)


@dataclass
class RunResult:
    spec: RunSpec
    status: str = "DONE"  # DONE or DIVERGED (failures are raised, not returned)
    epochs: list[EpochRecord] = field(default_factory=list)
    parameters: int = 0
    train_images: int = 0  # size of the training set used (after split and limit)
    val_images: int = 0
    test_images: int = 0
    dataset_checksum: str = ""
    dataset_source: str = ""
    load_seconds: float = 0.0
    to_device_seconds: float = 0.0
    model_build_seconds: float = 0.0
    warmup_seconds: float = 0.0
    startup_seconds: float | None = None  # its process's start or fork (runner/worker_server.py) → run start
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    cores: int = 0  # cores available to the run: workers x threads above this oversubscribes
    time_to_target_seconds: float | None = None
    steps_to_target: int | None = None  # optimizer steps until the watched accuracy first reached the target
    images_to_target: int | None = None
    gradient_noise_scale: float | None = None  # B_simple at the last evaluation (--gns)
    diverged_step: int | None = None
    input_shape: str | None = None  # "CxHxW" of the images the model was fed (None: not loaded)
    skipped_images: int = 0  # folder images that could not be decoded (listed in environment)
    input_used: str | None = None  # the input path taken, "device" or "loader" (the spec may say auto)
    effective_lr: float | None = None  # the LR after --lr-scaling, before warm-up and schedule
    error: str | None = None
    environment: dict = field(default_factory=dict)
    evaluations: list[EvalRecord] = field(default_factory=list)
    # Final weights (CPU state dict) when asked for with keep_weights; never serialised.
    weights: dict | None = field(default=None, repr=False)

    @property
    def images_processed(self) -> int:
        return sum(e.images for e in self.epochs)

    @property
    def train_seconds(self) -> float:
        return sum(e.train_seconds for e in self.epochs)



@dataclass
class InferResult:
    spec: InferSpec
    status: str = "DONE"
    compute_seconds: list[float] = field(default_factory=list)  # one entry per timed forward pass
    overhead_seconds: list[float] = field(default_factory=list)  # one entry per call with copies
    first_call_seconds: float = 0.0
    accuracy: float | None = None  # only with trained weights
    weights_source: str = "random"  # "random" or the training run's key
    load_seconds: float = 0.0
    peak_memory_bytes: int = 0
    cores: int = 0
    input_shape: str | None = None  # "CxHxW" (None: not loaded)
    error: str | None = None
    environment: dict = field(default_factory=dict)
