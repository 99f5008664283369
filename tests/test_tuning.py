"""The tuning switches compute what the default path computes: models in float64 (the grouped and
autocast-dtype spectral-norm kernels are tested in test_spectral_norm_triton.py), and training runs
with each switch on (the same losses as the default run, and bitwise exact resumes)."""

import helpers
import pytest
import torch
from helpers import rel_err
from tritonsagan.kernels import use_backend
from tritonsagan.models import Discriminator, Generator, TuningConfig, set_tuning

from tritonsagan.step import TrainingStep
from tritonsagan.train import TrainConfig, train

MODEL_SWITCHES = ["channels_last", "fused_qkv", "grouped_sn"]


def _models_forward_backward(tuning: TuningConfig, dtype: torch.dtype, backend: str) -> dict[str, torch.Tensor]:
    """Two training-mode passes of G and D (so the power-iteration updates accumulate): logits, grads, SN vectors."""
    torch.manual_seed(3)
    G, D = Generator(ch=8, num_classes=3).to(dtype), Discriminator(ch=8, num_classes=3).to(dtype)
    for model in (G, D):
        set_tuning(model, tuning)
        with torch.no_grad():
            model.attention.gamma.fill_(0.7)
    z, y = torch.randn(3, 128).to(dtype), torch.tensor([0, 2, 1])  # the same latents in either dtype
    with use_backend(backend):
        D(G(z, y), y)
        logits = D(G(z, y), y)
        logits.square().sum().backward()
    return {
        "logits": logits.detach(),
        "G theta grad": G.attention.theta.weight.grad,
        "G g grad": G.attention.g.weight.grad,
        "G linear grad": G.linear.weight.grad,
        "D first conv grad": D.blocks[0].conv1.weight.grad,
        "D embed grad": D.embed.weight.grad,
        "G linear u": G.linear.weight_u,
        "D attention phi v": D.attention.phi.weight_v,
    }


@pytest.fixture(scope="module")
def default_float64() -> dict[str, torch.Tensor]:
    return _models_forward_backward(TuningConfig(), torch.float64, "torch")


@pytest.mark.parametrize("switch", MODEL_SWITCHES)
def test_model_switch_matches_default_in_float64(switch, default_float64):
    tuned = _models_forward_backward(TuningConfig(**{switch: True}), torch.float64, "torch")
    for name, want in default_float64.items():
        assert rel_err(tuned[name], want) < 1e-12, name


def test_grouped_spectral_norm_on_the_triton_kernels_matches_the_layers_own(default_float64):
    """Interpreted Triton kernels (fp32): the grouped update gives what each layer's own update gives,
    to float32 rounding: no further from the float64 result than the layers' own update. (G's
    gradients pass through batch norm over 3 images, whose cancellation leaves the two float32 paths
    up to 1e-4 apart on some CPUs; an error in the grouped update is far larger.)"""
    default = _models_forward_backward(TuningConfig(), torch.float32, "triton")
    tuned = _models_forward_backward(TuningConfig(grouped_sn=True), torch.float32, "triton")
    for name, truth in default_float64.items():
        assert rel_err(default[name], truth) < 1e-3, name  # the reference itself is the same computation
        assert rel_err(tuned[name], truth) <= 2 * rel_err(default[name], truth) + 1e-6, name


def test_models_with_every_switch_compile_without_graph_breaks():
    """Under bf16 autocast with the Triton path chosen (traced only: the interpreter has no bf16 to run)."""
    G, D = Generator(ch=8, num_classes=3), Discriminator(ch=8, num_classes=3)
    for model in (G, D):
        set_tuning(model, TuningConfig(channels_last=True, fused_qkv=True, grouped_sn=True, sn_autocast_dtype=True))

    def step(z, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return D(G(z, y), y).float().mean()

    with use_backend("triton"):
        explanation = torch._dynamo.explain(step)(torch.randn(2, 128), torch.tensor([0, 1]))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


# ---- training with each switch --------------------------------------------------------------------

# A checkpoint every step, no grids; channels_last off: the switches are measured against the NCHW
# path (the CPU's default is NHWC).
TINY = {**helpers.TINY, "log_every": 1, "sample_every": 100, "save_every": 1, "channels_last": False}
# sn_autocast_dtype acts only under autocast on the Triton path (test_scale_written_in_another_dtype_...).
TRAIN_SWITCHES = {
    "channels_last + fused_qkv": dict(channels_last=True, fused_qkv=True),
    "grouped_sn": dict(grouped_sn=True),
    "fused_adam": dict(fused_adam=True),
    "compile_scope step": dict(compile=True, compile_scope="step"),
}


def _run(out, steps: int, **overrides) -> None:
    train(TrainConfig(out=str(out), steps=steps, **{**TINY, **overrides}))


def _checkpoint(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from tritonsagan.checkpoint import latest_checkpoint

    return load_file(latest_checkpoint(run / "checkpoints"))


def _step_losses(steps: int, **overrides) -> list[dict[str, float]]:
    """The losses of a fresh run's first steps, taken by TrainingStep alone on fixed real batches."""
    step = TrainingStep.fresh(TrainConfig(**{**TINY, **overrides}))
    real = torch.rand(steps, TINY["batch_size"], 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return [{key: float(value) for key, value in step(n, [(real[n], None)]).items()} for n in range(steps)]


@pytest.fixture(scope="module")
def default_losses() -> list[dict]:
    return _step_losses(2)


@pytest.mark.parametrize("switch", TRAIN_SWITCHES)
def test_training_switch_matches_default_and_resumes_exactly(switch, default_losses, tmp_path, monkeypatch):
    if "compile" in TRAIN_SWITCHES[switch]:
        # aot_eager: dynamo and AOTAutograd trace the whole step as inductor would get it, in seconds on a CPU.
        compile_fn = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compile_fn(fn, backend="aot_eager"))
    switched = _step_losses(2, **TRAIN_SWITCHES[switch])
    # float32 with another summation order: step 1 agrees to rounding, and Adam's first update
    # (about lr * sign(grad)) carries that into step 2 at ~1e-4 relative.
    for n, (got, want) in enumerate(zip(switched, default_losses, strict=True)):
        for key in ("loss_d", "loss_g", "d_real", "d_fake"):
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), (n, key)
    if "compile" in TRAIN_SWITCHES[switch]:
        return  # on the CPU the step scope resumes through the very code of the default scope (draws on the CPU either way)
    _run(tmp_path / "straight", 2, **TRAIN_SWITCHES[switch])
    _run(tmp_path / "split", 1, **TRAIN_SWITCHES[switch])
    _run(tmp_path / "split", 2, **TRAIN_SWITCHES[switch])
    first, second = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "split")
    assert [k for k in first if not torch.equal(first[k], second[k])] == []


def test_channels_last_is_left_to_the_device_on_for_the_cpu():
    for asked, used in ((None, True), (False, False)):
        step = TrainingStep.fresh(TrainConfig(**{**TINY, "channels_last": asked}))
        assert step.cfg.channels_last is used and step.G.tuning.channels_last is used
        assert step.D.tuning.channels_last is used
        assert step.ema.model.tuning == TuningConfig()  # G_ema computes as a loaded generator does


@pytest.mark.parametrize("mode", ["max-autotune", "reduce-overhead"])
def test_compile_mode_and_scope_reach_torch_compile(mode, monkeypatch):
    compiled = []
    monkeypatch.setattr(
        torch, "compile", lambda fn, mode=None: compiled.append((getattr(fn, "__name__", ""), mode)) or fn
    )
    TrainingStep.fresh(TrainConfig(**{**TINY, "compile": True, "compile_scope": "step", "compile_mode": mode}))
    assert compiled == [(name, mode) for name in ("_d_losses", "_g_loss", "step", "step", "average")]


@pytest.mark.gpu
def test_every_model_switch_on_cuda_compiled_in_bf16_matches_default():
    """The switches as training uses them: compiled, bf16 autocast, Triton kernels."""
    results = []
    for tuning in (
        TuningConfig(),
        TuningConfig(channels_last=True, fused_qkv=True, grouped_sn=True, sn_autocast_dtype=True),
    ):
        torch.manual_seed(5)
        G, D = Generator(ch=16, num_classes=3).cuda(), Discriminator(ch=16, num_classes=3).cuda()
        for model in (G, D):
            set_tuning(model, tuning)
            with torch.no_grad():
                model.attention.gamma.fill_(0.7)

        def step(z, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return D(G(z, y), y).float()

        z, y = torch.randn(8, 128, device="cuda"), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device="cuda")
        logits = torch.compile(step, fullgraph=True)(z, y)
        logits.square().sum().backward()
        results.append(
            (logits.detach(), G.attention.theta.weight.grad, D.blocks[0].conv1.weight.grad, G.linear.weight_u)
        )
        torch._dynamo.reset()
    for name, got, want in zip(("logits", "G theta grad", "D conv1 grad", "G linear u"), *results):
        assert rel_err(got, want) < 3e-2, name
