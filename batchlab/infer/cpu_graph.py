"""oneDNN Graph for inference on the CPU: the forward pass (normalisation and model) traced with
TorchScript, frozen, and run by PyTorch's oneDNN Graph fuser (torch.jit.enable_onednn_fusion),
which compiles each convolution or linear layer together with the element-wise ops around it
(bias, pooling, ReLU) into one oneDNN partition. At small batches an eager forward pass is bound
by the per-operator cost of Python and the dispatcher, not by arithmetic; the frozen graph runs
without either. Measured on a 2-core AMD EPYC (Zen 4), batchlab's own eager pass against this one,
alternating (fp32, `batchlab infer --graph auto` against `off`): seed-cnn 1.63x at batch 1, 2.52x
at 4, 1.59x at 16, 1.05-1.23x at 64-40,000 (docs/performance.md).

What is traced: the model with batchlab's drop-in layers (nn/layers.py) running their torch.nn
parents' forward, since their faster eager paths (im2col, oneDNN's linear through an autograd
Function, pooling as maxima) are ops the fuser does not take; the results are the same up to
rounding. One graph per slice size the batch runs in (microbatch.bounds: at most two), because a
graph is specialised to its input's shape; the measurement's calls all have those shapes.

Why the graphs are checked before they are used: the fuser got seed-cnn's normalisation wrong on
this PyTorch (torch.add(shift, uint8 images, alpha=scale): its alpha was lost, the logits off by
0.07, no error), failed to compile the same op on floats, and refused `uint8 * float` at run
time. Here the normalisation is written as cast, multiply, add, which it handles; and the graphs'
logits for the whole batch the measurement times are compared with batchlab's own eager pass's
(one untimed pass of each). The graphs are not used, and the measurement records why, when
tracing warns (a Python value taken from a tensor: control flow the trace would freeze), when
building or running them raises, when no operation was fused (an unfused TorchScript pass ran
slower than eager, 0.5-0.9x), or when their logits differ from eager's by more than
MAX_DIFFERENCE of the largest (bf16: compare_bf16, below).

Precisions: fp32, and bf16 with the model's weights cast to bf16 once (as a bf16 deployment holds
them) instead of autocast casting them on every call; the images are normalised in fp32 and cast,
as under autocast. bf16 is checked against fp32, the precision it approximates: the eager pass
under autocast is already some distance from fp32's logits, and the graph may be at most
BF16_ERROR_FACTOR times that far (at least MAX_DIFFERENCE, at most BF16_CEILING of the largest
logit; one more untimed pass, in fp32, for the check). On seed-cnn the graphs
gave autocast's logits exactly (against that pass: 5.09x at batch 1, 2.24x at 4, 1.23x at 16,
1.50x at 64, 1.03-1.08x at 256-4,096); on torchvision's resnet18, whose eighteen layers round
differently fused, the graph was 0.1-1.3x autocast's distance from fp32, at most 1.9% of the
largest logit, with the same predictions (docs/performance.md). fp16 (AVX512-FP16 CPUs, none measured
here) runs eagerly under autocast.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from ..core.errors import one_line
from ..data.device import Normalize
from ..nn import layers, microbatch

Forward = Callable[[torch.Tensor], torch.Tensor]

# Calls before the fused partitions are counted: TorchScript's profiling executor records shapes
# on the first call (one profiled run by default) and only then hands the graph to the fuser.
WARMUP_CALLS = 3
# The precisions a graph computes in, with its dtype.
GRAPH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest difference accepted, relative to the largest logit. fp32, from the eager logits: rounding
# in another summation order gave 1e-7 to 2e-6 (seed-cnn, keras-cnn). bf16, from the fp32 logits
# (compare_bf16; at least this much, more where autocast is further): room for a few roundings of
# bf16's 8-bit mantissa (2^-8 = 0.004 each); seed-cnn's, keras-cnn's and mlp's bf16 graphs gave
# autocast's logits exactly at batch 1-2,000. The wrong normalisation above was 0.07 on logits below 1.
MAX_DIFFERENCE = {"fp32": 1e-3, "bf16": 1e-2}
# A bf16 graph may be this many times as far from the fp32 logits as autocast's eager pass is
# (where that is more than MAX_DIFFERENCE): bf16's rounding compounds over a deep network (resnet18:
# autocast 0.005-0.014 from fp32 on logits up to 1.1), and a fused pass rounds at other points.
# Never further than BF16_CEILING of the largest logit, however far autocast is: the fuser's wrong
# normalisation above was 7% and more.
BF16_ERROR_FACTOR = 2.0
BF16_CEILING = 0.03
FUSED_NODE = "prim::oneDNNFusionGroup"


def decide(device_type: str, precision: str) -> tuple[bool, str]:
    """Whether a CPU measurement's forward passes run as a oneDNN graph, and the reason if not."""
    if device_type != "cpu":
        return False, "oneDNN Graph is for the CPU"
    if precision not in GRAPH_DTYPES:
        return False, f"{precision}: only fp32 and bf16 run as oneDNN graphs; {precision} runs eagerly under autocast"
    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch is built without oneDNN"
    return True, ""


@contextlib.contextmanager
def torch_nn_layers(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with batchlab's drop-in layers made their torch.nn parents for the block (in place,
    so no weight is copied), and made batchlab's again after it."""
    swapped = []
    for module in model.modules():
        parent = layers.TORCH_NN_PARENTS.get(type(module))
        if parent is not None:
            swapped.append((module, type(module)))
            module.__class__ = parent
    try:
        yield model
    finally:
        for module, own in swapped:
            module.__class__ = own


class _NormalizedModel(nn.Module):
    """uint8 images → logits, with the normalisation in fp32 ops the fuser gets right (see above),
    its result cast to the model's dtype."""

    def __init__(self, model: nn.Module, normalize: Normalize, dtype: torch.dtype):
        super().__init__()
        self.model, self.scale, self.shift, self.dtype = model, normalize.scale, normalize.shift, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        normalized = images.to(torch.float32) * self.scale + self.shift
        return self.model(normalized if self.dtype == torch.float32 else normalized.to(self.dtype))


@contextlib.contextmanager
def onednn_fusion() -> Iterator[None]:
    """The fuser on for the block, as it was after. It acts when a graph is optimised, during the
    warm-up calls; the optimised graph keeps its fused partitions once the fuser is off again."""
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


def fused_nodes(graph: torch.Graph | None) -> int:
    """Fused partitions in an optimised graph, at any depth (each sits in the branch of a guard
    that checks its input's shape and strides)."""
    def count(nodes) -> int:
        return sum((node.kind() == FUSED_NODE) + sum(count(block.nodes()) for block in node.blocks())
                   for node in nodes)
    return 0 if graph is None else count(graph.nodes())


class FrozenGraph(Exception):
    """Why a graph is not used, in the words the measurement records."""


def build_one(model: nn.Module, images: torch.Tensor) -> tuple[torch.jit.ScriptModule, int]:
    """The frozen, fused graph of `model` (uint8 → logits) for inputs shaped as `images`, with its
    count of fused partitions; run with the fuser on (onednn_fusion)."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, images, check_trace=False)
    tracer_warnings = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer_warnings:
        raise FrozenGraph(f"tracing warned: {str(tracer_warnings[0].message).splitlines()[0][:300]}")
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, which has no frozen-graph path to
        # oneDNN Graph on the CPU (its freezing mode crashed on these models, docs/performance.md);
        # should a later PyTorch drop it, the measurement runs eagerly and says why. (2.13 warns with a
        # DeprecationWarning, 2.14 with a FutureWarning.)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        graph = torch.jit.freeze(traced.eval())
    with torch.inference_mode():  # as the timed calls run
        for _ in range(WARMUP_CALLS):
            graph(images)
    fused = fused_nodes(torch.jit.last_executed_optimized_graph())
    if fused == 0:
        raise FrozenGraph("no operation was fused (an unfused TorchScript pass is slower than eager)")
    return graph, fused


def largest_difference(logits: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference between two batches of logits (NaN if either has one);
    refuses (FrozenGraph) logits shaped otherwise than `expected`."""
    if logits.shape != expected.shape:
        raise FrozenGraph(f"its logits are shaped {tuple(logits.shape)}, eager's {tuple(expected.shape)}")
    return float((logits.float() - expected.float()).abs().max())


def compare(logits: torch.Tensor, expected: torch.Tensor, max_difference: float) -> None:
    """Refuse (FrozenGraph) logits that differ from the eager pass's `expected` by more than
    `max_difference` of their largest magnitude, or that are shaped otherwise."""
    difference = largest_difference(logits, expected)
    scale = float(expected.float().abs().max())
    if not difference <= max_difference * scale:  # NaN is a difference too
        raise FrozenGraph(f"its logits differ from eager's by {difference:.3g} (largest logit {scale:.3g})")


def compare_bf16(logits: torch.Tensor, autocast_logits: torch.Tensor, fp32_logits: torch.Tensor) -> dict[str, float]:
    """How far the bf16 graph's and autocast's logits are from fp32's (returned, to be recorded);
    refuse (FrozenGraph) a graph further than MAX_DIFFERENCE["bf16"] of the largest fp32 logit and
    than BF16_ERROR_FACTOR times autocast's distance (at most BF16_CEILING of the largest logit)."""
    graph, scale = largest_difference(logits, fp32_logits), float(fp32_logits.abs().max())
    autocast = largest_difference(autocast_logits, fp32_logits)
    # An autocast pass that is NaN or infinite anywhere gives no allowance beyond MAX_DIFFERENCE.
    from_autocast = min(BF16_ERROR_FACTOR * autocast, BF16_CEILING * scale) if math.isfinite(autocast) else 0.0
    allowed = max(MAX_DIFFERENCE["bf16"] * scale, from_autocast)
    if not graph <= allowed:  # NaN is a difference too
        raise FrozenGraph(f"its bf16 logits are {graph:.3g} from fp32's, autocast's {autocast:.3g} "
                          f"(largest logit {scale:.3g})")
    # Recorded as JSON: a non-finite autocast distance as null (JSON has no NaN).
    return {"graph_from_fp32": graph, "autocast_from_fp32": autocast if math.isfinite(autocast) else None,
            "largest_fp32_logit": scale}


def fp32_pass(model: nn.Module, normalize: Normalize, images: torch.Tensor, slice_size: int) -> torch.Tensor:
    """The logits bf16 approximates: batchlab's eager pass of the model as it is (fp32 weights, its
    own layers), without autocast, in slices of half the bf16 pass's `slice_size`: fp32 activations
    take twice the bytes, so the check needs no more memory than the bf16 pass it checks."""
    half = max(1, slice_size // 2)
    with torch.inference_mode():
        logits = [model(normalize(images[start:stop])) for start, stop in microbatch.bounds(len(images), half)]
    return logits[0] if len(logits) == 1 else torch.cat(logits)


class GraphForward:
    """The batch through one frozen graph per slice size, slice by slice (microbatch.bounds), with
    the fuser on as when the graphs were built: should TorchScript optimise a graph again, it
    fuses it again (it has not been seen to)."""

    def __init__(self, graphs: dict[int, torch.jit.ScriptModule], bounds: list[tuple[int, int]]):
        self.graphs, self.bounds = graphs, bounds

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        fusing = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            with torch.inference_mode():
                logits = [self.graphs[stop - start](images[start:stop]) for start, stop in self.bounds]
        finally:
            torch.jit.enable_onednn_fusion(fusing)
        return logits[0] if len(logits) == 1 else torch.cat(logits)


def build(model: nn.Module, normalize: Normalize, sample: torch.Tensor, slice_size: int,
          precision: str) -> tuple[GraphForward, list[int]]:
    """One graph per slice size of batches shaped as `sample` (uint8), computing in `precision`;
    with each graph's count of fused partitions."""
    bounds = microbatch.bounds(len(sample), slice_size)
    graphs: dict[int, torch.jit.ScriptModule] = {}
    fused = []
    dtype = GRAPH_DTYPES[precision]
    with torch_nn_layers(model) as plain, onednn_fusion():
        # bf16: a copy holding bf16 weights (torch.nn layers: the copy keeps the swapped classes).
        traced = _NormalizedModel(plain if dtype == torch.float32 else copy.deepcopy(plain).to(dtype), normalize, dtype)
        for start, stop in bounds:
            if stop - start not in graphs:
                graphs[stop - start], count = build_one(traced, sample[start:stop])
                fused.append(count)
    return GraphForward(graphs, bounds), fused


def fused_forward(eager: Forward, model: nn.Module, normalize: Normalize, sample: torch.Tensor, slice_size: int,
                  precision: str, environment: dict) -> Forward:
    """The forward a CPU measurement times: the oneDNN graphs where decide() allows, build()
    succeeds, and their logits for the whole of `sample` (the batch the measurement times) match
    those of `eager` (batchlab's own eager pass, with its layers' own paths and the run's autocast;
    bf16: compare_bf16, against fp32's too); else `eager`. Recorded in `environment`: onednn_graph
    (true or "not used: <reason>"), the partitions fused in each graph, bf16's distances from fp32
    (onednn_graph_bf16) and the seconds spent building and checking (timed nowhere else: a
    deployment pays them once)."""
    use, reason = decide(sample.device.type, precision)
    if not use:
        environment["onednn_graph"] = f"not used: {reason}"
        return eager
    start = time.perf_counter()
    try:
        forward, fused = build(model, normalize, sample, slice_size, precision)
        if precision == "bf16":
            environment["onednn_graph_bf16"] = compare_bf16(forward(sample), eager(sample),
                                                            fp32_pass(model, normalize, sample, slice_size))
        else:
            compare(forward(sample), eager(sample), MAX_DIFFERENCE[precision])
    except FrozenGraph as refusal:
        environment["onednn_graph"] = f"not used: {refusal}"
        return eager
    except Exception as error:  # trace, freeze, fuser compile: the measurement runs eagerly
        environment["onednn_graph"] = f"not used: {one_line(error)}"
        return eager
    finally:
        environment["onednn_graph_seconds"] = time.perf_counter() - start
    environment["onednn_graph"] = True
    environment["onednn_graph_fused"] = fused  # one count per graph (slice size)
    return forward
