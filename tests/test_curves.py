"""Training curves as pictures: <run>/curves.png refreshed at each log, tritonsagan-curves, TensorBoard events."""

import io
import json
import struct

import numpy as np
from PIL import Image

import tritonsagan.curves as curves
from tritonsagan.curves import PANELS, MetricsLog, read_metrics
from tritonsagan.curves import main as curves_main
from tritonsagan.run_directory import RunDirectory
from tritonsagan.train import TrainConfig, train

TINY = dict(ch=8, batch_size=2, workers=0, num_samples=2, log_every=1, sample_every=10, save_every=10, compile=False)


def _colour_pixels(path) -> int:
    """Pixels that are neither grey nor white: drawn curves, not only axes and text."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def test_run_directory_gets_a_curves_picture_refreshed_at_each_log(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), steps=2, **TINY))
    first = (run / "curves.png").read_bytes()
    train(TrainConfig(out=str(run), steps=4, **TINY))  # resumed: the picture keeps the earlier steps
    image = Image.open(run / "curves.png")
    assert image.size[0] > 600 and image.size[1] > 400
    assert (run / "curves.png").read_bytes() != first
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert _colour_pixels(run / "curves.png") > 500


def test_curves_command_draws_several_runs(tmp_path, capsys):
    runs = []
    for name, scale in (("a", 1.0), ("b", 2.0)):
        run = tmp_path / name
        run.mkdir()
        records = [
            {
                "step": s,
                "loss_d": scale / s,
                "loss_g": scale,
                "d_real": 1.0,
                "d_fake": -1.0,
                "gamma_g": [0.1 * s],
                "gamma_d": [0.2 * s],
                "images_per_s": 10.0,
            }
            for s in range(1, 6)
        ]
        records.append({"step": 5, "fid": 100.0 * scale, "kid": 0.1, "kid_std": 0.01})
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "loss'
        )  # cut short
        runs.append(str(run))
    out = tmp_path / "compare.png"
    assert curves_main([*runs, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert _colour_pixels(out) > 500
    assert len(read_metrics(runs[0])) == 6  # the cut-short last line of a killed run is ignored
    assert {key for _, _, lines in PANELS for key, _, _ in lines} >= {
        "loss_d",
        "loss_g",
        "d_real",
        "d_fake",
        "gamma_g",
        "fid",
        "kid",
        "images_per_s",
    }


def _tensorboard_events(folder) -> list:
    """Every Event in a run's TensorBoard files (records: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_tensorboard_gets_the_curves_panels_and_the_sample_grids(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), steps=2, tensorboard=True, **{**TINY, "sample_every": 2}))
    scalars, images = {}, {}
    for event in _tensorboard_events(run / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("image"):
                images[(value.tag, event.step)] = Image.open(io.BytesIO(value.image.encoded_image_string))
            else:
                scalars.setdefault(value.tag, []).append(event.step)
    for tag in (
        "losses/loss_d",
        "losses/loss_g",
        "d_logits/d_real",
        "attention_gamma/gamma_g",
        "attention_gamma/gamma_d",
        "throughput/images_per_s",
    ):
        assert scalars[tag] == [1, 2], tag
    grid = Image.open(run / "samples" / "step_0000002_ema.png")
    assert set(images) == {("samples/G", 2), ("samples/G_ema", 2)}
    assert np.array_equal(np.asarray(images[("samples/G_ema", 2)].convert("RGB")), np.asarray(grid.convert("RGB")))


def test_curves_are_redrawn_at_most_every_redraw_interval_and_at_the_end(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(curves, "plot_curves", lambda runs, path: drawn.append(len(next(iter(runs.values())))))
    monkeypatch.setattr(curves, "REDRAW_SECONDS", 3600.0)
    log = MetricsLog(RunDirectory(tmp_path), resume_step=0)
    for step in range(1, 6):
        log.write({"step": step, "loss_d": 1.0})
    log.close()
    assert drawn == [1, 5]  # the first record, then the end; nothing in between within the hour
    monkeypatch.setattr(curves, "REDRAW_SECONDS", 0.0)
    log = MetricsLog(RunDirectory(tmp_path), resume_step=5)
    log.write({"step": 6, "loss_d": 1.0})
    log.write({"step": 7, "loss_d": 1.0})
    log.close()
    assert drawn[2:] == [6, 7]  # every log when allowed, and no extra drawing at the end
    assert (
        not MetricsLog(RunDirectory(tmp_path / "x"), resume_step=0, enabled=False).records
        and not (tmp_path / "x").exists()
    )  # other ranks write nothing
