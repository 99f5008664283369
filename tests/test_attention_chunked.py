"""The chunked torch attention path against float64 bmm + softmax: forward, gradients, strides, memory, errors."""

import pytest
import torch
from helpers import ATTENTION_SHAPES, attention_float64, rel_err
from tritonsagan.kernels import attention, attention_chunked, attention_naive, use_backend

SHAPES = ATTENTION_SHAPES + [(1, 5, 300, 3, 7)]  # (B, N_q, N_k, d_qk, d_v)


def _inputs(B, Nq, Nk, dqk, dv, dtype=torch.float32):
    q = torch.randn(B, Nq, dqk, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Nk, dqk, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Nk, dv, dtype=dtype, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("query_chunk", [256, 7])
def test_forward_and_gradients_match_float64(shape, query_chunk):
    q, k, v = _inputs(*shape)
    scale = 0.7
    out = attention_chunked(q, k, v, scale, query_chunk=query_chunk)
    grad_out = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)

    ref, _, (rq, rk, rv) = attention_float64(q, k, v, grad_out, scale)

    assert out.dtype == torch.float32 and out.shape == ref.shape
    for name, got, want in (("out", out, ref), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        assert rel_err(got, want) < 1e-5, name


def test_float64_inputs_stay_float64():
    q, k, v = _inputs(2, 33, 17, 5, 6, dtype=torch.float64)
    out = attention_chunked(q, k, v, query_chunk=8)
    assert out.dtype == torch.float64
    assert rel_err(out, attention_naive(q, k, v)) < 1e-12


def test_strided_conv_layout_inputs():
    """The natural input: (B, C, H*W) conv outputs viewed as (B, H*W, C)."""
    B, H, W = 2, 12, 10
    q = torch.randn(B, 8, H * W).transpose(1, 2)
    k = torch.randn(B, 8, H * W // 4).transpose(1, 2)
    v = torch.randn(B, 24, H * W // 4)[:, ::2].transpose(1, 2)  # stride 2 over channels as well
    assert not q.is_contiguous() and not v.is_contiguous()
    out = attention(q, k, v)
    assert rel_err(out, attention_naive(q.double(), k.double(), v.double())) < 1e-5


def test_saved_activations_are_linear_in_queries():
    """Autograd keeps q, k, v, out and one log-sum-exp per row: nothing of size N_q * N_k."""
    B, Nq, Nk, d = 1, 512, 128, 4
    q, k, v = _inputs(B, Nq, Nk, d, d)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_chunked(q, k, v, query_chunk=64)
    assert saved and max(saved) < Nq * Nk / 8


@pytest.mark.parametrize(
    "q_shape, k_shape, v_shape, match",
    [
        ((2, 8, 4), (2, 8), (2, 8, 4), "k must be 3-D"),
        ((2, 8, 4), (3, 8, 4), (3, 8, 4), "batch sizes differ"),
        ((2, 8, 4), (2, 8, 5), (2, 8, 4), r"d_qk\) differ"),
        ((2, 8, 4), (2, 8, 4), (2, 9, 4), r"N_k\) differ"),
        ((2, 8, 4), (2, 0, 4), (2, 0, 4), "zero keys"),
    ],
)
def test_shape_errors_name_the_shapes(q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        attention(torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape))


def test_dtype_errors():
    q = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, q.double(), q)
    with pytest.raises(ValueError, match="floating-point"):
        attention(q.long(), q.long(), q.long())


def test_naive_backend_and_backend_switch():
    q, k, v = _inputs(2, 33, 9, 5, 7)
    logits = 0.5 * q.double() @ k.double().transpose(1, 2)
    by_hand = (logits.exp() / logits.exp().sum(-1, keepdim=True)) @ v.double()  # softmax written out
    assert rel_err(attention_naive(q.double(), k.double(), v.double(), 0.5), by_hand) < 1e-12
    with use_backend("naive"):
        assert rel_err(attention(q, k, v, 0.5), by_hand) < 1e-6
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("flash"):
            pass
