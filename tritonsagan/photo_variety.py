"""Does a generator trained class-conditionally on the built-in photos draw each photo the many ways
training showed it, or one way whatever the latent?

Training shows each photo as random crops of every size and place, flipped half of the time, so
real crops of one photo differ a lot from each other. A class that has collapsed onto one crop still
matches its photo (photo_match) while drawing the same image for every latent. A class's variety is
the pixel spread of its generated images (the standard deviation over images, averaged over pixels
and channels) over that of real crops of its photo: about 1 for real crops, 0 for one image repeated.
"""

from __future__ import annotations

import torch

from tritonsagan.models import Generator
from tritonsagan.models.config import IMAGE_SIZE

from .photo_match import images_per_photo, reference_crops

IMAGES_PER_CLASS = 32


def pixel_spread(images: torch.Tensor) -> float:
    """The standard deviation over uint8 images (n, 3, height, width), n >= 2, averaged over pixels and channels."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or len(images) < 2:
        raise ValueError(
            f"images must be at least 2 uint8 (n, 3, height, width), got {images.dtype} {tuple(images.shape)}"
        )
    return float(images.to(torch.float64).std(0).mean())


def photo_variety(
    images: torch.Tensor, labels: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None
) -> dict:
    """Each photo's pixel spread of `images` (labelled with photo indices, at least 2 of each photo
    present) over that of its reference crops, and their mean: {"variety": float, "per_photo": {name:
    ratio}, "images": n}. The reference defaults to crops of the images' size."""
    crops, crop_labels, names = reference or reference_crops(
        image_size=images.shape[-1] if images.dim() == 4 else IMAGE_SIZE
    )
    if labels.shape != (len(images),) or labels.dtype == torch.bool or labels.is_floating_point():
        raise ValueError(
            f"labels must be {len(images)} integer photo indices, got {labels.dtype} {tuple(labels.shape)}"
        )
    present = labels.unique().tolist()
    if not all(0 <= k < len(names) for k in present):
        raise ValueError(f"labels must be photo indices 0..{len(names) - 1}, got {present}")
    single = [names[k] for k in present if int((labels == k).sum()) < 2]
    if single:
        raise ValueError(f"a photo's spread needs at least 2 of its images; one image of: {', '.join(single)}")
    per_photo = {names[k]: pixel_spread(images[labels == k]) / pixel_spread(crops[crop_labels == k]) for k in present}
    return {"variety": sum(per_photo.values()) / len(per_photo), "per_photo": per_photo, "images": len(images)}


def generator_photo_variety(
    generator: Generator,
    per_class: int = IMAGES_PER_CLASS,
    seed: int = 0,
    reference: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None,
) -> dict:
    """photo_variety of `per_class` images of every class of a generator trained on `--data builtin
    --conditional`, against `reference` (default: crops of its size)."""
    reference = reference or reference_crops(image_size=generator.config.image_size)
    return photo_variety(*images_per_photo(generator, len(reference[2]), per_class, seed), reference)
