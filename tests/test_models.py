import pytest
import torch
from torch_nn_twin import as_torch_nn

from batchlab.nn import layers as nn_layers
from batchlab.nn import models
from batchlab.nn.placement import place


def test_seed_cnn_matches_the_paper():
    model = models.build("seed-cnn")
    assert models.parameter_count(model) == 550_886  # "about 551k parameters"
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_builtin_models_and_class_count():
    for name in models.MODELS:
        assert models.build(name, classes=4)(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    assert models.parameter_count(models.build("keras-cnn")) == 1_199_882
    assert models.parameter_count(models.build("mlp")) == 784 * 500 + 500 + 500 * 10 + 10


def tiny_factory(classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, classes))


def not_a_module():
    return "nope"


SEED_CNN_NAMES = ["0.weight", "0.bias", "3.weight", "3.bias", "8.weight", "8.bias", "11.weight", "11.bias"]


def test_seed_cnn_at_1x28x28_is_unchanged():
    """Weights saved before seed-cnn took other shapes still load: same names, same shapes."""
    shapes = {name: tuple(tensor.shape) for name, tensor in models.build("seed-cnn").state_dict().items()}
    assert list(shapes) == SEED_CNN_NAMES
    assert shapes == {"0.weight": (32, 1, 4, 4), "0.bias": (32,), "3.weight": (64, 32, 4, 4), "3.bias": (64,),
                      "8.weight": (500, 1024), "8.bias": (500,), "11.weight": (10, 500), "11.bias": (10,)}


@pytest.mark.parametrize("shape, used", [((1, 28, 28), (25, 25)), ((3, 32, 32), (29, 29)), ((2, 30, 19), (29, 17)),
                                         ((1, 13, 13), (13, 13))])
def test_pooling_before_relu_and_cropping_is_the_studies_network(shape, used):
    """seed-cnn crops its input to the rows and columns that reach its output (25×25 of 28×28)
    and pools before its ReLUs; the studies' network (whole image, conv → ReLU → pool) must give
    the same outputs and gradients, with the same parameter names."""
    torch.manual_seed(0)
    ours = models.build("seed-cnn", input_shape=shape).eval()
    assert (ours.height, ours.width) == used
    layers = list(ours)
    studies = torch.nn.Sequential(layers[0], layers[2], layers[1], layers[3], layers[5], layers[4], *layers[6:]).eval()
    assert list(studies.state_dict()) == list(ours.state_dict()) == SEED_CNN_NAMES
    images = torch.randn(16, *shape, requires_grad=True)
    ours(images).sum().backward()
    ours_grad = images.grad.clone()
    images.grad = None
    studies(images).sum().backward()
    assert torch.allclose(ours(images), studies(images), atol=1e-6)
    assert torch.allclose(ours_grad, images.grad, atol=1e-6)
    # Why the crop is exact and as large as it can be: the last row and column kept reach the
    # study's output, the ones beyond never do.
    height, width = used
    assert images.grad[..., height - 1, :width].abs().sum() > 0
    assert images.grad[..., :height, width - 1].abs().sum() > 0
    assert not images.grad[..., height:, :].any() and not images.grad[..., :, width:].any()
    changed = images.detach().clone()
    changed[..., height:, :] = 100.0
    changed[..., :, width:] = -100.0
    assert torch.equal(studies(changed), studies(images))


@pytest.mark.parametrize("onednn_linear", [False, True])
@pytest.mark.parametrize("name, shape", [("seed-cnn", (1, 28, 28)), ("seed-cnn", (3, 32, 32)),
                                         ("keras-cnn", (1, 28, 28))])
def test_builtin_models_train_with_torch_nn_gradients_at_every_batch_size(name, shape, onednn_linear, monkeypatch):
    """Each batch size takes its own paths through the faster layers (im2col convolutions for small
    calls, oneDNN for large ones; linear layers on MKL or, as on AMD CPUs, oneDNN): placed as a run
    places them, the parameter gradients must be torch.nn's. Dropout is off (eval mode), the one
    layer whose random draws differ."""
    monkeypatch.setattr(nn_layers, "ONEDNN_LINEAR", onednn_linear and nn_layers._onednn_linear is not None)
    torch.manual_seed(0)
    ours = place(models.build(name, input_shape=shape), torch.device("cpu"), "fp32").eval()
    theirs = as_torch_nn(ours)
    assert not any(type(module).__module__ == nn_layers.__name__ for module in theirs.modules())
    for batch in (1, 2, 4, 16, 64):
        images, labels = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
        for model in (ours, theirs):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        for (parameter, mine), theirs_parameter in zip(ours.named_parameters(), theirs.parameters()):
            scale = theirs_parameter.grad.abs().max()
            assert (mine.grad - theirs_parameter.grad).abs().max() <= 1e-4 * scale, (batch, parameter)


def test_user_model_by_import_path():
    model = models.build("test_models:tiny_factory", classes=3)
    assert models.parameter_count(model) == 784 * 3 + 3


def test_user_model_errors():
    with pytest.raises(models.ModelError, match="cannot load user model"):
        models.build("no_such_module_xyz:f")
    with pytest.raises(models.ModelError, match="not a torch.nn.Module"):
        models.build("test_models:not_a_module")



def test_user_models_get_batchlab_convolutions(tmp_path):
    from batchlab.nn.layers import Conv2d

    model_file = tmp_path / "conv_model.py"
    model_file.write_text("from torch import nn\n"
                          "def factory(input_shape, classes):\n"
                          "    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3), nn.Flatten(),\n"
                          "                         nn.LazyLinear(classes))\n")
    model = models.build(f"{model_file}:factory", input_shape=(1, 28, 28), classes=10)
    assert type(model[0]) is Conv2d and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_model_with_lazy_layers_trains(synthetic_dataset, tmp_path):
    import batchlab
    from batchlab import RunSpec

    model_file = tmp_path / "lazy_model.py"
    model_file.write_text("from torch import nn\n"
                          "def factory(input_shape, classes):\n"
                          "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(32), nn.ReLU(),\n"
                          "                         nn.LazyLinear(classes))\n")
    spec = RunSpec(dataset=synthetic_dataset.name, model=f"{model_file}:factory", batch_size=32, limit_train=256,
                   threads=1)
    first = batchlab.run(spec, data_dir=str(synthetic_dataset.directory))
    again = batchlab.run(spec, data_dir=str(synthetic_dataset.directory))
    assert first.status == "DONE" and first.parameters == 784 * 32 + 32 + 32 * 10 + 10
    assert first.epochs[0].train_loss == again.epochs[0].train_loss  # seeded like any other layer
