"""A small pre-norm transformer encoder over an image's rows, with a pluggable norm.

Each row is a token: a linear embedding of its W x C features plus a learned
position embedding (one per row), then ``depth`` pre-norm blocks (Xiong et al. 2020;
the GPT-2/ViT layout)

    x = x + Attention(norm1(x))        multi-head self-attention, ``heads`` heads
    x = x + MLP(norm2(x))              Linear(D, 4D), GELU, Linear(4D, D)

then a final norm, the mean over tokens and a linear head. The norm (``norm_layer``:
features -> a layer over (B, T, D)) is LayerNorm (Ba et al. 2016, the transformer's
own), RMSNorm (Zhang & Sennrich 2019), BN over batch x tokens per feature (the BN
that Shen et al. 2020 find fails in NLP transformers; ``TokenBatchNorm``) or none.

Trainable parameters, D = width, L = depth, I features per row, T rows, 10 classes,
with a norm of two parameters per feature (ln, bn; rmsnorm one, none zero):

    embedding I*D + D, positions T*D, per block 12 D^2 + 9 D (+ 2 norms), final norm, head 10D + 10

e.g. the defaults (D = 64, L = 4, 4 heads) on Fashion-MNIST rows (I = 28, T = 28):
204,362 with ln (203,210 with none); on CIFAR-10 rows (I = 96, T = 32): 208,970 with
ln. tests/test_sequence.py checks these counts.

Initialisation (``row_transformer``): every linear weight Glorot-uniform (torch's
``nn.Transformer``), biases 0, position embeddings N(0, 0.02^2) (ViT), norm gains 1
and shifts 0; then every linear weight times ``init_scale``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models.norms import NormLayer
from bnlab.models.sequence import image_rows

MLP_RATIO = 4


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask), one fused qkv projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads != 0:
            raise ValueError(f"heads={heads} must divide width={width}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, T, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.norm1 = norm_layer(width)
        self.attn = Attention(width, heads)
        self.norm2 = norm_layer(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, MLP_RATIO * width), nn.GELU(), nn.Linear(MLP_RATIO * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RowTransformer(nn.Module):
    def __init__(
        self,
        input_size: int,
        steps: int,
        width: int,
        depth: int,
        heads: int,
        norm_layer: NormLayer,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1 block")
        self.embed = nn.Linear(input_size, width)
        self.pos = nn.Parameter(torch.zeros(1, steps, width))
        self.blocks = nn.Sequential(*(Block(width, heads, norm_layer) for _ in range(depth)))
        self.norm = norm_layer(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = image_rows(x)
        tokens = self.embed(rows) + self.pos[:, : rows.shape[1]]
        features = self.norm(self.blocks(tokens)).mean(dim=1)
        return self.fc(features)


@torch.no_grad()
def init_transformer(net: RowTransformer, scale: float = 1.0) -> None:
    """The initialisation of the module docstring; draws from torch's global RNG."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            module.weight.mul_(scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(net.pos, std=0.02)


def row_transformer(*args: Any, init_scale: float = 1.0, **kwargs: Any) -> RowTransformer:
    """A ``RowTransformer`` (of these arguments), initialised with ``init_scale`` (seed
    torch's global RNG before calling)."""
    net = RowTransformer(*args, **kwargs)
    init_transformer(net, init_scale)
    return net
