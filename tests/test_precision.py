"""--precision: what auto gives on each device, earlier configs' bf16, fp16's loss scaling (its skipped
steps, its state in checkpoints, a bitwise resume), and a precision changed when a run resumes."""

import json

import pytest
import torch
from helpers import TINY, cli_flags, final_weights, tiny_config, tiny_step

from tritonsagan.checkpoint import read_checkpoint
from tritonsagan.config_flags import build_config
from tritonsagan.errors import ConfigError
from tritonsagan.run_directory import RunDirectory
from tritonsagan.step import TrainingStep
from tritonsagan.train import build_parser, train
from tritonsagan.train_config import TrainConfig, resolve_precision, settings_changed_on_resume, upgrade_saved_config

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A pretend GPU of the compute capability the test sets (no CUDA needed: only its properties are read)."""
    capability = {"value": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    return capability


@pytest.mark.parametrize(
    "capability, auto", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")]
)
def test_auto_is_bf16_where_the_gpu_has_it_and_loss_scaled_fp16_before(gpu, capability, auto):
    gpu["value"] = capability
    assert resolve_precision("auto", CUDA) == auto
    assert resolve_precision("fp16", CUDA) == "fp16" and resolve_precision("fp32", CUDA) == "fp32"


def test_auto_is_fp32_on_the_cpu_where_bf16_and_fp16_may_be_asked():
    cpu = torch.device("cpu")
    assert [resolve_precision(p, cpu) for p in ("auto", "bf16", "fp16", "fp32")] == ["fp32", "bf16", "fp16", "fp32"]


def test_bf16_on_a_gpu_without_it_is_refused_by_name(gpu):
    gpu["value"] = (7, 5)
    with pytest.raises(ConfigError, match=r"--precision bf16: Tesla T4 \(compute capability 7\.5\) has no bfloat16"):
        resolve_precision("bf16", CUDA)


@pytest.mark.parametrize("bf16, precision", [(True, "bf16"), (False, "fp32"), (None, "auto")])
def test_configs_written_with_bf16_read_as_the_precision(tmp_path, bf16, precision):
    assert upgrade_saved_config({"steps": 3, "bf16": bf16}) == {"steps": 3, "precision": precision}
    config_file = tmp_path / "old.json"
    config_file.write_text(json.dumps({"steps": 3, "bf16": bf16}))
    cfg = build_config(TrainConfig, build_parser().parse_args(["--config", str(config_file)]), upgrade_saved_config)
    assert cfg.precision == precision and cfg.steps == 3


def test_a_checkpoint_written_with_bf16_off_resumes_as_fp32_unchanged(tmp_path):
    current = {**vars(tiny_config(tmp_path)), "precision": "fp32"}
    saved = {k: v for k, v in current.items() if k != "precision"} | {"bf16": False}
    assert settings_changed_on_resume(tmp_path / "ckpt", saved, current) == {}
    assert settings_changed_on_resume(tmp_path / "ckpt", saved, {**current, "precision": "fp16"}) == {
        "precision": ("fp32", "fp16")
    }


def _real_batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.rand(n, 3, 128, 128, generator=gen) * 2 - 1, torch.randint(3, (n,), generator=gen)


def test_fp16_scales_the_losses_and_counts_the_steps_it_skips():
    step = tiny_step(num_classes=3, precision="fp16")
    scaling = step.loss_scaling
    assert scaling.enabled and step.autocast_dtype == torch.float16
    # A scale far past float16's range: every gradient overflows, so both optimiser steps are skipped.
    huge = 2.0**100
    scaling.load_state_dict(
        {name: {**scaler.state_dict(), "scale": huge, "skipped_steps": 0} for name, scaler in scaling.scalers.items()}
    )
    before = {name: p.detach().clone() for name, p in step.D.named_parameters()}
    losses = step(0, [_real_batch()])
    assert all(torch.isfinite(v) for v in losses.values())
    assert scaling.skipped_steps == {"D": 1, "G": 1}
    assert all(scaler.get_scale() == huge / 2 for scaler in scaling.scalers.values())  # backed off
    assert all(torch.equal(p, before[name]) for name, p in step.D.named_parameters())  # D did not move
    state = scaling.state_dict()
    assert state["D"]["skipped_steps"] == 1 and state["G"]["scale"] == huge / 2
    json.dumps(state)  # it goes into the checkpoint's JSON header


def test_fp32_and_bf16_have_no_loss_scaling():
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        step = tiny_step(precision=precision)
        assert not step.loss_scaling.enabled and step.autocast_dtype == dtype
        step(0, [(_real_batch()[0], None)])
        assert step.loss_scaling.skipped_steps == {"D": 0, "G": 0}


def test_fp16_run_saves_its_scalers_and_resumes_bitwise(tmp_path):
    options = dict(conditional=True, precision="fp16", log_every=1)
    train(tiny_config(tmp_path / "straight", steps=4, **options))
    train(tiny_config(tmp_path / "split", steps=2, **options))
    train(tiny_config(tmp_path / "split", steps=4, **options))
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []
    metas = [
        read_checkpoint(tmp_path / run / "checkpoints" / "step_0000004.safetensors")[1] for run in ("straight", "split")
    ]
    assert metas[0]["loss_scaling"] == metas[1]["loss_scaling"]
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # The counts run on over the resume: the record at step 4 says what the checkpoint does.
    assert records[-1]["skipped_steps_d"] == metas[1]["loss_scaling"]["D"]["skipped_steps"]
    assert records[-1]["skipped_steps_g"] == metas[1]["loss_scaling"]["G"]["skipped_steps"]
    assert all(r["skipped_steps_d"] <= r["step"] for r in records)


def test_the_precision_may_change_when_a_run_resumes_and_is_recorded(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, log_every=1))
    resumed = train(tiny_config(run, steps=4, log_every=1, precision="fp16"))
    history = RunDirectory(run).read_config_history()
    assert history[1]["changed"] == {"steps": [2, 4], "precision": ["fp32", "fp16"]}
    assert resumed.training_step.loss_scaling.enabled
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["skipped_steps_d" in r for r in records] == [False, False, True, True]


def test_the_precision_flag_is_checked_by_argparse(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--precision", "fp8", *cli_flags()])
    assert "--precision: invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_cuda_step_at_each_half_precision_trains_with_the_kernels_its_gpu_offers(precision):
    """On the GPU at hand: auto's choice resolves, the step runs (compiled, with loss scaling under
    fp16) and its losses are finite; the generation the kernels' configs come from is known."""
    from tritonsagan.kernels import device_generation

    device = torch.device("cuda", torch.cuda.current_device())
    if precision == "bf16" and torch.cuda.get_device_capability(device) < (8, 0):
        pytest.skip("this GPU has no bfloat16")
    assert resolve_precision("auto", device) in ("bf16", "fp16")
    step = TrainingStep.fresh(TrainConfig(**{**TINY, "precision": precision, "compile": True}), 3, device="cuda")
    assert step.loss_scaling.enabled == (precision == "fp16")
    real, labels = _real_batch()
    for n in range(3):
        losses = step(n, [(real.cuda(), labels.cuda())])
    assert all(torch.isfinite(v).item() for v in losses.values())
    generation = device_generation(device)
    assert generation is None or generation.capability <= torch.cuda.get_device_capability(device)
