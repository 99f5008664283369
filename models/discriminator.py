"""The 128x128 SAGAN projection discriminator (official ImageNet model).

image -> optimized block (ch, 64x64) -> down-blocks to 32, 16, 8, 4 with widths 2, 4, 8, 16 x ch
(self-attention after the block at `attn_res`) -> a last 16ch block without downsampling ->
ReLU, global sum pool -> SNLinear -> 1, plus the projection <SNEmbedding(y), features>.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import DBlock, SelfAttention, SNEmbedding, SNLinear
from .pretrained import PretrainedMixin
from .validation import check_attn_res, check_labels

# Output width of each block, in multiples of ch, and its output resolution.
D_WIDTHS = (1, 2, 4, 8, 16, 16)
D_BLOCK_RESOLUTIONS = (64, 32, 16, 8, 4, 4)
IMAGE_SHAPE = (3, 128, 128)


@dataclass
class DiscriminatorConfig:
    ch: int = 64
    num_classes: int = 0
    attn_res: int = 32  # 0: no attention


class Discriminator(PretrainedMixin, nn.Module):
    def __init__(self, ch: int = 64, num_classes: int = 0, attn_res: int = 32) -> None:
        super().__init__()
        check_attn_res("Discriminator", attn_res, D_BLOCK_RESOLUTIONS)
        self.config = DiscriminatorConfig(ch, num_classes, attn_res)
        widths = [w * ch for w in D_WIDTHS]
        in_widths = [IMAGE_SHAPE[0]] + widths[:-1]
        self.blocks = nn.ModuleList(
            DBlock(c_in, c_out, downsample=i < len(widths) - 1, optimized=i == 0)
            for i, (c_in, c_out) in enumerate(zip(in_widths, widths))
        )
        self.attn_index = D_BLOCK_RESOLUTIONS.index(attn_res) if attn_res else -1
        self.attention = SelfAttention(widths[self.attn_index]) if attn_res else None
        self.linear = SNLinear(widths[-1], 1)
        self.embed = SNEmbedding(num_classes, widths[-1]) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 3, 128, 128), y (B,) class indices when conditional -> logits (B,)."""
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            raise ValueError(f"Discriminator: x must have shape (B, {', '.join(map(str, IMAGE_SHAPE))}), got {tuple(x.shape)}")
        check_labels("Discriminator", y, x.shape[0], cfg.num_classes)
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_index:
                h = self.attention(h)
        features = F.relu(h).sum(dim=(2, 3))
        logits = self.linear(features).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(y) * features).sum(dim=1)
        return logits
