"""Packed datasets (tritonsagan-prepare) and the constant-cost folder stream: round trips, exact
resumes, disjoint ranks, uint8 batches, and a clear message for every kind of bad input."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import image_folder, write_image
from PIL import Image
from safetensors.torch import load_file

import tritonsagan.data.packed_writer as packed_module
from tritonsagan.checkpoint import latest_checkpoint
from tritonsagan.data import DataError, make_dataset
from tritonsagan.data.packed_reader import MANIFEST_NAME, PackedDataset, is_packed_dataset
from tritonsagan.data.packed_writer import PrepareConfig, prepare
from tritonsagan.data.packed_writer import main as prepare_main
from tritonsagan.train import main as train_main

TINY = [
    "--ch",
    "8",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--num-samples",
    "4",
    "--log-every",
    "2",
    "--sample-every",
    "2",
    "--save-every",
    "2",
    "--no-compile",
]


def test_prepare_writes_shards_labels_and_manifest(tmp_path, capsys):
    src = image_folder(tmp_path / "src")
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    truncated = tmp_path / "whole.jpg"
    write_image(truncated, 99)
    (src / "owls" / "cut.png").write_bytes(truncated.read_bytes()[:40])  # a truncated file
    assert prepare_main([str(src), str(tmp_path / "dest"), "--conditional", "--workers", "2"]) == 0
    assert "packed 12 128x128 images in 3 classes" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "dest" / MANIFEST_NAME).read_text())
    assert (
        manifest["complete"] and manifest["count"] == 12 and manifest["files"] == 14 and manifest["skipped_files"] == 2
    )
    assert manifest["classes"] == ["cats", "dogs", "owls"] and sorted(manifest["shards"][0]["skipped"]) == [
        "dogs/broken.jpg",
        "owls/cut.png",
    ]
    images = np.load(tmp_path / "dest" / "images_00000.npy")
    labels = np.load(tmp_path / "dest" / "labels_00000.npy")
    assert (
        images.dtype == np.uint8
        and images.shape == (12, 3, 128, 128)
        and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    )
    # The first image is src/cats/0.png, its central square resized to 128 (the default crop).
    with Image.open(src / "cats" / "0.png") as photo:
        expected = np.asarray(
            photo.convert("RGB").resize((128, 128), Image.Resampling.BICUBIC, box=(5, 0, 55, 50), reducing_gap=3.0)
        )
    assert np.array_equal(images[0], expected.transpose(2, 0, 1))
    assert is_packed_dataset(tmp_path / "dest") and not is_packed_dataset(src)


def test_an_interrupted_packing_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src", per_class=5)
    monkeypatch.setattr(packed_module, "SHARD_FILES", 4)  # 15 files: four shards
    prepare(PrepareConfig(src=src, dest=tmp_path / "straight", conditional=True), progress=False)
    real_write = packed_module._write_manifest

    def killed_after_two_shards(dest, manifest, shards, complete):
        real_write(dest, manifest, shards, complete)
        if len(shards) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(packed_module, "_write_manifest", killed_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(src=src, dest=tmp_path / "resumed", conditional=True), progress=False)
    with pytest.raises(DataError, match="packing was interrupted .* run tritonsagan-prepare again"):
        PackedDataset(tmp_path / "resumed", seed=0)
    monkeypatch.setattr(packed_module, "_write_manifest", real_write)
    manifest = prepare(PrepareConfig(src=src, dest=tmp_path / "resumed", conditional=True), progress=False)
    assert manifest["complete"] and len(manifest["shards"]) == 4 and manifest["count"] == 15
    for name in [f"{kind}_{i:05d}.npy" for kind in ("images", "labels") for i in range(4)]:
        assert np.array_equal(np.load(tmp_path / "straight" / name), np.load(tmp_path / "resumed" / name)), name
    assert not list((tmp_path / "resumed").glob("*.tmp"))


@pytest.mark.parametrize("conditional", [True, False])
def test_prepare_then_train_and_resume_exactly(tmp_path, conditional):
    src = image_folder(tmp_path / "src")
    prepare(PrepareConfig(src=src, dest=tmp_path / "dest", conditional=conditional), progress=False)
    flags = ["--data", str(tmp_path / "dest"), *(["--conditional"] if conditional else []), *TINY]
    assert train_main(["--out", str(tmp_path / "straight"), "--steps", "4", *flags]) == 0
    assert train_main(["--out", str(tmp_path / "split"), "--steps", "2", *flags]) == 0
    assert train_main(["--out", str(tmp_path / "split"), "--steps", "4", *flags]) == 0
    straight, split = (load_file(latest_checkpoint(tmp_path / run / "checkpoints")) for run in ("straight", "split"))
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["diffaug"] == ""  # a packed dataset is a folder's images: no augmentation by default
    assert ("G_ema.blocks.0.bn1.gamma.weight" in straight) == conditional


def test_packed_stream_is_deterministic_flips_and_covers_each_image_once_per_epoch(tmp_path):
    prepare(PrepareConfig(src=image_folder(tmp_path / "src"), dest=tmp_path / "dest", conditional=True), progress=False)
    dataset = make_dataset(str(tmp_path / "dest"), seed=3, conditional=True)
    assert isinstance(dataset, PackedDataset) and dataset.classes == ["cats", "dogs", "owls"] and len(dataset) == 12
    stored = torch.from_numpy(np.load(tmp_path / "dest" / "images_00000.npy"))
    for epoch in range(2):
        seen, flips = [], 0
        for index in range(epoch * 12, epoch * 12 + 12):
            image, label, skipped = dataset[index]
            assert image.dtype == torch.uint8 and skipped == 0
            matches = [i for i in range(12) if torch.equal(image, stored[i]) or torch.equal(image, stored[i].flip(-1))]
            assert len(matches) == 1 and label == matches[0] // 4
            seen.append(matches[0])
            flips += not torch.equal(image, stored[matches[0]])
        assert sorted(seen) == list(range(12)) and 0 < flips < 12
    again = PackedDataset(tmp_path / "dest", seed=3)
    assert all(torch.equal(again[i][0], dataset[i][0]) for i in range(30))
    assert not all(torch.equal(PackedDataset(tmp_path / "dest", seed=4)[i][0], dataset[i][0]) for i in range(12))


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, conditional, match",
    [
        (lambda root: root.mkdir(), False, "no image files"),
        (lambda root: (root.mkdir(), (root / "notes.txt").write_text("x")), False, "no image files"),
        (
            lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"junk")),
            False,
            "none of the 1 image files is usable",
        ),
        (
            lambda root: (image_folder(root), (root / "empty").mkdir()),
            True,
            r"no usable image in 1 class folder: empty \(no image files\)",
        ),
    ],
)
def test_unusable_sources(tmp_path, capsys, make, conditional, match):
    make(tmp_path / "src")
    assert prepare_main([str(tmp_path / "src"), str(tmp_path / "dest"), *(["--conditional"] * conditional)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "dest").exists()


def test_dest_that_is_something_else(tmp_path, capsys):
    src = image_folder(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("keep me")
    assert prepare_main([str(src), str(tmp_path / "busy")]) == 1
    assert "is not empty and is not a packed dataset" in capsys.readouterr().err
    assert (tmp_path / "busy" / "thesis.tex").read_text() == "keep me"
    prepare(PrepareConfig(src=src, dest=tmp_path / "dest"), progress=False)
    other = image_folder(tmp_path / "other", classes=("x",))
    assert prepare_main([str(other), str(tmp_path / "dest")]) == 1
    err = capsys.readouterr().err
    assert f"holds a packed dataset of {src.resolve()} that differs in source" in err and "choose another DEST" in err


def test_damaged_packed_datasets_are_named(tmp_path):
    prepare(PrepareConfig(src=image_folder(tmp_path / "src"), dest=tmp_path / "dest", conditional=True), progress=False)

    def damaged(how):
        copy = tmp_path / how
        shutil.copytree(tmp_path / "dest", copy)
        return copy

    truncated = damaged("truncated")
    data = (truncated / "images_00000.npy").read_bytes()
    (truncated / "images_00000.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"images_00000\.npy: truncated or damaged shard"):
        PackedDataset(truncated, seed=0)
    deleted = damaged("deleted")
    (deleted / "labels_00000.npy").unlink()
    with pytest.raises(DataError, match=r"labels_00000\.npy: shard file missing"):
        PackedDataset(deleted, seed=0)
    mismatched = damaged("mismatched")
    manifest = json.loads((mismatched / MANIFEST_NAME).read_text())
    manifest["shards"][0]["count"] = 13
    (mismatched / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(
        DataError, match=r"holds uint8 \(12, 3, 128, 128\), the manifest says uint8 \(13, 3, 128, 128\)"
    ):
        PackedDataset(mismatched, seed=0)
    prepare(PrepareConfig(src=image_folder(tmp_path / "plain_src"), dest=tmp_path / "plain"), progress=False)
    with pytest.raises(DataError, match="packed without --conditional"):
        PackedDataset(tmp_path / "plain", seed=0, conditional=True)
    train_args = ["--data", str(truncated), "--out", str(tmp_path / "run"), "--steps", "1", *TINY]
    assert train_main(train_args) == 1


def _edit_manifest(dest, edit) -> None:
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    edit(manifest)
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda dest: _edit_manifest(dest, lambda m: m.update(classes=m["classes"] + ["ghosts"])),
            "1 class\\(es\\) of the manifest have no images: ghosts",
        ),
        (
            lambda dest: _edit_manifest(dest, lambda m: m.update(classes=m["classes"][:2])),
            "labels 0..2, the manifest lists 2 classes",
        ),
        (lambda dest: _edit_manifest(dest, lambda m: m.pop("shards")), "damaged or hand-edited manifest: no shards"),
        (lambda dest: _edit_manifest(dest, lambda m: m["shards"][0].pop("count")), "no shards\\[0\\].count"),
        (lambda dest: (dest / MANIFEST_NAME).write_text("{ not json"), "manifest.json: not valid JSON"),
    ],
)
def test_a_damaged_or_hand_edited_manifest_is_named(tmp_path, capsys, damage, message):
    dest = tmp_path / "dest"
    prepare(PrepareConfig(src=image_folder(tmp_path / "src"), dest=dest, conditional=True), progress=False)
    damage(dest)
    with pytest.raises(DataError, match=message):
        make_dataset(str(dest), seed=0, conditional=True)
    assert (
        train_main(["--data", str(dest), "--conditional", "--out", str(tmp_path / "run"), "--steps", "1", *TINY]) == 1
    )
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "run").exists()
