"""photo_variety: whether a builtin-photos generator draws each photo many ways or one."""

import pytest
import torch
from helpers import SMALL_GENERATOR
from tritonsagan.models import Generator

from tritonsagan.photo_match import reference_crops
from tritonsagan.photo_variety import generator_photo_variety, photo_variety, pixel_spread


@pytest.fixture(scope="module")
def reference():
    return reference_crops(image_size=32)


def test_pixel_spread_is_the_mean_standard_deviation_over_images():
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = images.double().numpy().std(0, ddof=1).mean()
    assert pixel_spread(images) == pytest.approx(expected, rel=1e-12)
    assert pixel_spread(images[:1].expand(4, -1, -1, -1)) == 0.0


def test_real_crops_score_about_one_and_one_crop_repeated_zero(reference):
    crops, labels, names = reference_crops(510, seed=2, image_size=32)
    fresh = photo_variety(crops, labels, reference)
    assert fresh["images"] == 510 and sorted(fresh["per_photo"]) == sorted(names)
    assert 0.85 <= fresh["variety"] <= 1.15 and all(0.6 <= v <= 1.5 for v in fresh["per_photo"].values())
    # every image of a photo replaced by its first: the class drawn one way
    first = torch.stack([crops[(labels == labels[i]).nonzero()[0, 0]] for i in range(len(crops))])
    collapsed = photo_variety(first, labels, reference)
    assert collapsed["variety"] == 0.0 and set(collapsed["per_photo"].values()) == {0.0}
    # half of each photo's images copies of one: the spread falls, not to 0
    half = torch.where((torch.arange(len(crops)) % 2 == 0)[:, None, None, None], first, crops)
    assert 0.2 < photo_variety(half, labels, reference)["variety"] < fresh["variety"]


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            torch.zeros(2, 3, 8, 8),
            torch.tensor([0, 0]),
            "images must be at least 2 uint8 (n, 3, height, width), got torch.float32",
        ),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0]), "labels must be 2 integer photo indices"),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            torch.tensor([0.0, 0.0]),
            "labels must be 2 integer photo indices, got torch.float32",
        ),
        (
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            torch.tensor([17, 17]),
            "labels must be photo indices 0..16, got [17]",
        ),
        (torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 5]), "one image of: clock_motion"),
    ],
)
def test_bad_input_is_named(reference, images, labels, message):
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        photo_variety(images, labels, reference)


def test_a_generator_is_scored_per_photo():
    torch.manual_seed(0)
    G = Generator(ch=8, num_classes=17, image_size=32, attn_res=16)
    variety = generator_photo_variety(G, per_class=3)
    assert variety["images"] == 51 and len(variety["per_photo"]) == 17 and variety["variety"] > 0
    assert variety == generator_photo_variety(G, per_class=3)  # a pure function of the weights and the seed
    with pytest.raises(
        ValueError, match="the generator has 3 classes; trained on the built-in photos it has one per photo, 17"
    ):
        generator_photo_variety(Generator(**SMALL_GENERATOR))
