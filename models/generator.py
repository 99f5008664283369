"""The 128x128 SAGAN generator (official ImageNet model).

z -> SNLinear -> 4x4x16ch -> up-blocks to 8, 16, 32, 64, 128 with widths 16, 8, 4, 2, 1 x ch
(self-attention after the block at `attn_res`) -> BN, ReLU, SNConv3x3 -> 3, tanh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import GBlock, SelfAttention, SNConv2d, SNLinear
from .pretrained import PretrainedMixin
from .validation import check_attn_res, check_labels

# Output width of each up-block, in multiples of ch; block i outputs 8 * 2**i pixels.
G_WIDTHS = (16, 16, 8, 4, 2, 1)
G_BLOCK_RESOLUTIONS = tuple(8 * 2**i for i in range(len(G_WIDTHS) - 1))  # 8 .. 128


@dataclass
class GeneratorConfig:
    ch: int = 64
    z_dim: int = 128
    num_classes: int = 0
    attn_res: int = 32  # 0: no attention


class Generator(PretrainedMixin, nn.Module):
    def __init__(self, ch: int = 64, z_dim: int = 128, num_classes: int = 0, attn_res: int = 32) -> None:
        super().__init__()
        check_attn_res("Generator", attn_res, G_BLOCK_RESOLUTIONS)
        self.config = GeneratorConfig(ch, z_dim, num_classes, attn_res)
        widths = [w * ch for w in G_WIDTHS]
        self.linear = SNLinear(z_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(GBlock(c_in, c_out, num_classes) for c_in, c_out in zip(widths, widths[1:]))
        self.attn_index = G_BLOCK_RESOLUTIONS.index(attn_res) if attn_res else -1
        self.attention = SelfAttention(widths[self.attn_index + 1]) if attn_res else None
        self.bn = nn.BatchNorm2d(widths[-1])
        self.conv_out = SNConv2d(widths[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, z_dim), y (B,) class indices when conditional -> images (B, 3, 128, 128) in [-1, 1]."""
        cfg = self.config
        if z.ndim != 2 or z.shape[1] != cfg.z_dim:
            raise ValueError(f"Generator: z must have shape (B, {cfg.z_dim}), got {tuple(z.shape)}")
        check_labels("Generator", y, z.shape[0], cfg.num_classes)
        x = self.linear(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            x = block(x, y)
            if i == self.attn_index:
                x = self.attention(x)
        return torch.tanh(self.conv_out(F.relu(self.bn(x))))
