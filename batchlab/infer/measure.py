"""Inference throughput and latency at one batch size, compute only and with overheads.

- compute only: the uint8 batch already on the device, the model warmed up; each timed call
  normalises it and runs one forward pass in inference mode, the device synchronised before and
  after.
- with overheads: each timed call starts from the uint8 batch in host memory and includes the
  host→device copy, normalisation, the forward pass and the device→host copy of the predictions.
- the model: in eval mode, batch norm folded into the convolution before it (nn/folding.py), as
  inference deployments prepare a model; the result records how many were folded.
- first call: the very first forward pass of the fresh model (allocator, kernel selection), timed
  once and reported apart; both series above start after it.
- the forward pass timed (spec.graph "auto"): on the CPU in fp32 and bf16, frozen oneDNN graphs of it
  (normalisation and model, one per slice size; cpu_graph.py), used only where they match the
  eager pass on the measured images; on a CUDA device with whole batches, a CUDA graph of it
  (graphs.py), each call copying its batch into the graph's input first. The first call stays
  eager; building a graph is timed apart and recorded, as is why none was used. "off": eager.

The batch is the test set tiled (repeated) up to the batch size, so any size can be measured.
Each series repeats until it has MIN_REPEATS calls and MIN_SECONDS of measurement (at most
MAX_REPEATS), so small batches get many samples and huge ones a few; every per-call time is kept,
and images/s and the latency percentiles are computed from them.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import torch

from ..core import heartbeat
from ..core.cpus import available_cores
from ..core.records import InferResult
from ..data import registry as data
from ..data.dataset import Dataset
from ..data.device import Normalize, channel_stats
from ..device.current import make_current
from ..device.fp32_math import set_cuda_fp32_math
from ..device.machine import THREAD_ENV, precision_units, resolve_device
from ..device.product_speed import product_speed
from ..device.threads import denormals_flushed
from ..device.timing import Region, peak_memory_bytes, reset_peak_memory
from ..nn import microbatch, models
from ..nn.folding import fold_batch_norms
from ..nn.placement import autocast, place
from ..nn.texts import shape_text
from ..spec.run import InferSpec
from . import cpu_graph
from .graphs import graphed_forward

MIN_REPEATS = 3
MIN_SECONDS = 1.0
MAX_REPEATS = 1000


def tiled(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly `batch_size` test images (and labels), the test set repeated as often as needed."""
    index = np.arange(batch_size) % len(images)
    return torch.from_numpy(images[index]), torch.from_numpy(labels[index])


def repeat_timed(call, device: torch.device) -> list[float]:
    """Time `call` until MIN_REPEATS calls and MIN_SECONDS, at most MAX_REPEATS calls."""
    seconds: list[float] = []
    while len(seconds) < MAX_REPEATS and (len(seconds) < MIN_REPEATS or sum(seconds) < MIN_SECONDS):
        heartbeat.beat()  # alive, for the sweep watching this process (outside the timed call)
        with Region(device) as region:
            call()
        seconds.append(region.seconds)
    return seconds


def load_weights(blob: bytes) -> dict:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def measure(spec: InferSpec, data_dir: str | None = None, weights: bytes | None = None,
            dataset: Dataset | None = None) -> InferResult:
    """Measure one inference configuration in this process; on `dataset` if given (images a
    benchmark made, of spec.dataset's shape) instead of spec.dataset's files."""
    spec = spec.validated()
    device = resolve_device(spec.device)
    torch.set_num_threads(spec.threads)
    result = InferResult(spec=spec)
    cuda_notes: dict = {}  # what a CUDA measurement set, for its record
    graph_notes: dict = {}  # whether the timed forward is a graph, and why not
    if device.type == "cuda":
        make_current(device)  # the capture's streams (graphs.py) are the current device's
        # Before the first op: fp32 is IEEE unless the measurement asks for tf32.
        cuda_notes["cuda_fp32_math"] = set_cuda_fp32_math(spec.precision, device)

    load_start = time.perf_counter()
    if dataset is None:
        dataset = data.load(spec.dataset, data_dir, spec.image_size, spec.strict_images)
    result.load_seconds = time.perf_counter() - load_start
    result.input_shape = shape_text(dataset.input_shape)
    host_images, labels = tiled(dataset.test_images, dataset.test_labels, spec.batch_size)
    if device.type == "cuda":
        host_images = host_images.pin_memory()  # as a serving pipeline would: faster, async-capable copies

    torch.manual_seed(spec.seed)
    model = models.build(spec.model, input_shape=dataset.input_shape, classes=dataset.classes)
    normalized = Normalize(*channel_stats(dataset.train_images), device)
    if weights is not None:
        saved = load_weights(weights)
        model.load_state_dict(saved["state_dict"])
        normalized = Normalize(saved["mean"], saved["std"], device)  # as the weights were trained
        result.weights_source = spec.weights
    # As a model prepared for inference: batch norm folded into the convolutions (nn/folding.py).
    model, folded, unfolded = fold_batch_norms(model.eval())
    model = place(model, device, spec.precision).eval()
    models.check_output(model, normalized(host_images[:2].to(device)), dataset.classes, spec.model, spec.dataset)
    slice_size = microbatch.slice_size(spec.micro_batch, spec.batch_size, model, normalized(host_images[:1].to(device)),
                                       spec.precision)
    reset_peak_memory(device)

    def eager(images: torch.Tensor) -> torch.Tensor:
        """Logits of the whole batch, computed slice by slice (microbatch.py)."""
        with torch.inference_mode(), autocast(device, spec.precision):
            logits = [model(normalized(images[start:stop]))
                      for start, stop in microbatch.bounds(len(images), slice_size)]
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    forward = eager

    def with_overheads() -> torch.Tensor:  # `forward` as bound when called: the graphed one once set
        return forward(host_images.to(device)).argmax(1).cpu()

    with Region(device) as first:
        predictions = with_overheads()
    result.first_call_seconds = first.seconds
    on_device = host_images.to(device)
    # After the first call, which stays the cold eager call it reports; building a graph is timed apart.
    forward = timed_forward(spec, eager, model, normalized, on_device, slice_size, graph_notes)
    result.compute_seconds = repeat_timed(lambda: forward(on_device), device)
    result.overhead_seconds = repeat_timed(with_overheads, device)
    if weights is not None:
        if forward is not eager:
            predictions = with_overheads()  # the accuracy of the forward pass that was timed, untimed
        result.accuracy = float((predictions == labels).float().mean())

    result.peak_memory_bytes = peak_memory_bytes(device)
    result.cores = available_cores()
    result.environment = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "thread_env": {name: os.environ.get(name) for name in THREAD_ENV},
                          "device_name": str(device), "dataset_checksum": dataset.checksum,
                          "micro_batch": slice_size, "data_notes": list(dataset.notes),
                          "precision_units": precision_units(spec.precision, device),
                          "precision_product_speed": product_speed(spec.precision, device),
                          "denormals_flushed": denormals_flushed(), "batch_norms_folded": folded,
                          **({"batch_norm_unfolded": unfolded} if unfolded else {}), **cuda_notes, **graph_notes}
    return result


def timed_forward(spec: InferSpec, eager, model, normalized: Normalize, sample: torch.Tensor, slice_size: int,
                  notes: dict):
    """The forward pass the series time: with --graph auto a graph of it where the device allows
    and it is built (cpu_graph.py on the CPU, graphs.py on CUDA), else `eager`; `notes` records which."""
    if spec.graph == "off":
        return eager
    if sample.device.type == "cpu":
        return cpu_graph.fused_forward(eager, model, normalized, sample, slice_size, spec.precision, notes)
    return graphed_forward(eager, lambda images: model(normalized(images)), sample, spec.precision, slice_size, notes)
