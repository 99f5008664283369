"""The fused Triton spectral norm against torch.nn.utils.parametrizations.spectral_norm."""

import pytest
import torch
import torch.nn as nn
from helpers import rel_err
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm
from tritonsagan.kernels import spectral_norm_triton, use_backend
from tritonsagan.kernels.spectral_norm import power_iteration_grouped
from tritonsagan.kernels.spectral_norm_kernels import power_iteration_launch, scale_backward_launch, scale_launch
from tritonsagan.models import Discriminator, Generator, SNConv2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

SHAPES = [  # weight matrices [out, in*kh*kw]
    (1024, 1024 * 3 * 3),  # a 3x3 conv at 16ch
    (16384, 128),  # G's first linear
    (3, 64 * 3 * 3),  # G's output conv
    (64, 3 * 3 * 3),  # D's first conv
    (1000, 1024),  # a class embedding
    (37, 53),
]


def _torch_layer(shape, dtype=torch.float32):
    """A bias-free linear whose weight is exactly the [R, C] matrix, with torch's parametrization."""
    layer = nn.Linear(shape[1], shape[0], bias=False).to(DEVICE, dtype)
    return torch_spectral_norm(layer)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_five_training_steps_match_torch(shape):
    layer = _torch_layer(shape)
    param = layer.parametrizations.weight
    sn = param[0]
    weight = param.original.detach().clone().requires_grad_()
    u, v = sn._u.clone(), sn._v.clone()
    for step in range(5):
        w_sn_torch = layer.weight  # training mode: runs one power iteration on _u, _v
        w_sn = spectral_norm_triton(weight, u, v)
        sigma_torch = torch.dot(sn._u, torch.mv(param.original, sn._v))
        sigma = torch.dot(u, torch.mv(weight, v))
        grad = torch.randn_like(w_sn)
        w_sn_torch.backward(grad)
        w_sn.backward(grad)
        for name, got, want in (
            ("u", u, sn._u),
            ("v", v, sn._v),
            ("sigma", sigma, sigma_torch),
            ("W_sn", w_sn, w_sn_torch),
            ("dW", weight.grad, param.original.grad),
        ):
            assert rel_err(got, want) < 1e-5, f"{name} at step {step}"
        with torch.no_grad():  # the same optimiser step on both
            param.original.sub_(0.1 * param.original.grad)
            weight.sub_(0.1 * param.original.grad)
            param.original.grad = None
            weight.grad = None


def test_eval_mode_uses_but_leaves_u_v():
    layer = _torch_layer((40, 30)).eval()
    sn = layer.parametrizations.weight[0]
    u, v = sn._u.clone(), sn._v.clone()
    weight = layer.parametrizations.weight.original.detach().clone().requires_grad_()
    out = spectral_norm_triton(weight, u, v, training=False)
    assert torch.equal(u, sn._u) and torch.equal(v, sn._v)
    assert rel_err(out, layer.weight) < 1e-6
    grad = torch.randn_like(out)
    out.backward(grad)
    layer.weight.backward(grad)
    assert rel_err(weight.grad, layer.parametrizations.weight.original.grad) < 1e-5


@pytest.mark.parametrize("shape", [(37, 53), (300, 2000)])
@pytest.mark.parametrize("iterations", [1, 3])
def test_launches_fill_poisoned_outputs(shape, iterations):
    torch.manual_seed(5)
    R, C = shape
    w = torch.randn(R, C, device=DEVICE)
    u = torch.nn.functional.normalize(torch.randn(R, device=DEVICE), dim=0)
    v = torch.nn.functional.normalize(torch.randn(C, device=DEVICE), dim=0)
    u_ref, v_ref = u.clone(), v.clone()
    for _ in range(iterations):
        u_ref = torch.nn.functional.normalize(w.double() @ v_ref.double(), dim=0)
        v_ref = torch.nn.functional.normalize(w.double().t() @ u_ref, dim=0)
    sigma_ref = u_ref @ w.double() @ v_ref

    nan = float("nan")
    u_used, v_used = torch.full_like(u, nan), torch.full_like(v, nan)
    sigma = torch.full((), nan, device=DEVICE)
    power_iteration_launch(w, u, v, iterations, 1e-12, u_used, v_used, sigma)
    for name, got, want in (
        ("u", u, u_ref),
        ("v", v, v_ref),
        ("u copy", u_used, u_ref),
        ("v copy", v_used, v_ref),
        ("sigma", sigma, sigma_ref),
    ):
        assert rel_err(got, want) < 1e-5, name

    out = torch.full_like(w, nan)
    scale_launch(w, sigma, out)
    assert rel_err(out, w.double() / sigma_ref) < 1e-6

    grad = torch.randn_like(w)
    grad_w = torch.full_like(w, nan)
    scale_backward_launch(grad, w, u, v, sigma, grad_w)
    g64, w_sn64 = grad.double(), w.double() / sigma_ref
    expected = (g64 - (g64 * w_sn64).sum() * torch.outer(u.double(), v.double())) / sigma_ref
    assert rel_err(grad_w, expected) < 1e-5


def test_conv_layer_with_triton_kernels_matches_torch_path():
    """The SN layers go through spectral_norm: same outputs, buffers and grads on both backends."""
    results = []
    for backend in ("triton", "torch"):
        torch.manual_seed(2)
        layer = SNConv2d(6, 10, 3, padding=1).to(DEVICE)
        x = torch.randn(2, 6, 9, 7, device=DEVICE)
        with use_backend(backend):
            for _ in range(2):
                out = layer(x)
                out.square().sum().backward()
        results.append((out.detach(), layer.weight_u, layer.weight_v, layer.weight.grad))
    for name, got, want in zip(("out", "u", "v", "dW"), *results):
        assert rel_err(got, want) < 1e-5, name


def test_one_dimensional_weight_and_bad_dtypes():
    w = torch.randn(7, device=DEVICE)
    assert rel_err(spectral_norm_triton(w, torch.empty(0), torch.empty(0)), w / w.norm()) < 1e-6
    w64 = torch.randn(4, 5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        spectral_norm_triton(w64, torch.randn(4, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating point"):
        spectral_norm_triton(torch.ones(4, 5, dtype=torch.int64), torch.randn(4), torch.randn(5))


def _power_iteration_float64(w, u, v, n):
    w, u, v = w.double(), u.double(), v.double()
    for _ in range(n):
        u = torch.nn.functional.normalize(w @ v, dim=0, eps=1e-12)
        v = torch.nn.functional.normalize(w.t() @ u, dim=0, eps=1e-12)
    return u, v, u @ w @ v


@pytest.mark.parametrize("n_power_iterations", [1, 3])
def test_grouped_kernels_match_float64_on_awkward_shapes(n_power_iterations):
    shapes = [(7, 5), (33, 300), (1, 17), (300, 3), (129, 257)]  # a single row, few columns, nothing a block multiple
    weights = [torch.randn(r, c, device=DEVICE) for r, c in shapes]
    us = [torch.nn.functional.normalize(torch.randn(r, device=DEVICE), dim=0) for r, _ in shapes]
    vs = [torch.nn.functional.normalize(torch.randn(c, device=DEVICE), dim=0) for _, c in shapes]
    expected = [_power_iteration_float64(w, u, v, n_power_iterations) for w, u, v in zip(weights, us, vs)]
    sigmas = [torch.full((), float("nan"), device=DEVICE) for _ in shapes]  # poisoned: every one must be written
    with use_backend("triton"):
        power_iteration_grouped(weights, us, vs, sigmas, n_power_iterations, 1e-12)
    for shape, u, v, sigma, (u_ref, v_ref, sigma_ref) in zip(shapes, us, vs, sigmas, expected):
        assert rel_err(u, u_ref) < 1e-5 and rel_err(v, v_ref) < 1e-5 and rel_err(sigma, sigma_ref) < 1e-5, shape


def test_grouped_update_refuses_what_it_cannot_serve():
    w = torch.randn(8, 6, device=DEVICE)
    u, v = torch.randn(8, device=DEVICE), torch.randn(6, device=DEVICE)
    with pytest.raises(ValueError, match=r"contiguous matrices .* got weight \(6, 8\)"):
        power_iteration_grouped([w.t()], [v], [u], [torch.zeros((), device=DEVICE)], 1, 1e-12)
    with pytest.raises(ValueError, match=r"needs u \(8,\) and v \(6,\)"):
        power_iteration_grouped([w], [v], [u], [torch.zeros((), device=DEVICE)], 1, 1e-12)


def test_scale_written_in_another_dtype_matches_float64():
    """W / sigma written directly in half precision (as under autocast), and its backward, against float64."""
    weight = torch.randn(40, 3, 3, 3, device=DEVICE).requires_grad_()
    u, v = (torch.nn.functional.normalize(torch.randn(n, device=DEVICE), dim=0) for n in (40, 27))
    u_ref, v_ref, sigma_ref = _power_iteration_float64(weight.detach().flatten(1), u, v, 1)
    out = spectral_norm_triton(weight, u, v, out_dtype=torch.float16)
    grad = torch.randn(weight.shape, device=DEVICE, dtype=torch.float16)
    (grad_w,) = torch.autograd.grad(out, weight, grad)
    w64 = weight.detach().double().requires_grad_()
    ref = w64 / (u_ref @ w64.flatten(1) @ v_ref)
    (grad_ref,) = torch.autograd.grad(ref, w64, grad.double())
    assert out.dtype == torch.float16 and rel_err(out, ref) < 1e-3
    assert grad_w.dtype == torch.float32 and rel_err(grad_w, grad_ref) < 1e-3


# ---- CUDA only ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, bound", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_half_precision_weights(shape, dtype, bound):
    layer = _torch_layer(shape)  # float32 reference
    sn = layer.parametrizations.weight[0]
    weight = layer.parametrizations.weight.original.detach().to(dtype).requires_grad_()
    u, v = sn._u.to(dtype), sn._v.to(dtype)
    w_sn = spectral_norm_triton(weight, u, v)
    w_sn_ref = layer.weight
    grad = torch.randn_like(w_sn_ref)
    w_sn.backward(grad.to(dtype))
    w_sn_ref.backward(grad)
    assert w_sn.dtype == dtype and u.dtype == dtype
    assert rel_err(w_sn, w_sn_ref) < bound
    assert rel_err(weight.grad, layer.parametrizations.weight.original.grad) < bound


@pytest.mark.gpu
def test_compiled_models_match_eager_on_cuda():
    """G and D with the Triton SN and attention, compiled whole, agree with eager and update the same buffers."""
    torch.manual_seed(0)
    G, D = Generator(ch=16).cuda(), Discriminator(ch=16).cuda()
    G_c, D_c = Generator(ch=16).cuda(), Discriminator(ch=16).cuda()
    G_c.load_state_dict(G.state_dict())
    D_c.load_state_dict(D.state_dict())
    step = lambda G, D, z: D(G(z)).mean()  # noqa: E731
    compiled = torch.compile(step, fullgraph=True)
    z = torch.randn(4, 128, device="cuda")
    eager_loss, compiled_loss = step(G, D, z), compiled(G_c, D_c, z)
    eager_loss.backward()
    compiled_loss.backward()
    assert rel_err(compiled_loss, eager_loss) < 1e-3
    assert rel_err(D_c.blocks[0].conv1.weight_u, D.blocks[0].conv1.weight_u) < 1e-5
    assert rel_err(G_c.linear.weight.grad, G.linear.weight.grad) < 1e-2
