"""fixed_pattern: how much of a set of images' edges sits at the same place in every image."""

import pytest
import torch

from tritonsagan.fixed_pattern import edge_maps, fixed_pattern
from tritonsagan.photo_match import reference_crops


@pytest.fixture(scope="module")
def crops():
    return reference_crops(136, seed=1, image_size=64)[0]


def with_frames(images: torch.Tensor, contrast: int) -> torch.Tensor:
    """The images with nested rectangles (at 8, 16 and 24 px from the border) darkened by `contrast`."""
    framed = images.to(torch.int32)
    for inset in (8, 16, 24):
        far = images.shape[-1] - 1 - inset
        for rows, cols in (
            (inset, slice(inset, far + 1)),
            (far, slice(inset, far + 1)),
            (slice(inset, far + 1), inset),
            (slice(inset, far + 1), far),
        ):
            framed[:, :, rows, cols] -= contrast
    return framed.clamp(0, 255).to(torch.uint8)


def test_edge_maps_equal_a_pixel_by_pixel_loop():
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = images.double().mean(1)
    expected = torch.empty(2, 3, 4, dtype=torch.float64)
    for n in range(2):
        for y in range(3):
            for x in range(4):
                expected[n, y, x] = abs(grey[n, y, x + 1] - grey[n, y, x]) + abs(grey[n, y + 1, x] - grey[n, y, x])
    assert torch.allclose(edge_maps(images), expected, rtol=0, atol=1e-12)


def test_real_crops_score_near_zero_and_frames_raise_the_score(crops):
    real = fixed_pattern(crops)
    scores = [fixed_pattern(with_frames(crops, contrast)) for contrast in (20, 40, 80)]
    assert real < 0.05
    assert 0.2 < scores[0] < scores[1] < scores[2]


def test_the_same_pattern_at_random_places_is_not_fixed(crops):
    framed = with_frames(crops, 80)
    shifts = torch.randint(0, 64, (len(crops), 2), generator=torch.Generator().manual_seed(0))
    moved = torch.stack([image.roll(tuple(shift.tolist()), dims=(1, 2)) for image, shift in zip(framed, shifts)])
    assert fixed_pattern(moved) < 0.1 < 0.5 < fixed_pattern(framed)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_independent_noise_scores_near_zero_at_any_count(n):
    # The mean edge map of n noise images varies by about 1/sqrt(n) of its mean; the chance term removes
    # that, leaving the noise of the variance estimate itself (about (2 / pixels)^(1/4) of it).
    noise = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    edges = edge_maps(noise).mean(0)
    uncorrected = float(edges.std() / edges.mean())
    assert uncorrected > 0.05
    assert fixed_pattern(noise) < 0.4 * uncorrected


def test_flat_images_score_zero():
    assert fixed_pattern(torch.full((3, 3, 8, 8), 128, dtype=torch.uint8)) == 0.0


@pytest.mark.parametrize(
    "images, message",
    [
        (
            torch.zeros(2, 3, 8, 8),
            "images must be uint8 (n, 3, height >= 2, width >= 2), got torch.float32 (2, 3, 8, 8)",
        ),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "got torch.uint8 (2, 1, 8, 8)"),
        (torch.zeros(2, 3, 1, 8, dtype=torch.uint8), "got torch.uint8 (2, 3, 1, 8)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "fixed_pattern needs at least 2 images, got 1"),
    ],
)
def test_bad_images_are_named(images, message):
    with pytest.raises(ValueError) as err:
        fixed_pattern(images)
    assert message in str(err.value)
