"""CUDA graphs for training steps.

At small batches a GPU step is bound by launches: each of the forward's and backward's dozens of
kernels costs the host microseconds to launch, more than the GPU needs to run it. A CUDA graph
replays a captured forward, and a captured backward, with one launch each
(torch.cuda.make_graphed_callables). The loss, the argmax, zero_grad and the optimizer step stay
eager (the fused optimizer is a few kernels). The graph holds one batch shape: a batch of another
shape (an epoch's last, smaller batch) runs through the eager model, whose parameters are the same
tensors, so both update the same weights.

Graphed only where the step is the model on a whole batch in one process (decide); a model whose
forward cannot be captured (host syncs, data-dependent control flow) trains eagerly, and the run
records why. Not measured yet: no GPU was available.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..data.device import DeviceData
from ..device.graph_capture import capture_failure, stream_kept
from ..nn.placement import autocast
from ..spec.run import RunSpec


def decide(spec: RunSpec, device_type: str, slice_size: int) -> tuple[bool, str]:
    """Whether a run's training steps are graphed, and the reason for the run's record."""
    if device_type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if spec.strategy != "single":
        # DDP all-reduces from hooks as the backward runs; hogwild is CPU-only.
        return False, f"strategy {spec.strategy}: only single-process runs are graphed"
    if spec.gns:
        return False, "--gns reads the gradients of each slice of a batch"
    if spec.precision == "fp16":
        return False, "fp16: its loss scaling may skip steps, kept eager"
    if slice_size < spec.batch_size:
        return False, f"micro-batches of {slice_size} images: only whole batches are graphed"
    return True, "whole batches in one process on a CUDA device"


class GraphedModel:
    """The model's training forward (and so its backward) as a CUDA graph for batches of the
    captured shape; any other batch goes through the eager model. One shape comparison per call."""

    def __init__(self, graphed: Callable[[torch.Tensor], torch.Tensor], eager: nn.Module, shape: torch.Size):
        self.graphed, self.eager, self.shape = graphed, eager, shape

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.graphed(images) if images.shape == self.shape else self.eager(images)


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """The model's buffers (batch normalisation's running statistics) hold after the block what
    they held before it, in place: forward passes made inside leave no trace in them."""
    saved = [buffer.clone() for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)


def capture(model: nn.Module, sample: torch.Tensor, precision: str) -> tuple[GraphedModel | None, str]:
    """CUDA only: the model's training forward and backward captured for batches shaped as
    `sample` (a real batch on the device, normalised as the step uses it); None and the error's
    line if the model cannot be captured (it then trains eagerly).

    make_graphed_callables runs the model a few times on a side stream before capturing it. Those
    passes take gradients with torch.autograd.grad, which returns them without accumulating into
    the parameters' .grad, and no optimizer step runs, so the weights are untouched (and every
    step zeroes .grad first anyway); batch-norm statistics they update are put back
    (kept_buffers). Their dropout masks do draw from the CUDA generator: the run's seeded stream
    moves on by those draws, so a graphed run's masks differ from an eager run's of the same
    seed (each stays seeded). Each replay draws fresh masks: PyTorch advances the generator by
    the graph's draws at every replay."""
    model.train()  # the graph serves the state it was captured in; evaluation runs the eager model
    try:
        # The buffers are put back last: on the run's stream, once the capture's work has finished.
        with kept_buffers(model), stream_kept(sample.device), autocast(sample.device, precision, cache=False):
            # allow_unused_input: a parameter the forward does not use gets no gradient, as eagerly.
            torch.cuda.make_graphed_callables(model, (sample,), allow_unused_input=True)
        graphed = model.forward  # make_graphed_callables set the graphed forward on the module itself
    except Exception as error:  # e.g. a host sync while capturing: the run trains eagerly
        return None, capture_failure(error)
    finally:
        # model(images) is the eager model again, for other shapes, evaluation and saved weights.
        vars(model).pop("forward", None)
    return GraphedModel(graphed, model, sample.shape), ""


def graphed_steps(model: nn.Module, spec: RunSpec, dd: DeviceData, slice_size: int,
                  environment: dict) -> GraphedModel | None:
    """The run's training forward as a CUDA graph where decide() allows and capture works (None:
    the eager model), recorded in `environment` as cuda_graphs: true or "not used: <reason>".
    Called once per process, after the warm-up, so that no capture is timed; runs that are not
    on CUDA capture and record nothing."""
    if dd.device.type != "cuda":
        return None
    use, reason = decide(spec, dd.device.type, slice_size)
    graphed = None
    if use:
        sample = dd.normalize(dd.head(min(spec.batch_size, dd.train_count)))
        graphed, reason = capture(model, sample, spec.precision)
    environment["cuda_graphs"] = True if graphed is not None else f"not used: {reason}"
    return graphed
