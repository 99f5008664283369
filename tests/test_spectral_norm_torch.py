"""The SN layers and the torch SN path against torch.nn.utils.parametrizations.spectral_norm."""

import pytest
import torch
import torch.nn as nn
from helpers import rel_err
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm
from tritonsagan.kernels import spectral_norm, spectral_norm_torch
from tritonsagan.models import Discriminator, Generator, SNConv2d, SNEmbedding, SNLinear

LAYER_PAIRS = {
    "conv3x3": (lambda: nn.Conv2d(5, 7, 3, padding=1), lambda: SNConv2d(5, 7, 3, padding=1), (3, 5, 6, 6)),
    "conv1x1_nobias": (lambda: nn.Conv2d(16, 2, 1, bias=False), lambda: SNConv2d(16, 2, 1, bias=False), (2, 16, 4, 4)),
    "linear": (lambda: nn.Linear(37, 53), lambda: SNLinear(37, 53), (4, 37)),
    "embedding": (lambda: nn.Embedding(11, 19), lambda: SNEmbedding(11, 19), None),
}


def _copy_torch_state(torch_layer, ours):
    param = torch_layer.parametrizations.weight
    with torch.no_grad():
        ours.weight.copy_(param.original)
        ours.weight_u.copy_(param[0]._u)
        ours.weight_v.copy_(param[0]._v)
        if getattr(ours, "bias", None) is not None:
            ours.bias.copy_(torch_layer.bias)


@pytest.mark.parametrize("kind", sorted(LAYER_PAIRS))
def test_sn_layer_matches_torch_over_training_steps(kind):
    make_torch, make_ours, in_shape = LAYER_PAIRS[kind]
    torch_layer = torch_spectral_norm(make_torch())
    ours = make_ours()
    _copy_torch_state(torch_layer, ours)
    sn = torch_layer.parametrizations.weight[0]
    opt_torch = torch.optim.SGD(torch_layer.parameters(), lr=0.5)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)

    for step in range(5):
        x = torch.randint(0, 11, (6,)) if in_shape is None else torch.randn(in_shape)
        out_torch, out_ours = torch_layer(x), ours(x)
        assert rel_err(ours.weight_u, sn._u) < 1e-6, f"u at step {step}"
        assert rel_err(ours.weight_v, sn._v) < 1e-6, f"v at step {step}"
        assert rel_err(out_ours, out_torch) < 1e-5, f"output at step {step}"
        sigma_torch = torch.dot(sn._u, torch.mv(torch_layer.parametrizations.weight.original.flatten(1), sn._v))
        sigma_ours = torch.dot(ours.weight_u, torch.mv(ours.weight.flatten(1), ours.weight_v))
        assert abs(sigma_ours.item() / sigma_torch.item() - 1) < 1e-6, f"sigma at step {step}"

        grad = torch.randn_like(out_torch)
        opt_torch.zero_grad()
        opt_ours.zero_grad()
        out_torch.backward(grad)
        out_ours.backward(grad)
        assert rel_err(ours.weight.grad, torch_layer.parametrizations.weight.original.grad) < 1e-5, f"dW at step {step}"
        opt_torch.step()
        opt_ours.step()

    torch_layer.eval()
    ours.eval()
    assert rel_err(ours.normalized_weight(), torch_layer.weight) < 1e-6


def test_eval_mode_leaves_u_v_untouched():
    layer = SNConv2d(4, 6, 3).eval()
    u, v = layer.weight_u.clone(), layer.weight_v.clone()
    for _ in range(3):
        layer(torch.randn(1, 4, 5, 5))
    assert torch.equal(layer.weight_u, u) and torch.equal(layer.weight_v, v)
    layer.train()(torch.randn(1, 4, 5, 5))
    assert not torch.equal(layer.weight_u, u)


def test_layer_power_iteration_is_a_training_forward_without_output():
    """power_iteration (used on G_ema after averaging) updates u, v as a training forward would."""
    refreshed, forwarded = SNConv2d(4, 6, 3), SNConv2d(4, 6, 3)
    forwarded.load_state_dict(refreshed.state_dict())
    before = refreshed.weight_u.clone()
    refreshed.power_iteration()
    forwarded.train()(torch.randn(1, 4, 5, 5))
    assert not torch.equal(refreshed.weight_u, before)
    assert torch.equal(refreshed.weight_u, forwarded.weight_u) and torch.equal(refreshed.weight_v, forwarded.weight_v)


def test_construction_converges_like_torch():
    """15 power iterations at construction: sigma close to the true top singular value."""
    torch.manual_seed(3)
    layer = SNLinear(40, 30)
    sigma = torch.dot(layer.weight_u, torch.mv(layer.weight, layer.weight_v))
    assert abs(sigma.item() / torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() - 1) < 0.05


def test_models_built_on_the_meta_device_have_every_layer_and_vector_shape():
    """The benches and the compile check build G and D on the meta device for their shapes; there
    the construction's power iterations are skipped (no values), and nothing else may differ."""
    built = {}
    for device in ("meta", "cpu"):
        with torch.device(device):
            built[device] = Generator(ch=8, num_classes=5), Discriminator(ch=8, num_classes=5)
    shapes = {
        device: [(name, tuple(t.shape), t.dtype) for model in models for name, t in model.state_dict().items()]
        for device, models in built.items()
    }
    assert shapes["meta"] == shapes["cpu"] and any(name.endswith("weight_u") for name, _, _ in shapes["cpu"])
    assert all(t.is_meta for model in built["meta"] for t in model.state_dict().values())


def test_one_dimensional_weight_is_normalised_like_torch():
    w = torch.randn(9)
    out = spectral_norm_torch(w, torch.empty(0), torch.empty(0))
    assert rel_err(out, w / w.norm()) < 1e-7


@pytest.mark.parametrize(
    "weight, u, v, match",
    [
        (torch.randn(4, 6), torch.randn(5), torch.randn(6), r"needs u \(4,\)"),
        (torch.randn(4, 2, 3), torch.randn(4), torch.randn(3), r"matrix \[4, 6\]"),
        (torch.randn(4, 6), torch.randn(4).double(), torch.randn(6), "dtype"),
        (torch.randint(0, 3, (4, 6)), torch.randn(4), torch.randn(6), "floating point"),
    ],
)
def test_bad_inputs(weight, u, v, match):
    with pytest.raises(ValueError, match=match):
        spectral_norm(weight, u, v)
