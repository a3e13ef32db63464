"""A small Vision Transformer for 32x32 images: patch embedding, class token, encoder layers, head.

Built from ``nn.TransformerEncoderLayer`` (pre-norm, GELU, batch first), so attention heads and FFN
width can be pruned by the transformer pruner and the whole model exports to ONNX. At the defaults
(dim 96, depth 4, 4 heads, MLP 192, 4x4 patches) it has 311,338 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from netcompress.core.errors import ConfigError
from netcompress.models.catalog import check_int, register_model


class VisionTransformer(nn.Module):
    """``patch`` (Conv2d, stride = patch size), ``cls_token``, ``pos_embed``, ``encoder``, ``norm``, ``head``."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        tokens = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.encoder(x))
        return self.head(x[:, 0])


@register_model("vit_tiny", input_shape=lambda kw: (kw["in_channels"], kw["image_size"], kw["image_size"]))
def vit_tiny(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    patch_size: int = 4,
    dim: int = 96,
    depth: int = 4,
    heads: int = 4,
    mlp_dim: int = 192,
    dropout: float = 0.0,
) -> VisionTransformer:
    """Small ViT for 32x32 images (4x4 patches, 65 tokens): 311,338 params at the defaults, 10 classes.

    Example:
        >>> vit_tiny()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("dim", dim)):
        check_int(name, value)
    for name, value in (("depth", depth), ("heads", heads), ("mlp_dim", mlp_dim)):
        check_int(name, value)
    check_int("patch_size", patch_size)
    check_int("image_size", image_size)
    if image_size % patch_size:
        raise ConfigError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
    if dim % heads:
        raise ConfigError(f"dim={dim} must be a multiple of heads={heads}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout={dropout!r} must be within [0, 1)")
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        in_channels=in_channels,
        num_classes=num_classes,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        dropout=dropout,
    )
