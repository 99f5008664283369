"""The full training step (G and D, hinge loss, Adam, EMA) at 128x128, images per second.

(a) the port-style reference: bmm + softmax attention and torch spectral norm, eager, float32;
(b) our kernels, eager; (c) our kernels under torch.compile; (d) (c) with bf16 autocast;
(e), (f): (c), (d) with DiffAugment (color, translation, cutout), its cost.
All are our own Trainer, switched between kernel backends and options.
"""

from __future__ import annotations

import tempfile

import torch

from ..kernels import use_backend
from ..train import TrainConfig, Trainer
from .timing import median_ms, peak_extra_bytes

FULL_DIFFAUG = "color,translation,cutout"
VARIANTS = [  # id, name, kernel backend, compile, bf16, DiffAugment policy
    ("a", "port-style reference", "naive", False, False, ""),
    ("b", "ours, eager", "auto", False, False, ""),
    ("c", "ours, compiled", "auto", True, False, ""),
    ("d", "ours, compiled + bf16", "auto", True, True, ""),
    ("e", "(c) + DiffAugment", "auto", True, False, FULL_DIFFAUG),
    ("f", "(d) + DiffAugment", "auto", True, True, FULL_DIFFAUG),
]


def run(device: torch.device, quick: bool = False) -> list[dict]:
    on_cuda = device.type == "cuda"
    ch, batch = (64, 64 if quick else 256) if on_cuda else ((8, 4) if quick else (16, 8))
    rows = []
    for variant_id, name, backend, compiled, bf16, diffaug in VARIANTS:
        row = {"id": variant_id, "variant": f"({variant_id}) {name}", "ch": ch, "batch": batch, "backend": backend, "compile": compiled,
               "bf16": bf16, "diffaug": diffaug}  # fmt: skip
        if bf16 and not on_cuda:
            rows.append({**row, "available": False, "reason": "bf16 autocast is a CUDA path"})
            continue
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(out=out, ch=ch, batch_size=batch, compile=compiled, bf16=bf16, diffaug=diffaug, workers=0, device=str(device))
            trainer = Trainer(cfg)
            real = torch.rand(batch, 3, 128, 128, device=device) * 2 - 1

            def step():
                with use_backend(backend):
                    trainer.step_on([(real, None)])

            try:
                ms = median_ms(step, device, quick)
                peak = peak_extra_bytes(step, device)
            except torch.OutOfMemoryError as err:
                rows.append({**row, "available": False, "reason": str(err).splitlines()[0][:200]})
                continue
        rows.append({**row, "available": True, "step_ms": ms, "images_per_s": batch / (ms * 1e-3), "peak_extra_bytes": peak})
    return rows
