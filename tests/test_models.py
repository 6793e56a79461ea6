import torch

from batchlab.nn import models


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


def test_pooling_before_relu_and_cropping_is_the_studies_network():
    """seed-cnn crops its input to 25×25 and pools before its ReLUs; the studies' network
    (28×28, conv → ReLU → pool) must give the same outputs and gradients, with the same parameter
    names."""
    torch.manual_seed(0)
    ours = models.build("seed-cnn").eval()
    layers = list(ours)
    studies = torch.nn.Sequential(layers[0], layers[2], layers[1], layers[3], layers[5], layers[4], *layers[6:]).eval()
    assert list(studies.state_dict()) == list(ours.state_dict())
    images = torch.randn(16, 1, 28, 28, requires_grad=True)
    ours(images).sum().backward()
    ours_grad = images.grad.clone()
    images.grad = None
    studies(images).sum().backward()
    assert torch.allclose(ours(images), studies(images), atol=1e-6)
    assert torch.allclose(ours_grad, images.grad, atol=1e-6)
    assert ours_grad[..., :25, :25].abs().sum() > 0
    # Why the crop is exact: the study's network never looks at rows and columns 25-27.
    changed = images.detach().clone()
    changed[..., 25:, :] = 100.0
    changed[..., :, 25:] = -100.0
    assert torch.equal(studies(changed), studies(images))


def test_user_model_by_import_path():
    model = models.build("test_models:tiny_factory", classes=3)
    assert models.parameter_count(model) == 784 * 3 + 3


def test_user_model_errors():
    import pytest

    with pytest.raises(models.ModelError, match="cannot load user model"):
        models.build("no_such_module_xyz:f")
    with pytest.raises(models.ModelError, match="not a torch.nn.Module"):
        models.build("test_models:not_a_module")
