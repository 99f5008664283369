"""Images from a generator: `generate`, and tritonsagan-generate, which reads the weights with
`run_directory.load_generator` (safetensors only) and also draws attention maps (attention_figure)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonsagan.models import Generator

from .attention_figure import attention_figure, attention_maps, figure_to_array
from .cli import parse_int_list, resolve_device, run_command
from .config_flags import REQUIRED, add_config_argument, add_config_flags, build_config, config_field
from .images import image_format, make_grid, save_image, side_by_side, to_uint8
from .run_directory import load_generator
from .seeding import noise_inputs_seeded, stream_seed
from .shared_fields import classes_field, device_field, truncation_field
from .shipped import shipped_names

GENERATION_NOISE_STREAM = 19  # the last counter of generation's noise-input stream (tritonsagan.seeding)


def generation_noise_seed(seed: int, start: int = 0) -> int:
    """The seed of G's noise inputs for the batch of a generation from `seed` that starts at image `start`."""
    return stream_seed(seed, start, GENERATION_NOISE_STREAM)


def sample_latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """n standard-normal latents on the CPU (the same for a seed on every device).

    With `truncation` t, the normal truncated to [-t, t] (BigGAN's truncation trick), drawn exactly by
    inverting its CDF: any t > 0 works, where redrawing until every entry lies inside would never end
    for a tiny t. An infinite t is no truncation.
    """
    if truncation is not None and not truncation > 0:  # also refuses NaN
        raise ValueError(f"truncation must be a positive number, got {truncation}")
    gen = torch.Generator().manual_seed(seed)
    if truncation is None or math.isinf(truncation):
        return torch.randn(n, z_dim, generator=gen)
    u = torch.rand(n, z_dim, generator=gen, dtype=torch.float64)
    below = torch.special.ndtr(torch.tensor(-truncation, dtype=torch.float64))  # the mass below -t
    z = torch.special.ndtri(below + u * (1 - 2 * below))
    return z.clamp(-truncation, truncation).float()  # ndtri's last ulp may step outside


def class_labels(generator: Generator, n: int, classes: Sequence[int] | None, seed: int) -> torch.Tensor | None:
    """Labels for n images: None for an unconditional G, random for classes=None, else `classes` in
    equal consecutive blocks (e.g. classes [3, 7] and n=4 give 3, 3, 7, 7)."""
    num_classes = generator.config.num_classes
    if num_classes == 0:
        if classes:
            raise ValueError("this generator is unconditional (num_classes=0); do not pass classes")
        return None
    if not classes:
        return torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed + 1))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class index out of range: {bad} (this generator has classes 0..{num_classes - 1})")
    labels = torch.tensor(list(classes))
    return labels[torch.arange(n) * len(labels) // n]


@torch.inference_mode()
def iter_generate(
    generator: Generator, z: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 64, seed: int = 0
) -> Iterator[torch.Tensor]:
    """uint8 (b, 3, size, size) CPU batches for the given latents, `batch_size` at a time; noise
    inputs, where G has them, drawn from (seed, batch)."""
    generator.eval()
    param = next(generator.parameters())
    for start in range(0, len(z), batch_size):
        zb = z[start : start + batch_size].to(param.device, param.dtype)
        yb = None if labels is None else labels[start : start + batch_size].to(param.device)
        with noise_inputs_seeded(generator, generation_noise_seed(seed, start)):
            images = to_uint8(generator(zb, yb))
        yield images  # outside: the caller's draws between batches see the global RNG as it was


def generate_batches(
    generator: Generator,
    n: int,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
) -> Iterator[torch.Tensor]:
    """generate()'s images as uint8 batches, for n too large to hold at once."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    z = sample_latents(n, generator.config.z_dim, seed, truncation)
    return iter_generate(generator, z, class_labels(generator, n, classes, seed), batch_size, seed)


def generate(
    generator: Generator,
    n: int,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """n images as a uint8 tensor (n, 3, size, size), deterministic for a seed on a given device."""
    return torch.cat(list(generate_batches(generator, n, classes, seed, truncation, batch_size)))


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` latents on the great circle from a to b (rescaled), the usual walk for Gaussian latents."""
    t = torch.linspace(0, 1, steps)[:, None]
    omega = torch.arccos((F.normalize(a, dim=0) @ F.normalize(b, dim=0)).clamp(-1, 1))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


# ---- command line -------------------------------------------------------------------------------


def _point(text: str) -> tuple[int, int]:
    values = parse_int_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected x,y, got {text!r}")
    return values[0], values[1]


# Where the default query points lie, as fractions of the image side.
DEFAULT_QUERY_FRACTIONS = [(0.25, 0.25), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.75, 0.75)]


@dataclass(kw_only=True)
class GenerateConfig:
    """tritonsagan-generate's settings."""

    weights: list[str] = config_field(
        REQUIRED,
        "save_pretrained directory, model.safetensors, a training checkpoint, a run directory, or the name of shipped "
        f"weights ({', '.join(shipped_names()) or 'none in this installation'}); several: their grids side by side "
        "from the same latents",
        nargs="+",
        required=True,
    )
    n: int = config_field(64, "number of images")
    classes: list[int] | None = classes_field()
    class_per_row: bool = config_field(False, "one class per grid row (from --classes, else 0, 1, 2, ...)")
    seed: int = config_field(0, "seed of the latents and random classes")
    truncation: float | None = truncation_field()
    batch_size: int = config_field(64, "images per forward pass")
    device: str = device_field()
    interpolate: bool = config_field(False, "a grid walking z from --seed to --seed+1 in --n steps")
    attention_maps: bool = config_field(False, "the paper's figure: where G's attention looks from a few query points")
    queries: list[tuple[int, int]] | None = config_field(
        None,
        "query points x,y in image pixels for --attention-maps (default: five, at the centre and halfway to each corner)",
        parse=_point,
        nargs="+",
    )
    out: str | None = config_field(
        None, "write one grid here, in the format its extension names (.png, .jpg, .jpeg, .webp)", one_of="target"
    )
    out_dir: str | None = config_field(None, "write one PNG per image into this folder", one_of="target")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-generate", description="Generate images from SAGAN weights (safetensors only)."
    )
    add_config_argument(parser)
    add_config_flags(parser, GenerateConfig)
    return parser


def _latents_and_labels(cfg: GenerateConfig, G: Generator, columns: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """--interpolate: a walk from --seed's latent to --seed+1's in one class; else --n latents in the
    --classes (one class per grid row with --class-per-row)."""
    z_dim, num_classes = G.config.z_dim, G.config.num_classes
    if cfg.interpolate:
        a, b = (
            sample_latents(1, z_dim, cfg.seed, cfg.truncation)[0],
            sample_latents(1, z_dim, cfg.seed + 1, cfg.truncation)[0],
        )
        labels = class_labels(G, cfg.n, cfg.classes[:1] if cfg.classes else None, cfg.seed)
        return slerp(a, b, cfg.n), None if labels is None else labels[:1].expand(cfg.n)
    classes = cfg.classes
    if cfg.class_per_row:
        if num_classes == 0:
            raise ValueError("--class-per-row needs a conditional generator")
        row_classes = cfg.classes or list(range(num_classes))
        classes = [row_classes[(i // columns) % len(row_classes)] for i in range(cfg.n)]
    return sample_latents(cfg.n, z_dim, cfg.seed, cfg.truncation), class_labels(G, cfg.n, classes, cfg.seed)


def _write_attention_maps(cfg: GenerateConfig, G: Generator, z: torch.Tensor, labels: torch.Tensor | None) -> Path:
    size = G.config.image_size
    points = cfg.queries or [(round(fx * size), round(fy * size)) for fx, fy in DEFAULT_QUERY_FRACTIONS]
    if not all(0 <= x < size and 0 <= y < size for x, y in points):
        raise ValueError(f"--queries points must lie inside the {size}x{size} image")
    height = G.config.attn_res
    queries = [(y * height // size) * height + (x * height // size) for x, y in points]
    images, maps = attention_maps(G, z, labels, queries, generation_noise_seed(cfg.seed))  # the grid's first batch
    captions = None if labels is None else [f"class {int(label)}" for label in labels]
    out = Path(cfg.out) if cfg.out else Path(cfg.out_dir) / "attention_maps.png"
    save_image(figure_to_array(attention_figure(images, maps, points, captions)), out)
    return out


def _load_generators(cfg: GenerateConfig) -> list[Generator]:
    """Each --weights' generator; several must take the same latents and classes, for one grid each
    (of any image size: the grids stand side by side, tops aligned)."""
    if len(cfg.weights) > 1 and (cfg.out_dir or cfg.attention_maps):
        raise ValueError(
            "several --weights make their grids side by side in one --out; --out-dir and --attention-maps take one"
        )
    generators = [load_generator(weights, device=resolve_device(cfg.device)) for weights in cfg.weights]
    shapes = {weights: (G.config.z_dim, G.config.num_classes) for weights, G in zip(cfg.weights, generators)}
    if len(set(shapes.values())) > 1:
        described = "; ".join(
            f"{weights}: z_dim {z_dim}, {classes} classes" for weights, (z_dim, classes) in shapes.items()
        )
        raise ValueError(
            f"--weights side by side must share z_dim and classes, to draw from the same latents in one grid: {described}"
        )
    return generators


def run_generation(cfg: GenerateConfig) -> str:
    """tritonsagan-generate: a grid, one PNG per image, or the attention figure; the path written."""
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ValueError("--n and --batch-size must be positive")
    if cfg.out:
        image_format(cfg.out)  # an --out whose format cannot be told stops here, before any work
    generators = _load_generators(cfg)
    columns = min(cfg.n, 16 if cfg.interpolate else 8)
    z, labels = _latents_and_labels(cfg, generators[0], columns)
    if cfg.attention_maps:
        return str(_write_attention_maps(cfg, generators[0], z, labels))
    from rich.progress import track

    def batches(G: Generator) -> Iterator[torch.Tensor]:
        return track(
            iter_generate(G, z, labels, cfg.batch_size, cfg.seed),
            total=math.ceil(cfg.n / cfg.batch_size),
            description="generating",
            disable=cfg.n <= cfg.batch_size,
        )

    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
        images = (image for batch in batches(generators[0]) for image in batch)
        for index, image in enumerate(images):
            save_image(image.permute(1, 2, 0).numpy(), out_dir / f"{index:06d}.png")
        return str(out_dir)
    grids = [make_grid(torch.cat(list(batches(G))), columns=columns) for G in generators]
    save_image(grids[0] if len(grids) == 1 else side_by_side(grids, cfg.weights), cfg.out)
    return cfg.out


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: f"wrote {run_generation(build_config(GenerateConfig, args))}", argv)


if __name__ == "__main__":
    sys.exit(main())
