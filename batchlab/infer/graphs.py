"""CUDA graphs for inference: at small batches a GPU forward pass is bound by kernel launches,
and a CUDA graph replays the captured pass (normalisation and model) with one launch.

The graph holds one batch shape, the measured one (every timed call has it), and reads its input
from one buffer: each call copies its batch there, replays, and returns the graph's output
buffer, which the next call overwrites. A model that cannot be captured (host syncs,
data-dependent control flow) runs eagerly, and the measurement records why. Not measured yet: no
GPU was available.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..device.graph_capture import capture_failure, stream_kept
from ..nn.placement import autocast

# Passes before the capture, on a side stream as PyTorch's CUDA-graph examples do: lazy
# initialisation (cuDNN's algorithm choice, the allocator's first blocks) stays out of the graph.
WARMUP_CALLS = 3

Forward = Callable[[torch.Tensor], torch.Tensor]


def decide(device_type: str, batch_size: int, slice_size: int) -> tuple[bool, str]:
    """Whether a measurement's forward passes are graphed, and the reason for its record."""
    if device_type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if slice_size < batch_size:
        return False, f"micro-batches of {slice_size} images: only whole batches are graphed"
    return True, "whole batches on a CUDA device"


class GraphedForward:
    """One captured forward pass: copy the batch into the graph's input, replay, and return the
    graph's output (valid until the next call)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static_input: torch.Tensor, static_output: torch.Tensor):
        self.graph, self.static_input, self.static_output = graph, static_input, static_output

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(images)
        self.graph.replay()
        return self.static_output


def capture(model_pass: Forward, sample: torch.Tensor, precision: str) -> tuple[GraphedForward | None, str]:
    """CUDA only: `model_pass` (the uint8 batch → logits) captured for batches shaped as `sample`,
    under no_grad and the run's autocast without its weight cache (a graph must hold the casts
    themselves: the cache is freed when its context ends); None and the error's line if it cannot
    be captured."""
    device = sample.device
    static_input = sample.clone()
    try:
        with stream_kept(device), torch.no_grad(), autocast(device, precision, cache=False):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    model_pass(static_input)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = model_pass(static_input)
    except Exception as error:  # e.g. a host sync while capturing: the measurement runs eagerly
        return None, capture_failure(error)
    return GraphedForward(graph, static_input, static_output), ""


def graphed_forward(eager: Forward, model_pass: Forward, sample: torch.Tensor, precision: str, slice_size: int,
                    environment: dict) -> Forward:
    """The forward the measurement times: `model_pass` as a CUDA graph where decide() allows and
    capture works, else `eager`; recorded in `environment` as cuda_graphs: true or
    "not used: <reason>". Measurements not on CUDA get `eager` itself and record nothing."""
    if sample.device.type != "cuda":
        return eager
    use, reason = decide(sample.device.type, sample.shape[0], slice_size)
    graphed = None
    if use:
        graphed, reason = capture(model_pass, sample, precision)
    environment["cuda_graphs"] = True if graphed is not None else f"not used: {reason}"
    return eager if graphed is None else graphed
