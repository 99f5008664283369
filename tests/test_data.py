"""The training-data sources and their loader: folder images of every mode, the built-in photos, the
crop, determinism per sample index, disjoint ranks, uint8 batches, and the contract they share."""

import numpy as np
import pytest
import torch
from PIL import Image

from tritonsagan.data import BuiltinPhotoStream, DataError, ImageFolderStream, ImageStream, load_rgb, resize_and_crop, short_side_crop
from tritonsagan.loader import StreamBatchSampler, make_dataset, make_loader
from tritonsagan.packed import PackedDataset, prepare
from helpers import image_folder, write_image


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
    centre = short_side_crop(image)
    assert centre.size == (128, 128) and np.array_equal(np.asarray(centre), np.asarray(resized)[:, 85:213])
    lefts = set()
    for seed in range(20):
        crop = np.asarray(short_side_crop(image, np.random.default_rng(seed)))
        left = [x for x in range(298 - 127) if np.array_equal(crop, np.asarray(resized)[:, x : x + 128])]
        assert len(left) == 1
        lefts.add(left[0])
    assert len(lefts) > 10  # positions drawn across the spare width
    flipped = [resize_and_crop(image, np.random.default_rng(seed), random_crop=False) for seed in range(20)]
    kinds = {"same" if np.array_equal(np.asarray(f), np.asarray(centre)) else "flipped" for f in flipped}
    assert kinds == {"same", "flipped"} and all(
        np.array_equal(np.asarray(f), np.asarray(centre)) or np.array_equal(np.asarray(f), np.asarray(centre)[:, ::-1]) for f in flipped
    )


def test_every_source_keeps_the_stream_contract(tmp_path):
    image_folder(tmp_path / "src")
    prepare(tmp_path / "src", tmp_path / "packed", conditional=True, progress=False)
    for data in (str(tmp_path / "src"), str(tmp_path / "packed"), "builtin"):
        dataset = make_dataset(data, seed=0, conditional=True)
        assert isinstance(dataset, ImageStream) and dataset.num_classes == len(dataset.classes) > 0 and data in dataset.name
        image, label, skipped = dataset[len(dataset) + 3]  # past the first epoch
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and 0 <= label < dataset.num_classes and skipped == 0
    # A batch of repeating samples needs that many images; fresh random crops need none.
    with pytest.raises(DataError, match=r"src: 12 images, fewer than one batch of 13"):
        make_loader(make_dataset(str(tmp_path / "src"), 0, conditional=True), 13, 0, workers=0)
    builtin = make_dataset("builtin", 0, conditional=True)
    images, _, _ = next(iter(make_loader(builtin, len(builtin) + 7, 0, workers=0)))
    assert images.shape[0] == len(builtin) + 7


def test_ranks_read_disjoint_samples(tmp_path):
    prepare(image_folder(tmp_path / "src", per_class=8), tmp_path / "dest", progress=False)
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
