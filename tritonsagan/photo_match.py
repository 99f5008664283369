"""Does a generator trained class-conditionally on the built-in photos draw each photo for its class?

Each image is matched to the photo whose crops (`BuiltinPhotoStream`, as in training) lie nearest to
it in colour: an 8-bin histogram of each RGB channel. That is cheap and tells the photos apart:
fresh real crops are matched to their own photo 94% of the time (`fresh_crops_photo_match`; chance
is 1 in 17). The motorcycle pair (motorcycle_left, motorcycle_right) is one scene seen by the two
cameras of a stereo rig, so each is taken for the other about a third of the time, by this check and
by any other.
"""

from __future__ import annotations

import torch

from tritonsagan.models import Generator
from tritonsagan.models.config import IMAGE_SIZE

from .data.builtin import BuiltinPhotoStream
from .generate import generate

HISTOGRAM_BINS = 8
REFERENCE_CROPS = 1700  # about 100 per photo
REFERENCE_SEED = 0  # the training stream's default seed; the images matched are never these crops
IMAGES_PER_CLASS = 8
FRESH_CROPS, FRESH_SEED = 500, 1  # real crops the reference has not seen: what a perfect generator would score


def colour_histograms(images: torch.Tensor) -> torch.Tensor:
    """(n, 3 * HISTOGRAM_BINS) float64: each channel's share of pixels in each of 8 equal bins of 0..255."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (n, 3, height, width), got {images.dtype} {tuple(images.shape)}")
    n, channels, height, width = images.shape
    bins = images.long() * HISTOGRAM_BINS // 256 + torch.arange(channels)[:, None, None] * HISTOGRAM_BINS
    counts = torch.zeros(n, channels * HISTOGRAM_BINS, dtype=torch.float64)
    counts.scatter_add_(1, bins.flatten(1), torch.ones(n, channels * height * width, dtype=torch.float64))
    return counts / (height * width)


def reference_crops(
    n: int = REFERENCE_CROPS, seed: int = REFERENCE_SEED, image_size: int = IMAGE_SIZE
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n crops of the built-in photos as training at image_size draws them: uint8 images, their photo
    index, the photo names."""
    stream = BuiltinPhotoStream(seed, image_size=image_size)
    items = [stream[i] for i in range(n)]
    return torch.stack([image for image, _, _ in items]), torch.tensor([label for _, label, _ in items]), stream.classes


def photo_match(
    images: torch.Tensor, labels: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
) -> dict:
    """The share of `images` whose nearest reference crop (in colour) is of photo `labels[i]`, overall
    and per photo: {"accuracy": float, "per_photo": {name: share}, "images": n}. The reference
    defaults to crops of the images' size."""
    crops, crop_labels, names = reference or reference_crops(
        image_size=images.shape[-1] if images.dim() == 4 else IMAGE_SIZE
    )
    if labels.shape != (len(images),) or labels.dtype == torch.bool or labels.is_floating_point():
        raise ValueError(
            f"labels must be {len(images)} integer class indices, got {labels.dtype} {tuple(labels.shape)}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(names):
        raise ValueError(
            f"labels must be photo indices 0..{len(names) - 1}, got {int(labels.min())}..{int(labels.max())}"
        )
    nearest = torch.cdist(colour_histograms(images), colour_histograms(crops)).argmin(1)
    matched = (crop_labels[nearest] == labels).double()
    per_photo = {name: float(matched[labels == k].mean()) for k, name in enumerate(names) if (labels == k).any()}
    return {"accuracy": float(matched.mean()), "per_photo": per_photo, "images": len(images)}


def fresh_crops_photo_match(reference: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None) -> dict:
    """photo_match of real crops the reference has not seen (of the reference's size; default 128):
    the score a generator's is read against."""
    image_size = reference[0].shape[-1] if reference is not None else IMAGE_SIZE
    crops, labels, _ = reference_crops(FRESH_CROPS, FRESH_SEED, image_size)
    return photo_match(crops, labels, reference)


@torch.inference_mode()
def generated_photo_match(
    generator: Generator,
    reference: tuple[torch.Tensor, torch.Tensor, list[str]],
    per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
) -> dict:
    """photo_match of `per_class` images of every class of a generator trained on `--data builtin
    --conditional`, against `reference` (crops of its size)."""
    return photo_match(*images_per_photo(generator, len(reference[2]), per_class, seed), reference)


def images_per_photo(generator: Generator, photos: int, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` uint8 images of every class of a generator trained on `--data builtin
    --conditional` (one class per photo), and their class indices."""
    if generator.config.num_classes != photos:
        raise ValueError(
            f"the generator has {generator.config.num_classes} classes; trained on the built-in photos it has one per photo, {photos}"
        )
    classes = list(range(photos))
    return generate(generator, per_class * photos, classes=classes, seed=seed), torch.arange(photos).repeat_interleave(
        per_class
    )


def generator_photo_match(
    generator: Generator,
    per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
    reference: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None,
) -> dict:
    """`generated_photo_match` against `reference` (default: crops of the generator's size) with that of
    fresh real crops beside it ("fresh_crops")."""
    reference = reference or reference_crops(image_size=generator.config.image_size)
    match = generated_photo_match(generator, reference, per_class, seed)
    return {**match, "fresh_crops": fresh_crops_photo_match(reference)["accuracy"]}
