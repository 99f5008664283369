"""save_pretrained / from_pretrained: exact round trips and a clear error for every kind of bad file."""

import json
import pickle

import pytest
import torch
from tritonsagan.models import Discriminator, Generator

from tritonsagan import WeightsError

CH = 8


def _trained_a_little(model, *inputs):
    model(*inputs)  # one training-mode forward moves BN statistics and SN vectors off their start
    return model.eval()


def test_generator_round_trip_is_exact(tmp_path):
    G = _trained_a_little(Generator(ch=CH, num_classes=3), torch.randn(4, 128), torch.tensor([0, 1, 2, 0]))
    G.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Generator.from_pretrained(tmp_path / "g").eval()
    assert loaded.config == G.config
    z, y = torch.randn(2, 128), torch.tensor([2, 1])
    with torch.no_grad():
        assert torch.equal(loaded(z, y), G(z, y))
    for (name, a), b in zip(G.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_discriminator_round_trip_from_the_file_alone(tmp_path):
    D = _trained_a_little(
        Discriminator(ch=CH, num_classes=5, attn_res=64), torch.randn(2, 3, 128, 128), torch.tensor([4, 0])
    )
    D.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()  # the config also lives in the safetensors metadata
    loaded = Discriminator.from_pretrained(tmp_path / "model.safetensors").eval()
    x, y = torch.randn(2, 3, 128, 128), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(loaded(x, y), D(x, y))


@pytest.fixture
def saved_generator(tmp_path):
    Generator(ch=CH).save_pretrained(tmp_path)
    return tmp_path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        Generator.from_pretrained(tmp_path / "nowhere")


def test_truncated_file(saved_generator):
    path = saved_generator / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="model.safetensors: truncated"):
        Generator.from_pretrained(saved_generator)


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({"weight": [1.0, 2.0]}),  # a pickle: never unpickled
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
        b"abc",
    ],
)
def test_foreign_file(saved_generator, content):
    (saved_generator / "model.safetensors").write_bytes(content)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        Generator.from_pretrained(saved_generator)


def test_wrong_model_type(saved_generator):
    with pytest.raises(WeightsError, match="holds a Generator, not a Discriminator"):
        Discriminator.from_pretrained(saved_generator)


def test_config_weights_mismatch_names_the_keys(saved_generator):
    config = json.loads((saved_generator / "config.json").read_text())
    config["ch"] = 16
    (saved_generator / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        WeightsError, match=r"shape mismatch: attention\.g\.weight \(16, 32, 1, 1\) vs model \(32, 64, 1, 1\)"
    ):
        Generator.from_pretrained(saved_generator)

    config["ch"], config["num_classes"] = CH, 4
    (saved_generator / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.0\.bn1\.beta\.weight"):
        Generator.from_pretrained(saved_generator)


def test_unknown_config_field(saved_generator):
    config = json.loads((saved_generator / "config.json").read_text())
    config["depth"] = 3
    (saved_generator / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="config does not fit Generator"):
        Generator.from_pretrained(saved_generator)
