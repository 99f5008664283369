"""--accumulate N: each D and G step in N micro-batches. D (no batch norm) gets the full batch's
gradient and one power iteration per step; pairs of the mode-seeking term stay in one micro-batch; a
resumed run with accumulation is bitwise equal to an uninterrupted one; the flag's errors."""

import pytest
import torch
from helpers import cli_flags, final_weights, rel_err, tiny_config, tiny_step

from tritonsagan.step import micro_batches
from tritonsagan.train import main, train

DIFFAUG = "color,translation,cutout"


def test_micro_batches_split_rows_in_order_and_halves_together():
    rows = torch.arange(8)
    assert [t.tolist() for t in micro_batches(rows, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # halves=2: each micro-batch holds its share of both halves (D's real and fake images).
    assert [t.tolist() for t in micro_batches(rows, 2, halves=2)] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert micro_batches(rows, 1, halves=2)[0] is rows


def _d_gradients_of_one_step(
    accumulate: int, grouped_sn: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """D's gradients and SN vectors at its optimiser step, in one step on a fixed batch."""
    step = tiny_step(num_classes=3, diffaug=DIFFAUG, accumulate=accumulate, grouped_sn=grouped_sn)
    # G's batch norms on their running statistics: the fakes D sees are then the same in any micro-batch.
    for module in step.G.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    captured, vectors, optimizer_step = {}, {}, step.opt_d_step

    def capture() -> None:
        captured.update({name: p.grad.clone() for name, p in step.D.named_parameters()})
        vectors.update({name: b.clone() for name, b in step.D.named_buffers() if name.endswith(("_u", "_v"))})
        optimizer_step()

    step.opt_d_step = capture
    gen = torch.Generator().manual_seed(11)
    real, labels = torch.rand(4, 3, 128, 128, generator=gen) * 2 - 1, torch.randint(3, (4,), generator=gen)
    step(0, [(real, labels)])
    return captured, vectors


@pytest.mark.parametrize("accumulate, grouped_sn", [(2, False), (4, False), (2, True)])
def test_accumulated_d_gradient_equals_the_full_batch_gradient(accumulate, grouped_sn):
    full, full_vectors = _d_gradients_of_one_step(1, grouped_sn)
    parts, part_vectors = _d_gradients_of_one_step(accumulate, grouped_sn)
    assert full.keys() == parts.keys() and full
    errors = {name: rel_err(parts[name], full[name]) for name in full}
    assert max(errors.values()) < 1e-4, errors  # float32 sums in another order
    # One power iteration per D step, whatever the micro-batches.
    assert full_vectors and all(torch.equal(part_vectors[name], full_vectors[name]) for name in full_vectors)


def test_mode_seeking_pairs_stay_within_each_micro_batch():
    step = tiny_step(num_classes=5, mode_seeking=0.5, batch_size=8, accumulate=2)
    seen, g_loss = [], step.g_loss

    def record(z, fake_y, augmentation):
        seen.append((z, fake_y))
        return g_loss(z, fake_y, augmentation)

    step.g_loss = record
    step(0, [(torch.rand(8, 3, 128, 128) * 2 - 1, torch.randint(5, (8,)))])
    z_full, y_full = step.draws(0, 1, augmented_images=8)[:2]
    y_full = y_full.chunk(2)[0].repeat(2)
    assert len(seen) == 2
    for k, (z, y) in enumerate(seen):
        assert z.shape[0] == 4 and torch.equal(y[:2], y[2:])  # image i and i + 2 share a class
        assert torch.equal(z, torch.cat([z_full[2 * k : 2 * k + 2], z_full[4 + 2 * k : 6 + 2 * k]]))
        assert torch.equal(y, torch.cat([y_full[2 * k : 2 * k + 2], y_full[4 + 2 * k : 6 + 2 * k]]))


def test_accumulated_run_resumes_bitwise(tmp_path):
    options = dict(conditional=True, accumulate=2, diffaug=DIFFAUG)
    train(tiny_config(tmp_path / "straight", steps=4, **options))
    train(tiny_config(tmp_path / "split", steps=2, **options))
    train(tiny_config(tmp_path / "split", steps=4, **options))
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--accumulate", "0"], "--accumulate must be positive, got 0"),
        (["--accumulate", "3"], "--accumulate 3 must divide each rank's batch: --batch-size 4 gives 4 per rank"),
        (
            ["--accumulate", "4", "--mode-seeking", "0.1"],
            "--mode-seeking pairs the images of each micro-batch: --batch-size 4 with --accumulate 4 gives 1 per rank",
        ),
    ],
)
def test_accumulate_that_cannot_split_the_batch_is_refused(tmp_path, capsys, flags, message):
    assert main(["--out", str(tmp_path / "run"), "--steps", "2", *cli_flags(), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
