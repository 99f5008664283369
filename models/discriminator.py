"""The SAGAN projection discriminator; at image_size 128 (the default) the official ImageNet model.

image -> optimized block -> down-blocks (at 128: ch at 64x64, then 32, 16, 8, 4 with widths 2, 4, 8,
16 x ch, and a last 16ch block without downsampling; config.D_WIDTHS has every size's table), with
self-attention after the block at `attn_res` -> ReLU, global sum pool -> SNLinear -> 1, plus the
projection <SNEmbedding(y), features>.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import D_DOWNSAMPLES, IMAGE_CHANNELS, DiscriminatorConfig, TuningConfig
from .layers import (
    DBlock,
    SelfAttention,
    SNEmbedding,
    SNLinear,
    initialize,
    model_power_iteration_grouped,
    updates_spectral_norm,
)
from .pretrained import PretrainedMixin
from .validation import check_labels


class Discriminator(PretrainedMixin, nn.Module):
    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig | None = None, **fields) -> None:
        """`Discriminator(DiscriminatorConfig(ch=32))`, or the config's fields as keywords: `Discriminator(ch=32)`."""
        super().__init__()
        self.config = cfg = dataclasses.replace(config or DiscriminatorConfig(), **fields)
        widths = cfg.widths
        in_widths = (IMAGE_CHANNELS,) + widths[:-1]
        self.blocks = nn.ModuleList(
            DBlock(c_in, c_out, downsample=downsample, optimized=i == 0)
            for i, (c_in, c_out, downsample) in enumerate(zip(in_widths, widths, D_DOWNSAMPLES[cfg.image_size]))
        )
        self.attention = SelfAttention(widths[cfg.attention_block]) if cfg.attn_res else None
        self.linear = SNLinear(widths[-1], 1)
        self.embed = SNEmbedding(cfg.num_classes, widths[-1]) if cfg.num_classes > 0 else None
        initialize(self, cfg.init, cfg.bias_init)
        self.tuning = TuningConfig()  # how it computes (layers.set_tuning), not part of the saved config

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 3, image_size, image_size), y (B,) class indices when conditional -> logits (B,)."""
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (IMAGE_CHANNELS, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"Discriminator: x must have shape (B, {IMAGE_CHANNELS}, {cfg.image_size}, {cfg.image_size}) for image_size {cfg.image_size}, "
                f"got {tuple(x.shape)}"
            )
        check_labels("Discriminator", y, x.shape[0], cfg.num_classes)
        if self.tuning.grouped_sn and updates_spectral_norm(self):
            model_power_iteration_grouped(self)
        h = x.contiguous(memory_format=torch.channels_last) if self.tuning.channels_last else x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == cfg.attention_block:
                h = self.attention(h)
        features = F.relu(h).sum(dim=(2, 3))
        logits = self.linear(features).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(y) * features).sum(dim=1)
        return logits
