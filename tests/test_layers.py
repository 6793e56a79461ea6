"""The built-in models' faster layers compute what torch.nn's do."""

import pytest
import torch
from torch import nn

from batchlab.nn import layers


@pytest.mark.parametrize("rows", [1, 2, 102])
def test_linear_matches_torch_linear_with_gradients(rows, monkeypatch):
    monkeypatch.setattr(layers, "ONEDNN_LINEAR", layers._onednn_linear is not None)  # the oneDNN path on any CPU
    torch.manual_seed(0)
    ours = layers.Linear(1024, 500)
    reference = nn.Linear(1024, 500)
    reference.load_state_dict(ours.state_dict())
    inputs = torch.randn(rows, 1024, requires_grad=True)
    grad_out = torch.randn(rows, 500)
    results = []
    for layer in (ours, reference):
        inputs.grad = None
        out = layer(inputs)
        out.backward(grad_out)
        results.append((out.detach(), inputs.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for mine, theirs in zip(*results):
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    assert results[0][2].abs().sum() > 0


def test_linear_layers_multiply_on_mkl_on_intel_cpus_and_on_onednn_elsewhere():
    assert not layers.uses_onednn_linear("GenuineIntel")
    assert layers.uses_onednn_linear("AuthenticAMD") == (layers._onednn_linear is not None)


def test_dropout_keeps_the_fraction_and_scales():
    torch.manual_seed(0)
    dropout = layers.Dropout(0.3)
    out = dropout(torch.ones(1000, 1000))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert torch.equal(dropout.eval()(torch.ones(3, 3)), torch.ones(3, 3))
    inputs = torch.ones(100, 100, requires_grad=True)
    out = dropout.train()(inputs)
    out.sum().backward()
    assert torch.equal(inputs.grad, out.detach())  # gradient flows exactly where kept, scaled


@pytest.mark.parametrize("size", [25, 24, 9])
def test_max_pool_without_gradients_matches_torch(size):
    torch.manual_seed(0)
    ours, reference = layers.MaxPool2d(2), nn.MaxPool2d(2)
    images = torch.randn(200, 32, size, size)
    images[:, :, :4, :4] = 0.0  # ties, as on a background
    for batch in (images, images.contiguous(memory_format=torch.channels_last)):
        with torch.inference_mode():
            assert torch.equal(ours(batch), reference(batch))


def test_max_pool_with_gradients_routes_ties_like_torch():
    images = torch.zeros(200, 32, 25, 25, requires_grad=True)  # every window a tie
    layers.MaxPool2d(2)(images).sum().backward()
    ours = images.grad.clone()
    images.grad = None
    nn.MaxPool2d(2)(images).sum().backward()
    assert torch.equal(ours, images.grad)
    assert ours.sum() == 200 * 32 * 12 * 12  # one element of each window gets the gradient


def test_dropout_of_everything_gives_zeros():
    inputs = torch.ones(4, 4, requires_grad=True)
    out = layers.Dropout(1.0)(inputs)
    assert torch.equal(out, torch.zeros(4, 4))
    out.sum().backward()
    assert torch.equal(inputs.grad, torch.zeros(4, 4))


def conv_results(layer: nn.Module, images: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    images = images.detach().requires_grad_()
    out = layer(images)
    out.backward(grad_out)
    results = [out.detach(), images.grad, layer.weight.grad, layer.bias.grad]
    layer.zero_grad(set_to_none=True)
    return results


@pytest.mark.parametrize("images, channels, size, stride, padding", [
    (1, 1, 25, 1, 0),  # seed-cnn's conv1 at batch 1: im2col
    (4, 32, 11, 1, 0),  # its conv2 at batch 4: im2col in training
    (2, 3, 9, 2, 1),  # strided and padded: im2col
    (16, 32, 11, 1, 0),  # 1,024 output positions: oneDNN
])
def test_conv_matches_torch_conv_with_gradients_in_channels_last(images, channels, size, stride, padding):
    torch.manual_seed(0)
    ours = layers.Conv2d(channels, 8, kernel_size=4, stride=stride, padding=padding)
    reference = nn.Conv2d(channels, 8, kernel_size=4, stride=stride, padding=padding)
    reference.load_state_dict(ours.state_dict())
    ours, reference = (layer.to(memory_format=torch.channels_last) for layer in (ours, reference))
    batch = torch.randn(images, channels, size, size).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(reference(batch))
    for mine, theirs in zip(conv_results(ours, batch, grad_out), conv_results(reference, batch, grad_out)):
        assert mine.shape == theirs.shape
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    assert ours.weight.grad is None  # conv_results cleared it


INPUT_LAYOUTS = {  # how a batch can reach a convolution: seed-cnn crops its images to 25×25 with a view
    "cropped view": lambda batch: batch[..., :25, :25],
    "NCHW": lambda batch: batch[..., :25, :25].contiguous(),
    "channels-last": lambda batch: batch[..., :25, :25].contiguous(memory_format=torch.channels_last),
    "cropped channels-last": lambda batch: batch.contiguous(memory_format=torch.channels_last)[..., :25, :25],
}


@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
@pytest.mark.parametrize("channels_last_layer", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_small_convolution_gradients_are_right_for_inputs_of_any_layout(layout, channels_last_layer, channels):
    """PyTorch's im2col backward returns a wrong weight gradient for an input that is not contiguous
    in the weight's layout (seed-cnn's cropped images at batch 1 and 2 once trained on it): the
    layer's outputs and parameter gradients must match float64 whatever the input's layout."""
    torch.manual_seed(0)
    conv = layers.Conv2d(channels, 32, kernel_size=4)  # 484 output positions per image: im2col at 1 and 2
    if channels_last_layer:
        conv = conv.to(memory_format=torch.channels_last)
    images = INPUT_LAYOUTS[layout](torch.randn(2, channels, 28, 28))
    out = conv(images)
    weight_grad, bias_grad = torch.autograd.grad(out.square().sum(), (conv.weight, conv.bias))
    weight, bias = (tensor.detach().double().requires_grad_() for tensor in (conv.weight, conv.bias))
    exact = torch.nn.functional.conv2d(images.double(), weight, bias)
    exact_weight_grad, exact_bias_grad = torch.autograd.grad(exact.square().sum(), (weight, bias))
    assert torch.allclose(out.double(), exact, atol=1e-5)
    for mine, theirs in ((weight_grad, exact_weight_grad), (bias_grad, exact_bias_grad)):
        assert (mine.double() - theirs).abs().max() <= 1e-5 * theirs.abs().max()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_one_by_one_convolution_gradients_are_right_in_either_layout(channels_last, stride):
    """A 1×1 kernel over several channels is contiguous in both layouts; PyTorch's im2col reads the
    layout from its strides (ResNet-18's downsampling convolutions once got a wrong weight gradient)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = layers.Conv2d(8, 6, kernel_size=1, stride=stride).to(memory_format=layout)
    images = torch.randn(4, 8, 4, 4).contiguous(memory_format=layout)
    out = conv(images)
    weight_grad, = torch.autograd.grad(out.square().sum(), (conv.weight,))
    weight = conv.weight.detach().double().requires_grad_()
    exact = torch.nn.functional.conv2d(images.double(), weight, conv.bias.double(), stride)
    exact_grad, = torch.autograd.grad(exact.square().sum(), (weight,))
    assert torch.allclose(out.double(), exact, atol=1e-5)
    assert (weight_grad.double() - exact_grad).abs().max() <= 1e-5 * exact_grad.abs().max()


def count_calls(monkeypatch, path: str) -> list[int]:
    """The batch sizes `layers.<path>` is called with from now on."""
    calls = []
    real = getattr(layers, path)

    def counted(*args):
        calls.append(len(args[0]))
        return real(*args)
    monkeypatch.setattr(layers, path, counted)
    return calls


def test_small_convolutions_run_as_im2col_and_large_ones_on_torch(monkeypatch):
    calls = count_calls(monkeypatch, "_im2col_convolution")
    conv = layers.Conv2d(32, 64, kernel_size=4)  # seed-cnn's conv2: 64 output positions per image
    for images in (1, 4, 15, 16, 64):
        conv(torch.randn(images, 32, 11, 11)).sum().backward()
    assert calls == [1, 4, 15]  # training: up to IM2COL_MAX_POSITIONS (1,000)
    calls.clear()
    with torch.inference_mode():
        for images in (1, 2, 3, 4):
            conv(torch.randn(images, 32, 11, 11))
    assert calls == [1, 2]  # without a backward, up to 65,536 unfolded elements: 2 × 64 × 512
    calls.clear()
    for odd in (layers.Conv2d(32, 64, 4, dilation=2), layers.Conv2d(32, 64, 4, groups=2),
                layers.Conv2d(32, 64, 3, padding="same"), layers.Conv2d(32, 64, 4, padding=1, padding_mode="reflect")):
        odd(torch.randn(1, 32, 11, 11))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(1, 32, 11, 11))
    conv.double()(torch.randn(1, 32, 11, 11, dtype=torch.float64))
    layers.Conv2d(64, 64, 3, padding=1)(torch.randn(1, 64, 8, 8)).sum().backward()  # 64 positions, rows of 576
    assert calls == []  # the odd ones, autocast, float64 and the wide convolution ran as nn.Conv2d


DENSE_CASES = {  # maps about as small as the kernel: ResNet-18's last stages on 32×32 images, and their edges
    "4x4 to 2x2 at stride 2": dict(side=(4, 4), kernel_size=3, stride=2, padding=1),
    "1x1 under 3x3, padding 3: outputs that see only padding": dict(side=(1, 1), kernel_size=3, padding=3),
    "2x2 under 3x3": dict(side=(2, 2), kernel_size=3, padding=1),
    "1x1 under 3x3": dict(side=(1, 1), kernel_size=3, padding=1),
    "2x2 to 1x1 at stride 2": dict(side=(2, 2), kernel_size=3, stride=2, padding=1),
    "3x3 under 3x3, pairs without a tap": dict(side=(3, 3), kernel_size=3, padding=1),
    "a row of 3": dict(side=(1, 3), kernel_size=3, padding=1),
    "2x3 under 2x3, uneven padding": dict(side=(2, 3), kernel_size=(2, 3), padding=(1, 0)),
    "3x3 under 3x3, no padding": dict(side=(3, 3), kernel_size=3),
}


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_dense_convolution_matches_torch_convolution_with_gradients(case, channels_last):
    options = dict(DENSE_CASES[case])
    height, width = options.pop("side")
    torch.manual_seed(0)
    reference = nn.Conv2d(5, 7, **options).double()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(3, 5, height, width, dtype=torch.float64).contiguous(memory_format=layout)
    weight = reference.weight.detach().contiguous(memory_format=layout).requires_grad_()
    images.requires_grad_()
    exact = reference(images)
    out = layers.dense_convolution(images, weight, reference.bias, reference.stride, reference.padding)
    assert out.shape == exact.shape
    assert torch.allclose(out, exact, atol=1e-12)
    with torch.inference_mode():  # without autograd's node
        assert torch.allclose(layers.dense_convolution(images, weight, reference.bias, reference.stride,
                                                       reference.padding), exact, atol=1e-12)
    grad_out = torch.randn_like(exact)
    mine = torch.autograd.grad(out, (images, weight, reference.bias), grad_out)
    theirs = torch.autograd.grad(exact, (images, reference.weight, reference.bias), grad_out)
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-12)


def test_convolutions_of_few_products_run_dense(monkeypatch):
    calls = count_calls(monkeypatch, "dense_convolution")
    torch.manual_seed(0)
    same = layers.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    reference = nn.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    reference.load_state_dict(same.state_dict())
    strided = layers.Conv2d(16, 8, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    strided_reference = nn.Conv2d(16, 8, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    strided_reference.load_state_dict(strided.state_dict())
    for conv, twin, images, side in ((same, reference, 1, 1), (same, reference, 1, 2), (same, reference, 2, 2),
                                     (same, reference, 16, 3), (same, reference, 16, 4),
                                     (strided, strided_reference, 1, 4), (strided, strided_reference, 3, 4)):
        batch = torch.randn(images, 16, side, side).contiguous(memory_format=torch.channels_last)
        grad_out = torch.randn(images, 8, *twin(batch).shape[-2:])
        for mine, theirs in zip(conv_results(conv, batch, grad_out), conv_results(twin, batch, grad_out)):
            assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)
    # 1×1 (1 product) at any batch; 2×2 (8 products) and 4×4 at stride 2 (10) from DENSE_MIN_BATCH (2)
    # images; 3×3 (21) and 4×4 (40) at stride 1 never
    assert calls == [1, 2, 3]
    calls.clear()
    with torch.inference_mode():
        same(torch.randn(2, 16, 1, 1))
        layers.Conv2d(16, 8, 3, padding=1, padding_mode="circular")(torch.randn(2, 16, 1, 1))
    assert calls == [2]  # circular padding is not zeros: nn.Conv2d
    with pytest.raises(RuntimeError, match="Kernel size can't be greater than actual input size"):
        layers.Conv2d(16, 8, 3)(torch.randn(2, 16, 1, 1))  # torch's own error, not one of the dense path's


@pytest.mark.parametrize("side", [1, 4, 20])  # dense, im2col and oneDNN sizes
def test_negative_padding_is_refused_as_torch_refuses_it(side):
    # The dense and im2col paths would crop the map instead.
    with pytest.raises(RuntimeError, match="negative padding is not supported"):
        layers.Conv2d(4, 3, 1, padding=-1).to(memory_format=torch.channels_last)(torch.randn(2, 4, side, side))


def test_the_dense_path_trains_after_its_first_call_in_inference_mode():
    # Its first version cached index tensors per shape: made under inference_mode (an evaluation before
    # any training step), they could not be saved for a later backward.
    conv = layers.Conv2d(8, 4, 3, padding=1)
    with torch.inference_mode():
        conv(torch.randn(2, 8, 1, 1))
    conv(torch.randn(2, 8, 1, 1)).sum().backward()
    assert conv.weight.grad is not None


def test_plain_convolutions_of_any_model_become_fast_and_keep_their_parameters():
    class OwnConv(nn.Conv2d):
        def forward(self, inputs):
            return super().forward(inputs) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1)), OwnConv(4, 2, 1))
    names = list(model.state_dict())
    before = model(torch.ones(1, 3, 5, 5))
    assert layers.with_fast_convolutions(model) is model
    assert [type(module) for module in model.modules() if isinstance(module, nn.Conv2d)] == \
        [layers.Conv2d, layers.Conv2d, OwnConv]  # a subclass keeps its own forward
    assert list(model.state_dict()) == names
    assert torch.allclose(model(torch.ones(1, 3, 5, 5)), before, atol=1e-6)


@pytest.mark.parametrize("p", [0.25, 0.3, 0.5, 0.9])
def test_dropout_mask_keeps_each_element_with_its_probability_at_every_quarter(p):
    torch.manual_seed(0)
    keep, rounded = layers.keep_mask(torch.Size([400_000, 4]), p)
    assert rounded == pytest.approx(p, abs=2**-17)
    assert rounded == p or p not in (0.25, 0.5)  # exact where p is a multiple of 2^-16
    # Column k holds the k-th 16-bit quarter of every 64-bit draw: a quarter left short of random
    # bits (the sign bit of random_ without its full range) would be off by ~p/2 here.
    for column in keep.float().mean(0):
        assert column.item() == pytest.approx(1 - p, abs=0.004)


def test_dropout_mask_of_any_element_count_and_of_p_next_to_1():
    keep, _ = layers.keep_mask(torch.Size([3, 5, 7]), 0.5)
    assert keep.shape == (3, 5, 7) and keep.dtype == torch.bool
    keep, rounded = layers.keep_mask(torch.Size([1000]), 1 - 2**-20)
    assert rounded == 1 - 2**-16  # some elements may still be kept, as with any p < 1
    out = layers.Dropout(1 - 2**-20)(torch.ones(2**16))
    assert torch.isfinite(out).all()
