"""`--model torchvision:NAME`: torchvision's classification models, untrained, for any image shape.
torchvision is optional (`pip install "batchlab[vision]"`) and imported only here, on use: a build
made for another torch fails on import, and that is said in one line with the matching build."""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from ..core.errors import ModelError
from .names import TORCHVISION_PREFIX
from .texts import failure, shape_text


# Builder options some torchvision models need to train here: GoogLeNet and Inception v3 return
# (logits, auxiliary logits) in training mode unless aux_logits=False (init_weights=True keeps
# their current initialisation without a warning); the vision transformers are built for 224×224
# unless told the image size (square images only; the side must be a multiple of the patch).
def torchvision_options(name: str, shape: tuple[int, int, int]) -> dict:
    _, height, width = shape
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_") and height == width:
        return {"image_size": height}
    if name.startswith("maxvit_"):
        return {"input_size": (height, width)}
    return {}


def matching_torchvision() -> str:
    """How to install the torchvision build made for the installed torch (torch 2.M.P goes with
    torchvision 0.(M+15).P, from the index of the same build: +cpu, +cu128, ...)."""
    release, _, build = torch.__version__.partition("+")
    match = re.match(r"2\.(\d+)\.(\d+)", release)
    advice = 'pip install "batchlab[vision]"'
    if match:
        version = f"0.{int(match[1]) + 15}.{match[2]}"
        index = f" --index-url https://download.pytorch.org/whl/{build}" if build else ""
        advice += f", or for torch {torch.__version__}: pip install torchvision=={version}{index}"
    return advice


def import_torchvision_models(name: str):
    """torchvision.models, or a one-line ModelError: torchvision is optional, and a build made
    for another torch fails on import (PyPI's beside a CPU torch: 'operator torchvision::nms does
    not exist'), so it is imported here, on use, and any failure is the user's to fix."""
    try:
        import torchvision.models
    except Exception as error:  # ImportError, or the RuntimeError of a build for another torch
        raise ModelError(f"--model {name} needs torchvision, which is missing or does not match "
                         f"torch {torch.__version__} ({failure(error)}); install the matching build: "
                         f"{matching_torchvision()}") from None
    return torchvision.models


def adapt_input_channels(model: nn.Module, channels: int, name: str) -> nn.Module:
    """The torchvision `model` (built for RGB) taking `channels`-channel images: its first
    convolution is replaced by one with `channels` inputs whose weights are the RGB weights
    summed over the colours, divided by `channels`. For grey (1-channel) images the model is then
    exactly the RGB model fed the grey image in all three channels, the usual practice, at a third
    of that convolution's work and without a wrapper (the parameter names stay torchvision's)."""
    first = next(((path, module) for path, module in model.named_modules() if isinstance(module, nn.Conv2d)), None)
    if first is None or first[1].in_channels != 3 or first[1].groups != 1:
        raise ModelError(f"model {name} cannot take {channels}-channel images: its first convolution does not "
                         "read 3 colour channels")
    path, rgb = first
    conv = nn.Conv2d(channels, rgb.out_channels, rgb.kernel_size, stride=rgb.stride, padding=rgb.padding,
                     dilation=rgb.dilation, bias=rgb.bias is not None, padding_mode=rgb.padding_mode,
                     device=rgb.weight.device, dtype=rgb.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_((rgb.weight.sum(1, keepdim=True) / channels).expand_as(conv.weight))
        if rgb.bias is not None:
            conv.bias.copy_(rgb.bias)
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent), attribute, conv)
    return model


def torchvision_model(name: str, shape: tuple[int, int, int], classes: int) -> nn.Module:
    """torchvision.models' classifier `name` (untrained) for `shape` images and `classes` classes.
    Whether it works on this image size (e.g. 28x28 where a network downsamples 32x) is probed by
    check_output before the run, which names the shape."""
    tv_models = import_torchvision_models(name)
    model_name = name[len(TORCHVISION_PREFIX):]
    classifiers = tv_models.list_models(module=tv_models)
    if model_name not in classifiers:
        close = difflib.get_close_matches(model_name, classifiers, n=3)
        kind = "not a torchvision classification model" if model_name in tv_models.list_models() \
            else "unknown torchvision model"
        hint = f"; did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else \
            f" ({len(classifiers)} classifiers: {', '.join(classifiers[:5])}, ...)"
        raise ModelError(f"{kind} {model_name!r}{hint}")
    try:
        model = tv_models.get_model(model_name, weights=None, num_classes=classes,
                                    **torchvision_options(model_name, shape))
    except Exception as error:
        raise ModelError(f"model {name} cannot be built for {shape_text(shape)} images: "
                         f"{failure(error)}") from None
    return model if shape[0] == 3 else adapt_input_channels(model, shape[0], name)
