"""Images from a generator: `generate`, and tritonsagan-generate, which reads the weights with
`run_directory.load_generator` (safetensors only) and also draws attention maps (attention_figure)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonsagan.models import Generator

from .attention_figure import attention_figure, attention_maps, figure_to_array
from .cli import add_device_argument, parse_int_list, positive_float, resolve_device, run_command
from .images import image_format, make_grid, save_image, side_by_side, to_uint8
from .run_directory import load_generator
from .shipped import shipped_names


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
    generator: Generator, z: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """uint8 (b, 3, size, size) CPU batches for the given latents, `batch_size` at a time."""
    generator.eval()
    param = next(generator.parameters())
    for start in range(0, len(z), batch_size):
        zb = z[start : start + batch_size].to(param.device, param.dtype)
        yb = None if labels is None else labels[start : start + batch_size].to(param.device)
        yield to_uint8(generator(zb, yb))


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
    return iter_generate(generator, z, class_labels(generator, n, classes, seed), batch_size)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-generate", description="Generate images from SAGAN weights (safetensors only)."
    )
    parser.add_argument(
        "--weights",
        required=True,
        nargs="+",
        help="save_pretrained directory, model.safetensors, a training checkpoint, a run directory, or the name of shipped weights "
        f"({', '.join(shipped_names()) or 'none in this installation'}); several: their grids side by side from the same latents",
    )
    parser.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    parser.add_argument(
        "--classes", type=parse_int_list, help="class indices, e.g. 3,7 (images split evenly among them)"
    )
    parser.add_argument(
        "--class-per-row", action="store_true", help="one class per grid row (from --classes, else 0, 1, 2, ...)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and random classes (default: 0)")
    parser.add_argument(
        "--truncation", type=positive_float, help="truncation trick: latents from the normal truncated to [-t, t]"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    add_device_argument(parser)
    parser.add_argument(
        "--interpolate", action="store_true", help="a grid walking z from --seed to --seed+1 in --n steps"
    )
    parser.add_argument(
        "--attention-maps",
        action="store_true",
        help="the paper's figure: where G's attention looks from a few query points",
    )
    parser.add_argument(
        "--queries",
        type=_point,
        nargs="+",
        help="query points x,y in image pixels for --attention-maps "
        "(default: five, at the centre and halfway to each corner)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--out", help="write one grid here, in the format its extension names (.png, .jpg, .jpeg, .webp)"
    )
    target.add_argument("--out-dir", help="write one PNG per image into this folder")
    return parser


def _latents_and_labels(
    args: argparse.Namespace, G: Generator, columns: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """--interpolate: a walk from --seed's latent to --seed+1's in one class; else --n latents in the
    --classes (one class per grid row with --class-per-row)."""
    z_dim, num_classes = G.config.z_dim, G.config.num_classes
    if args.interpolate:
        a, b = (
            sample_latents(1, z_dim, args.seed, args.truncation)[0],
            sample_latents(1, z_dim, args.seed + 1, args.truncation)[0],
        )
        labels = class_labels(G, args.n, args.classes[:1] if args.classes else None, args.seed)
        return slerp(a, b, args.n), None if labels is None else labels[:1].expand(args.n)
    classes = args.classes
    if args.class_per_row:
        if num_classes == 0:
            raise ValueError("--class-per-row needs a conditional generator")
        row_classes = args.classes or list(range(num_classes))
        classes = [row_classes[(i // columns) % len(row_classes)] for i in range(args.n)]
    return sample_latents(args.n, z_dim, args.seed, args.truncation), class_labels(G, args.n, classes, args.seed)


def _write_attention_maps(args: argparse.Namespace, G: Generator, z: torch.Tensor, labels: torch.Tensor | None) -> Path:
    size = G.config.image_size
    points = args.queries or [(round(fx * size), round(fy * size)) for fx, fy in DEFAULT_QUERY_FRACTIONS]
    if not all(0 <= x < size and 0 <= y < size for x, y in points):
        raise ValueError(f"--queries points must lie inside the {size}x{size} image")
    height = G.config.attn_res
    queries = [(y * height // size) * height + (x * height // size) for x, y in points]
    images, maps = attention_maps(G, z, labels, queries)
    captions = None if labels is None else [f"class {int(label)}" for label in labels]
    out = Path(args.out) if args.out else Path(args.out_dir) / "attention_maps.png"
    save_image(figure_to_array(attention_figure(images, maps, points, captions)), out)
    return out


def _load_generators(args: argparse.Namespace) -> list[Generator]:
    """Each --weights' generator; several must take the same latents and classes, for one grid each
    (of any image size: the grids stand side by side, tops aligned)."""
    if len(args.weights) > 1 and (args.out_dir or args.attention_maps):
        raise ValueError(
            "several --weights make their grids side by side in one --out; --out-dir and --attention-maps take one"
        )
    generators = [load_generator(weights, device=resolve_device(args.device)) for weights in args.weights]
    shapes = {weights: (G.config.z_dim, G.config.num_classes) for weights, G in zip(args.weights, generators)}
    if len(set(shapes.values())) > 1:
        described = "; ".join(
            f"{weights}: z_dim {z_dim}, {classes} classes" for weights, (z_dim, classes) in shapes.items()
        )
        raise ValueError(
            f"--weights side by side must share z_dim and classes, to draw from the same latents in one grid: {described}"
        )
    return generators


def _run(args: argparse.Namespace) -> str:
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be positive")
    if args.out:
        image_format(args.out)  # an --out whose format cannot be told stops here, before any work
    generators = _load_generators(args)
    columns = min(args.n, 16 if args.interpolate else 8)
    z, labels = _latents_and_labels(args, generators[0], columns)
    if args.attention_maps:
        return str(_write_attention_maps(args, generators[0], z, labels))
    from rich.progress import track

    def batches(G: Generator) -> Iterator[torch.Tensor]:
        return track(
            iter_generate(G, z, labels, args.batch_size),
            total=math.ceil(args.n / args.batch_size),
            description="generating",
            disable=args.n <= args.batch_size,
        )

    if args.out_dir:
        out_dir = Path(args.out_dir)
        images = (image for batch in batches(generators[0]) for image in batch)
        for index, image in enumerate(images):
            save_image(image.permute(1, 2, 0).numpy(), out_dir / f"{index:06d}.png")
        return str(out_dir)
    grids = [make_grid(torch.cat(list(batches(G))), columns=columns) for G in generators]
    save_image(grids[0] if len(grids) == 1 else side_by_side(grids, args.weights), args.out)
    return args.out


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: f"wrote {_run(args)}", argv)


if __name__ == "__main__":
    sys.exit(main())
