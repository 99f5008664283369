"""photo_match: the colour check that a builtin-photos generator draws each class's photo."""

import numpy as np
import pytest
import torch
from tritonsagan.models import Generator

from tritonsagan.photo_match import (
    HISTOGRAM_BINS,
    colour_histograms,
    fresh_crops_photo_match,
    generator_photo_match,
    photo_match,
    reference_crops,
)


@pytest.fixture(scope="module")
def reference():
    return reference_crops()


def test_colour_histograms_equal_numpys(reference):
    images = torch.randint(0, 256, (5, 3, 7, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[0, :, 0, 0], images[1, :, 0, 0] = 0, 255  # both ends of the range
    expected = [
        np.concatenate([np.histogram(image[c].numpy(), bins=HISTOGRAM_BINS, range=(0, 256))[0] for c in range(3)])
        / (7 * 11)
        for image in images
    ]
    assert torch.equal(colour_histograms(images), torch.tensor(np.stack(expected)))


def test_real_crops_match_their_own_photo_and_not_anothers(reference):
    fresh = fresh_crops_photo_match(reference)
    assert fresh["accuracy"] >= 0.9 and fresh["images"] == 500 and len(fresh["per_photo"]) == 17
    crops, labels, _ = reference_crops(300, seed=2)
    assert photo_match(crops, labels, reference)["accuracy"] >= 0.9
    assert photo_match(crops, (labels + 1) % 17, reference)["accuracy"] <= 0.1  # each crop called the next photo


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            torch.zeros(2, 3, 8, 8),
            torch.tensor([0, 1]),
            "images must be uint8 (n, 3, height, width), got torch.float32",
        ),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), "got torch.uint8 (2, 1, 8, 8)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0]), "labels must be 2 integer class indices"),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            torch.tensor([0.0, 1.0]),
            "labels must be 2 integer class indices, got torch.float32",
        ),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            torch.tensor([0, 17]),
            "labels must be photo indices 0..16, got 0..17",
        ),
    ],
)
def test_bad_input_is_named(reference, images, labels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        photo_match(images, labels, reference)


def test_a_generator_is_scored_per_photo():
    torch.manual_seed(0)
    match = generator_photo_match(Generator(ch=8, num_classes=17), per_class=2)
    assert (
        match["images"] == 34
        and len(match["per_photo"]) == 17
        and 0 <= match["accuracy"] <= 1
        and match["fresh_crops"] >= 0.9
    )
    with pytest.raises(
        ValueError, match="the generator has 3 classes; trained on the built-in photos it has one per photo, 17"
    ):
        generator_photo_match(Generator(ch=8, num_classes=3))
