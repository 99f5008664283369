"""The 128x128 SAGAN projection discriminator (official ImageNet model).

image -> optimized block (ch, 64x64) -> down-blocks to 32, 16, 8, 4 with widths 2, 4, 8, 16 x ch
(self-attention after the block at `attn_res`) -> a last 16ch block without downsampling ->
ReLU, global sum pool -> SNLinear -> 1, plus the projection <SNEmbedding(y), features>.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import D_WIDTHS, IMAGE_CHANNELS, IMAGE_SHAPE, DiscriminatorConfig, TuningConfig
from .layers import DBlock, SelfAttention, SNEmbedding, SNLinear, model_power_iteration_grouped
from .pretrained import PretrainedMixin
from .validation import check_labels


class Discriminator(PretrainedMixin, nn.Module):
    config_class = DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig | None = None, **fields) -> None:
        """`Discriminator(DiscriminatorConfig(ch=32))`, or the config's fields as keywords: `Discriminator(ch=32)`."""
        super().__init__()
        self.config = cfg = dataclasses.replace(config or DiscriminatorConfig(), **fields)
        widths = [w * cfg.ch for w in D_WIDTHS]
        in_widths = [IMAGE_CHANNELS] + widths[:-1]
        self.blocks = nn.ModuleList(
            DBlock(c_in, c_out, downsample=i < len(widths) - 1, optimized=i == 0)
            for i, (c_in, c_out) in enumerate(zip(in_widths, widths))
        )
        self.attention = SelfAttention(widths[cfg.attention_block]) if cfg.attn_res else None
        self.linear = SNLinear(widths[-1], 1)
        self.embed = SNEmbedding(cfg.num_classes, widths[-1]) if cfg.num_classes > 0 else None
        self.tuning = TuningConfig()  # how it computes (layers.set_tuning), not part of the saved config

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 3, 128, 128), y (B,) class indices when conditional -> logits (B,)."""
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"Discriminator: x must have shape (B, {', '.join(map(str, IMAGE_SHAPE))}), got {tuple(x.shape)}")
        check_labels("Discriminator", y, x.shape[0], cfg.num_classes)
        if self.training and self.tuning.grouped_sn:
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
