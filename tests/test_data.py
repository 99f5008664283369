"""The training-data sources and their loader: folder images of every mode, the built-in photos, the
crop, determinism per sample index, disjoint ranks, uint8 batches, and the contract they share."""

import os
import sys

import numpy as np
import pytest
import torch
from helpers import image_folder, write_image
from PIL import Image

from tritonsagan.data import DataError, ImageLimits, ImageStream, make_dataset, make_loader
from tritonsagan.data.builtin import BuiltinPhotoStream
from tritonsagan.data.decode import load_rgb, resize_and_crop, short_side_crop
from tritonsagan.data.folder import ImageFolderStream
from tritonsagan.data.loader import StreamBatchSampler
from tritonsagan.data.packed_reader import PackedDataset
from tritonsagan.data.packed_writer import PrepareConfig, prepare


def test_image_folder_with_corrupt_non_image_grayscale_and_rgba_files(tmp_path):
    root = tmp_path / "images"
    write_image(root / "cats" / "gray.png", 1, size=(150, 140), mode="L")
    write_image(root / "cats" / "nested" / "rgba.png", 2, size=(150, 140), mode="RGBA")
    write_image(root / "dogs" / "rgb.jpg", 3, size=(300, 129))
    write_image(root / "dogs" / "small.webp", 4, size=(60, 90))
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image")
    dataset = ImageFolderStream(root, seed=0, conditional=True)
    assert dataset.classes == ["cats", "dogs"] and len(dataset) == 5  # notes.txt is not an image file
    skipped = 0
    for index in range(3 * len(dataset)):  # three epochs: every file is visited
        image, label, n_skipped = dataset[index]
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8  # converted to [-1, 1] on the device
        skipped += n_skipped
    assert skipped == 3  # the corrupt file, once per epoch, skipped instead of crashing
    assert torch.equal(dataset[7][0], dataset[7][0])  # a pure function of the index
    _, _, batch_skipped = next(iter(make_loader(dataset, 5, 0, workers=0)))
    assert int(batch_skipped.sum()) == 1  # one epoch in one batch: the corrupt file once


def test_conditional_folder_without_class_folders(tmp_path):
    write_image(tmp_path / "a.png", 0)
    with pytest.raises(DataError, match="one sub-folder per class"):
        ImageFolderStream(tmp_path, seed=0, conditional=True)


def test_builtin_stream_is_offline_real_and_deterministic(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the builtin data touched the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    dataset = BuiltinPhotoStream(seed=3)
    images = [dataset[i] for i in range(20)]
    assert all(img.shape == (3, 128, 128) and img.dtype == torch.uint8 for img, _, _ in images)
    assert len({label for _, label, _ in images}) > 5
    assert float(images[0][0].float().std()) > 2.5  # a real photo crop, not a constant
    assert torch.equal(BuiltinPhotoStream(seed=3)[5][0], images[5][0])
    assert not torch.equal(BuiltinPhotoStream(seed=4)[5][0], images[5][0])


def test_short_side_crop_centres_or_draws_inside_the_resized_image(tmp_path):
    write_image(tmp_path / "wide.png", 0, size=(300, 129))
    image = load_rgb(tmp_path / "wide.png")
    resized = image.resize((298, 128), Image.Resampling.BICUBIC, reducing_gap=3.0)  # shorter side to 128
    centre = short_side_crop(image, 128)
    assert centre.size == (128, 128) and np.array_equal(np.asarray(centre), np.asarray(resized)[:, 85:213])
    lefts = set()
    for seed in range(20):
        crop = np.asarray(short_side_crop(image, 128, np.random.default_rng(seed)))
        left = [x for x in range(298 - 127) if np.array_equal(crop, np.asarray(resized)[:, x : x + 128])]
        assert len(left) == 1
        lefts.add(left[0])
    assert len(lefts) > 10  # positions drawn across the spare width
    flipped = [resize_and_crop(image, 128, np.random.default_rng(seed), random_crop=False) for seed in range(20)]
    kinds = {"same" if np.array_equal(np.asarray(f), np.asarray(centre)) else "flipped" for f in flipped}
    assert kinds == {"same", "flipped"} and all(
        np.array_equal(np.asarray(f), np.asarray(centre)) or np.array_equal(np.asarray(f), np.asarray(centre)[:, ::-1])
        for f in flipped
    )


def test_every_source_keeps_the_stream_contract(tmp_path):
    image_folder(tmp_path / "src")
    prepare(PrepareConfig(src=tmp_path / "src", dest=tmp_path / "packed", conditional=True), progress=False)
    for data in (str(tmp_path / "src"), str(tmp_path / "packed"), "builtin"):
        dataset = make_dataset(data, seed=0, conditional=True)
        assert (
            isinstance(dataset, ImageStream)
            and dataset.num_classes == len(dataset.classes) > 0
            and data in dataset.name
        )
        image, label, skipped = dataset[len(dataset) + 3]  # past the first epoch
        assert (
            image.shape == (3, 128, 128)
            and image.dtype == torch.uint8
            and 0 <= label < dataset.num_classes
            and skipped == 0
        )
    # A batch of repeating samples needs that many images; fresh random crops need none.
    with pytest.raises(DataError, match=r"src: 12 images, fewer than one batch of 13"):
        make_loader(make_dataset(str(tmp_path / "src"), 0, conditional=True), 13, 0, workers=0)
    builtin = make_dataset("builtin", 0, conditional=True)
    images, _, _ = next(iter(make_loader(builtin, len(builtin) + 7, 0, workers=0)))
    assert images.shape[0] == len(builtin) + 7


def test_ranks_read_disjoint_samples(tmp_path):
    prepare(PrepareConfig(src=image_folder(tmp_path / "src", per_class=8), dest=tmp_path / "dest"), progress=False)
    dataset = PackedDataset(tmp_path / "dest", seed=0)  # 24 images
    items = {}
    for rank in range(2):
        batches = iter(StreamBatchSampler(batch_size=4, rank=rank, world_size=2))
        indices = [i for _ in range(3) for i in next(batches)]  # 2 ranks x 3 batches x 4 = one epoch
        items[rank] = {int(dataset.order(0)[i]) for i in indices}
    assert items[0].isdisjoint(items[1]) and items[0] | items[1] == set(range(24))


def test_batches_are_uint8_until_the_device(tmp_path):
    image_folder(tmp_path / "src")
    for data in (str(tmp_path / "src"), "builtin"):
        images, labels, skipped = next(iter(make_loader(make_dataset(data, 0, conditional=True), 4, 0, workers=0)))
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 128, 128)


def test_folder_stream_order_equals_the_slow_reference_and_covers_each_file_once(tmp_path):
    for i in range(7):
        write_image(tmp_path / f"{i}.png", i)
    dataset = ImageFolderStream(tmp_path, seed=5)
    for epoch in range(3):
        slow = np.random.default_rng([5, epoch, 7]).permutation(7)  # the definition, recomputed per sample before
        assert np.array_equal(dataset.order(epoch), slow)
        assert sorted(dataset.order(epoch).tolist()) == list(range(7))
    first = [dataset[i][0] for i in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(first, (ImageFolderStream(tmp_path, seed=5)[i][0] for i in range(7))))


# ---- high bit depths, sizes, names (issue 22) -------------------------------------------------------


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path):
    """A 16-bit gradient PNG: Pillow's own conversion clips it at 255 (mean 254.5, nearly white)."""
    gradient = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    image = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert image.shape == (128, 128, 3) and abs(image.mean() - 127.5) < 0.5
    assert np.array_equal(image[..., 0], np.round(gradient / 257).astype(np.uint8))
    dataset = ImageFolderStream(tmp_path, seed=0, random_crop=False)  # folder training reads it the same way
    assert abs(dataset[0][0].float().mean().item() - 127.5) < 1.0


def test_tiny_and_elongated_images_are_skipped_and_counted(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"photo{i}.png", i, size=(160, 130))
    write_image(tmp_path / "dot.png", 7, size=(1, 1))
    write_image(tmp_path / "strip.png", 8, size=(5000, 10))
    write_image(tmp_path / "wide.png", 9, size=(600, 128))  # aspect 4.7
    dataset = ImageFolderStream(tmp_path, seed=0)
    assert len(dataset) == 6 and sum(dataset[i][2] for i in range(6 * 4)) > 0  # skipped in every epoch
    assert all(dataset[i][0].float().std() > 0 for i in range(12))  # never a flat tile upscaled from a dot
    manifest = prepare(PrepareConfig(src=tmp_path, dest=tmp_path.parent / "packed"), progress=False)
    skipped = manifest["shards"][0]["skipped"]
    assert manifest["count"] == 3 and skipped == {
        "dot.png": "1x1 px, shorter side below 32",
        "strip.png": "5000x10 px, shorter side below 32",
        "wide.png": "600x128 px, aspect ratio above 4",
    }
    loose = ImageLimits(min_side=1, max_aspect_ratio=5000)
    assert (
        prepare(
            PrepareConfig(
                src=tmp_path,
                dest=tmp_path.parent / "loose",
                min_image_side=loose.min_side,
                max_aspect_ratio=loose.max_aspect_ratio,
            ),
            progress=False,
        )["count"]
        == 6
    )
    with pytest.raises(DataError, match="--min-image-side must be >= 1"):
        ImageLimits(min_side=0)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a file name that is not UTF-8 needs a byte-named file system"
)
def test_a_file_name_that_is_not_utf8_is_left_out_and_listed(tmp_path, capsys):
    image_folder(tmp_path / "src", classes=("cats",), per_class=3)
    write_image(tmp_path / "good.png", 5)
    os.rename(tmp_path / "good.png", os.fsencode(tmp_path / "src" / "cats") + b"/caf\xe9.png")
    manifest = prepare(PrepareConfig(src=tmp_path / "src", dest=tmp_path / "packed"), progress=False)
    assert manifest["count"] == 3 and manifest["undecodable_names"] == ["cats/caf\\xe9.png"]
    assert "left out 1 file(s) whose names are not valid UTF-8" in capsys.readouterr().err
    assert len(ImageFolderStream(tmp_path / "src", seed=0)) == 3
