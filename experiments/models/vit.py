"""The CIFAR ViT of the paper, built from timm's VisionTransformer."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def vit_cifar(
    num_classes: int = 10,
    img_size: int = 32,
    patch_size: int = 4,
    dim: int = 512,
    depth: int = 6,
    heads: int = 8,
    mlp_dim: int = 512,
    dropout: float = 0.1,
    emb_dropout: float = 0.1,
) -> VisionTransformer:
    """ViT with the settings of the paper's runner (lucidrains' vit-pytorch `ViT`), mapped onto timm.

    patch 4 (64 patches of 32x32), dim 512, depth 6, 8 heads of 64, MLP hidden size 512 (mlp_ratio 1), class
    token pooling. lucidrains' `dropout` acts on the attention weights, after the attention projection and
    inside the MLP: timm's `attn_drop_rate` and `proj_drop_rate`; `emb_dropout` acts after adding the
    position embedding: timm's `pos_drop_rate`. There is no dropout before the head (timm `drop_rate=0`),
    and the qkv projection has no bias, as there. Differences that remain: timm embeds patches with a
    convolution (lucidrains: LayerNorm-Linear-LayerNorm) and initialises with truncated normals.
    """
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_dim / dim,
        qkv_bias=False,
        class_token=True,
        global_pool="token",
        drop_rate=0.0,
        pos_drop_rate=emb_dropout,
        proj_drop_rate=dropout,
        attn_drop_rate=dropout,
    )
