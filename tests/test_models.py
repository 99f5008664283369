"""SAGAN G and D: shapes at every image size, the attention block, initialisations, input checks,
torch.compile on CPU."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from tritonsagan.kernels import attention_naive
from tritonsagan.models import Discriminator, Generator, SelfAttention
from tritonsagan.models.layers import spectral_norm_layers

CH = 8  # small width: the architecture is the same, only narrower


@pytest.mark.parametrize("num_classes", [0, 5])
def test_output_shapes_and_range(num_classes):
    G = Generator(ch=CH, num_classes=num_classes)
    D = Discriminator(ch=CH, num_classes=num_classes)
    y = torch.tensor([0, 4, 2]) if num_classes else None
    images = G(torch.randn(3, 128), y)
    assert images.shape == (3, 3, 128, 128)
    assert images.abs().max() <= 1
    logits = D(images, y)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_official_channel_widths():
    G, D = Generator(ch=CH), Discriminator(ch=CH)
    assert [b.conv2.out_channels // CH for b in G.blocks] == [16, 8, 4, 2, 1]
    assert G.attention.channels == 4 * CH  # G attention at 32x32 on 4ch
    assert [b.conv2.out_channels // CH for b in D.blocks] == [1, 2, 4, 8, 16, 16]
    assert D.attention.channels == 2 * CH  # D attention at 32x32 on 2ch
    assert D.blocks[-1].shortcut is None and not D.blocks[-1].downsample


# BigGAN-PyTorch's G_arch / D_arch (BigGAN.py): G's 4x4 input and up-block widths, D's block widths and
# downsampling, in multiples of ch; the attention resolution is ours (32, or 16 where D has no 32x32).
ARCHITECTURES = {
    32: ([4, 4, 4, 4], [4, 4, 4, 4], [True, True, False, False], 16),
    64: ([16, 16, 8, 4, 2], [1, 2, 4, 8, 16], [True, True, True, True, False], 32),
    128: ([16, 16, 8, 4, 2, 1], [1, 2, 4, 8, 16, 16], [True, True, True, True, True, False], 32),
    256: ([16, 16, 8, 8, 4, 2, 1], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False], 32),
}


@pytest.mark.parametrize("image_size", sorted(ARCHITECTURES))
def test_every_image_size(image_size):
    g_widths, d_widths, downsamples, attn_res = ARCHITECTURES[image_size]
    G = Generator(ch=CH, num_classes=3, image_size=image_size, attn_res=attn_res)
    D = Discriminator(ch=CH, num_classes=3, image_size=image_size, attn_res=attn_res)
    assert G.linear.out_features == g_widths[0] * CH * 4 * 4
    assert [b.conv2.out_channels // CH for b in G.blocks] == g_widths[1:]
    assert [b.conv2.out_channels // CH for b in D.blocks] == d_widths and [
        b.downsample for b in D.blocks
    ] == downsamples
    y = torch.tensor([0, 2])
    captured = {}
    G.attention.register_forward_hook(lambda m, i, o: captured.update(g=i[0].shape))
    D.attention.register_forward_hook(lambda m, i, o: captured.update(d=i[0].shape))
    images = G(torch.randn(2, 128), y)
    assert images.shape == (2, 3, image_size, image_size)
    D(images, y).sum().backward()
    assert captured["g"][-1] == attn_res and captured["d"][-1] == attn_res  # attention where asked, in both


def test_orthogonal_init_and_its_power_iteration_vectors():
    """init="orthogonal" (the default) draws every SN weight orthogonal (all singular values equal) and
    starts u, v again from it: sigma from u, v is the new weight's largest singular value."""
    torch.manual_seed(0)
    for model in (Generator(ch=CH, num_classes=3), Discriminator(ch=CH, num_classes=3)):
        for layer in spectral_norm_layers(model):
            w = layer.weight.detach().flatten(1).double()
            singular = torch.linalg.svdvals(w)
            assert singular.max() / singular.min() < 1 + 1e-5
            sigma = layer.weight_u.double() @ w @ layer.weight_v.double()
            assert abs(sigma / singular[0] - 1) < 1e-4
    xavier = [
        torch.linalg.svdvals(layer.weight.detach().flatten(1))
        for layer in spectral_norm_layers(Generator(ch=CH, init="xavier"))
    ]
    assert max(float(s.max() / s.min()) for s in xavier) > 2  # the check above can tell the two apart


def test_bias_inits():
    """bias_init="zeros" starts every conv and linear bias at 0; "uniform" (the default) draws torch's
    default, uniform in +-1 / sqrt(fan_in), and touches neither the weights nor any other parameter."""
    for model_class in (Generator, Discriminator):
        torch.manual_seed(0)
        zeros = model_class(ch=CH, num_classes=3, bias_init="zeros")
        torch.manual_seed(0)
        uniform = model_class(ch=CH, num_classes=3)
        biased = [layer for layer in spectral_norm_layers(uniform) if getattr(layer, "bias", None) is not None]
        assert biased and all(
            not layer.bias.any() for layer in spectral_norm_layers(zeros) if getattr(layer, "bias", None) is not None
        )
        # Each bias over its bound 1 / sqrt(fan_in): uniform in [-1, 1], whose standard deviation is 1 / sqrt(3).
        scaled = torch.cat([layer.bias.detach() * layer.weight[0].numel() ** 0.5 for layer in biased])
        assert scaled.abs().max() <= 1 and abs(scaled.std() * 3**0.5 - 1) < 0.1 and len(scaled) > 300
        for (name, a), b in zip(zeros.named_parameters(), uniform.parameters()):
            assert torch.equal(a, b) or name.endswith(".bias"), name


def test_class_batch_norm_inits():
    identity = Generator(ch=CH, num_classes=5, class_bn_init="identity")
    random = Generator(ch=CH, num_classes=5)  # the default
    for a, b in zip(identity.blocks, random.blocks):
        assert torch.equal(a.bn1.gamma.weight, torch.ones_like(a.bn1.gamma.weight)) and not a.bn1.beta.weight.any()
        gains, biases = b.bn1.gamma.weight - 1, b.bn1.beta.weight
        # 1 + e and e, e with orthonormal rows (5 classes, more features than classes): every class its own.
        for table in (gains, biases):
            assert rel_err(table @ table.T, torch.eye(5)) < 1e-5
    z = torch.randn(2, 128)
    images = random.eval()(z.repeat(2, 1), torch.tensor([0, 0, 1, 1]))
    assert (images[:2] - images[2:]).abs().mean() > 1e-3  # the classes differ from the first step


def test_conditional_models_use_the_labels():
    G = Generator(ch=CH, num_classes=4).eval()
    D = Discriminator(ch=CH, num_classes=4).eval()
    z = torch.randn(2, 128)
    with torch.no_grad():
        G.blocks[0].bn1.gamma.weight[1].mul_(3.0)  # make classes differ at start
        D.embed.weight.normal_()
        a, b = G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1]))
        assert not torch.allclose(a, b)
        assert not torch.allclose(D(a, torch.tensor([0, 0])), D(a, torch.tensor([3, 3])))


def test_attention_with_zero_gamma_is_identity():
    block = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)


def test_attention_block_equals_float64_math():
    block = SelfAttention(32).eval()
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 32, 12, 10)
    out = block(x)

    def conv(layer, t):  # 1x1 conv with the spectrally normalised weight, in float64
        return F.conv2d(t, layer.normalized_weight().double())

    x64 = x.double()
    theta = conv(block.theta, x64).flatten(2).transpose(1, 2)
    phi = F.max_pool2d(conv(block.phi, x64), 2).flatten(2).transpose(1, 2)
    g = F.max_pool2d(conv(block.g, x64), 2).flatten(2).transpose(1, 2)
    attended = attention_naive(theta, phi, g).transpose(1, 2).reshape(2, 16, 12, 10)
    expected = x64 + 0.7 * conv(block.out, attended)
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("attn_res", [64, 0])
def test_other_attention_resolutions(attn_res):
    G = Generator(ch=CH, attn_res=attn_res)
    D = Discriminator(ch=CH, attn_res=attn_res)
    if attn_res:
        assert G.attention.channels == 2 * CH and D.attention.channels == CH
    else:
        assert G.attention is None and D.attention is None
    D(G(torch.randn(2, 128))).sum().backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad and p.ndim > 1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda G, D: G(torch.randn(2, 64)), r"z must have shape \(B, 128\)"),
        (lambda G, D: G(torch.randn(2, 128)), "needs class labels"),
        (lambda G, D: G(torch.randn(2, 128), torch.tensor([0, 3])), r"in \[0, 3\)"),
        (lambda G, D: G(torch.randn(2, 128), torch.tensor([0.0, 1.0])), "integer tensor"),
        (lambda G, D: D(torch.randn(2, 3, 64, 64), torch.tensor([0, 1])), r"x must have shape \(B, 3, 128, 128\)"),
        (lambda G, D: D(torch.randn(2, 3, 128, 128), torch.tensor([-1, 1])), "class labels must be in"),
        (lambda G, D: Generator(ch=CH, attn_res=48), "attn_res must be 0"),
        (lambda G, D: Discriminator(ch=CH, attn_res=128), "attn_res must be 0"),
        (lambda G, D: Generator(ch=CH, image_size=100), "image_size must be one of 32, 64, 128, 256, got 100"),
        (
            lambda G, D: Discriminator(ch=CH, image_size=32),
            r"at image_size 32, attn_res must be 0 \(no attention\) or one of 8, 16, got 32",
        ),
        (
            lambda G, D: Discriminator(ch=CH, image_size=64)(torch.randn(2, 3, 128, 128)),
            r"x must have shape \(B, 3, 64, 64\) for image_size 64",
        ),
        (lambda G, D: Discriminator(ch=4, image_size=64), "ch=4 gives the attention block at 32x32 4 channels"),
        (lambda G, D: Generator(ch=CH, init="kaiming"), "init must be one of xavier, orthogonal"),
        (lambda G, D: Generator(ch=CH, class_bn_init="zeros"), "class_bn_init must be one of identity, random"),
        (lambda G, D: Discriminator(ch=CH, bias_init="normal"), "bias_init must be one of zeros, uniform"),
    ],
)
def test_bad_inputs(call, match):
    G = Generator(ch=CH, num_classes=3)
    D = Discriminator(ch=CH, num_classes=3)
    with pytest.raises(ValueError, match=match):
        call(G, D)


def test_unconditional_models_reject_labels():
    with pytest.raises(ValueError, match="got class labels"):
        Generator(ch=CH)(torch.randn(1, 128), torch.tensor([0]))


def _forward_backward(G, D, z, y):
    logits = D(G(z, y), y)
    loss = logits.square().mean()
    loss.backward()
    return logits.detach()


def test_compile_fullgraph_matches_eager():
    """G and D, forward and backward, compiled whole with no graph break, agree with eager (training mode).

    float64, so that a real difference is not hidden behind float32 rounding through a deep net.
    """
    torch._dynamo.reset()
    G_eager = Generator(ch=CH, num_classes=3).double()
    D_eager = Discriminator(ch=CH, num_classes=3).double()
    G_comp, D_comp = copy.deepcopy(G_eager), copy.deepcopy(D_eager)
    G_comp.forward = torch.compile(G_comp.forward, fullgraph=True)
    D_comp.forward = torch.compile(D_comp.forward, fullgraph=True)
    for _ in range(2):  # the second step sees the SN buffers the first one updated
        z, y = torch.randn(4, 128, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
        expected = _forward_backward(G_eager, D_eager, z, y)
        got = _forward_backward(G_comp, D_comp, z, y)
        assert rel_err(got, expected) < 1e-10
    for eager, comp in ((G_eager, G_comp), (D_eager, D_comp)):
        for (name, b1), b2 in zip(eager.named_buffers(), comp.buffers()):
            if b1.is_floating_point():
                assert rel_err(b2, b1) < 1e-10, name
        # Per parameter, against the whole model's gradient norm: some grads are pure rounding noise
        # (a conv bias right before batch norm has zero true gradient).
        grad_norm = torch.cat([p.grad.flatten() for p in eager.parameters()]).norm()
        for (name, p1), p2 in zip(eager.named_parameters(), comp.parameters()):
            assert (p2.grad - p1.grad).norm() < 1e-10 * grad_norm, name
