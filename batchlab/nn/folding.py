"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch-norm layer is a fixed per-channel scale and shift, so after a convolution
whose output nothing else reads, it can be folded into that convolution's weights and bias: one
pass over the activations less per layer, results equal up to rounding. Inference deployments do
this (TorchScript's freeze, ONNX Runtime, TensorRT); `batchlab infer` does it so that its figures are
those of a model prepared for inference, and records how many it folded. Measured on torchvision's
resnet18 over 3×32×32 images (20 folds, 2-core Xeon): 1.22x at batch 1, 1.13x at 4, 1.10x at 16,
1.09x at 64, 1.06x at 256 (docs/performance.md).

The graph comes from torch.fx. A model it cannot trace (control flow on tensor values, say) is used
as it is, and the reason is returned.
"""

from __future__ import annotations

from collections import Counter

import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import layers


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with batchlab's drop-in layers as leaves like the torch.nn layers they
    replace (their forward branches on the input's device and shape, which tracing cannot follow)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return type(module).__module__ == layers.__name__ or super().is_leaf_module(module, qualified_name)


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int, str | None]:
    """(model for inference, batch norms folded, why none could be): `model` should be in eval mode
    (in training mode nothing is folded, and that is the reason given); it is left unchanged, the
    folded model shares its other layers."""
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return model, 0, None
    if model.training:  # a batch norm in training mode normalises by the batch: nothing fixed to fold
        return model, 0, "the model is in training mode"
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as error:  # any failure to trace leaves the model as it is; the reason is kept
        return model, 0, f"not traceable by torch.fx ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    modules = dict(traced.named_modules())
    # Folding rewrites a convolution module's weights, which every use of that module sees: only
    # convolutions called once, whose parameters the graph reads nowhere else, may be folded.
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    read = [node.target for node in traced.graph.nodes if node.op == "get_attr"]
    folded = 0
    for node in list(traced.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(norm, nn.BatchNorm2d) or not norm.track_running_stats or len(node.args) != 1 or node.kwargs:
            continue  # without running statistics a batch norm normalises by the batch even in eval mode
        source = node.args[0]
        conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
            continue  # the convolution's output is read elsewhere too (a shortcut): it must stay unnormalised
        if calls[source.target] != 1 or any(name.startswith(source.target + ".") for name in read):
            continue  # the same convolution serves elsewhere, unnormalised or by another batch norm
        if not _foldable(conv, norm):
            continue
        parent, _, name = source.target.rpartition(".")
        # The fused convolution replaces the old one in `modules` too: a second batch norm after the
        # first (conv → BN → BN) then folds into it, not into the original, which would drop the first.
        modules[source.target] = fused = fuse_conv_bn_eval(conv, norm)
        setattr(traced.get_submodule(parent), name, fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return model, 0, None
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, folded, None


def _foldable(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> bool:
    """Whether folding keeps the pair's results: both in eval mode (a model in eval mode may hold
    layers set back to training), neither with forward hooks (a hook on the convolution would see
    the normalised output, one on the batch norm would be lost; pruning and the old weight_norm
    work by such hooks), and the convolution's weight a parameter of its own, not computed by a
    parametrization (weight_norm, spectral_norm), which the fold would overwrite."""
    hooked = any(module._forward_hooks or module._forward_pre_hooks for module in (conv, norm))
    return not (conv.training or norm.training or hooked or parametrize.is_parametrized(conv))
