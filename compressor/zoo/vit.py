"""DeiT/ViT classifier whose parameter names match timm's ``VisionTransformer``.

Matching timm's state_dict keys lets pretrained DeiT checkpoints load without a
key-remapping table, and lets compression passes address layers by the names
users already know (``blocks.3.attn.qkv``).

``ffn="repa"`` swaps each block's LayerNorm + MLP for RePaViT's channel-idle FFN
(:class:`RePaMlp`), which ``reparam.repavit`` folds at inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["manual", "sdpa"]
FfnKind = Literal["mlp", "repa"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches via a strided conv, as timm does, so its weights load as-is."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout).

    ``attn_impl="manual"`` spells out matmul/softmax/matmul so graph captures
    expose each op to quantization and pruning passes; ``"sdpa"`` uses the fused
    kernel, which is what a deployment would run.
    """

    def __init__(self, dim: int, num_heads: int, attn_impl: AttnImpl = "manual") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ("manual", "sdpa"):
            raise ValueError(f"attn_impl must be 'manual' or 'sdpa', got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.attn_impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _token_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the channels of (B, N, C) tokens: statistics over batch × tokens."""
    return bn(x.transpose(1, 2)).transpose(1, 2)


class RePaMlp(nn.Module):
    """RePaViT's channel-idle FFN: BN → fc1 → GELU on the first ``act_channels`` only → BN → fc2.

    Only ``a = ceil(D·(1 − idle_ratio))`` hidden channels are nonlinear; the idle ones, both
    BatchNorms and the block's shortcut are linear at inference, so ``reparam.repavit`` collapses
    them into one C×C matrix (FFN weights 2CD → C² + 2Ca). BatchNorm, not LayerNorm, is what
    allows that: its eval form is a constant affine map. ``mlp.norm1``/``mlp.norm2`` are the
    BatchNorm1d over the C input and D hidden channels (the block itself has no ``norm2`` weights).
    """

    def __init__(self, dim: int, hidden_dim: int, idle_ratio: float) -> None:
        super().__init__()
        if not 0.0 <= idle_ratio <= 1.0:
            raise ValueError(f"idle_ratio must be in [0, 1], got {idle_ratio}")
        self.norm1 = nn.BatchNorm1d(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.norm2 = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        # rounded first: 100·(1 − 0.7) is 30.000000000000004 in floats, which must give 30 channels, not 31
        self.act_channels = math.ceil(round(hidden_dim * (1.0 - idle_ratio), 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(_token_bn(self.norm1, x))
        a = self.act_channels
        if 0 < a < x.shape[-1]:
            x = torch.cat([self.act(x[..., :a]), x[..., a:]], dim=-1)
        elif a:  # idle_ratio 0: an ordinary GELU MLP, still with BatchNorm
            x = self.act(x)
        return self.fc2(_token_bn(self.norm2, x))


class Block(nn.Module):
    """Pre-norm transformer block, the layout DeiT checkpoints were trained with."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_impl: AttnImpl, ffn: FfnKind = "mlp",
                 idle_ratio: float = 0.75) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_impl)
        if ffn == "mlp":
            self.norm2: nn.Module = nn.LayerNorm(dim, eps=1e-6)
            self.mlp: nn.Module = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "repa":
            self.norm2 = nn.Identity()  # RePaMlp normalizes with its own BatchNorm; a LayerNorm would block the fold
            self.mlp = RePaMlp(dim, int(dim * mlp_ratio), idle_ratio)
        else:
            raise ValueError(f"ffn must be 'mlp' or 'repa', got {ffn!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with class-token readout; shapes depend on the batch only, so export can make it dynamic."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        attn_impl: AttnImpl = "manual",
        ffn: FfnKind = "mlp",
        idle_ratio: float | Sequence[float] = 0.75,
    ) -> None:
        """``idle_ratio`` (``ffn="repa"`` only): one ratio for every block, or one per block."""
        super().__init__()
        ratios = [idle_ratio] * depth if isinstance(idle_ratio, (int, float)) else list(idle_ratio)
        if len(ratios) != depth:
            raise ValueError(f"idle_ratio has {len(ratios)} entries for {depth} blocks")
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, attn_impl, ffn, r) for r in ratios])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's recipe; the default PyTorch init trains noticeably worse from scratch.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])
