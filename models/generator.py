"""The SAGAN generator; at image_size 128 (the default) the official ImageNet model.

z -> SNLinear -> 4x4 -> up-blocks doubling the resolution to image_size (at 128: 4x4x16ch, then
8, 16, 32, 64, 128 with widths 16, 8, 4, 2, 1 x ch; config.G_WIDTHS has every size's table), with
self-attention after the block at `attn_res` -> BN, ReLU, SNConv3x3 -> 3, tanh. With `noise_inputs`
(not in SAGAN), per-pixel noise after each up-block conv3x3 (layers.NoiseInput); with `padding`
"reflect" (not in SAGAN), every 3x3 conv pads by reflection instead of zeros.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import IMAGE_CHANNELS, GeneratorConfig, TuningConfig
from .layers import (
    GBlock,
    SelfAttention,
    SNConv2d,
    SNLinear,
    initialize,
    model_power_iteration_grouped,
    updates_spectral_norm,
)
from .pretrained import PretrainedMixin
from .validation import check_labels


class Generator(PretrainedMixin, nn.Module):
    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig | None = None, **fields) -> None:
        """`Generator(GeneratorConfig(ch=32))`, or the config's fields as keywords: `Generator(ch=32)`."""
        super().__init__()
        self.config = cfg = dataclasses.replace(config or GeneratorConfig(), **fields)
        widths = cfg.widths
        self.linear = SNLinear(cfg.z_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GBlock(c_in, c_out, cfg.num_classes, cfg.class_bn_init, cfg.noise_inputs, cfg.padding)
            for c_in, c_out in zip(widths, widths[1:])
        )
        self.attention = SelfAttention(widths[cfg.attention_block + 1]) if cfg.attn_res else None
        self.bn = nn.BatchNorm2d(widths[-1])
        self.conv_out = SNConv2d(widths[-1], IMAGE_CHANNELS, 3, padding=1, padding_mode=cfg.padding)
        initialize(self, cfg.init, cfg.bias_init)
        self.tuning = TuningConfig()  # how it computes (layers.set_tuning), not part of the saved config

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, z_dim), y (B,) class indices when conditional -> images (B, 3, image_size, image_size) in [-1, 1]."""
        cfg = self.config
        if z.ndim != 2 or z.shape[1] != cfg.z_dim:
            raise ValueError(f"Generator: z must have shape (B, {cfg.z_dim}), got {tuple(z.shape)}")
        check_labels("Generator", y, z.shape[0], cfg.num_classes)
        if self.tuning.grouped_sn and updates_spectral_norm(self):
            model_power_iteration_grouped(self)
        x = self.linear(z).view(z.shape[0], -1, 4, 4)
        if self.tuning.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # every later activation follows its input's format
        for i, block in enumerate(self.blocks):
            x = block(x, y)
            if i == cfg.attention_block:
                x = self.attention(x)
        return torch.tanh(self.conv_out(F.relu(self.bn(x))))
