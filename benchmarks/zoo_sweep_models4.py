"""Round 5 of the zoo (session 13): model classes other authors wrote in other PyPI packages, for
``benchmarks/zoo_sweep.py --round 5``.

``monai`` (U-Nets 2-D and 3-D, DynUNet, SegResNet, DenseNet, EfficientNet, UNETR, SwinUNETR, ResNet, ViT),
``vit-pytorch`` (lucidrains: einops ``rearrange`` everywhere, functional ops in ``forward``), ``x-transformers``
(``TransformerWrapper`` with rotary / ALiBi / RMSNorm / GLU / memory tokens), ``torch_geometric`` (GCN, GAT, GIN,
GraphSAGE on small fixed graphs: float node features + int64 ``edge_index``), tabular nets (``rtdl_revisiting_models``
MLP / ResNet / FT-Transformer with float + int64 category inputs, ``pytorch-tabnet``). Random weights, tiny widths.

None of these packages is a dependency of netcompress: a package that is absent is skipped and named in ``SKIPPED``.
``vit-pytorch``'s ``__init__`` imports torchvision (absent here, and installing it would replace torch), so its
submodules are imported under a bare package stub.

An entry of ``ROUND5`` is ``(builder, make_inputs, labelled, family)`` as in ``zoo_sweep_models3.ROUND4``.

Example:
    >>> build, make_inputs, labelled, family = ROUND5["monai_unet2d"]
    >>> build()(make_inputs(2, False, 0)).shape
    torch.Size([2, 2, 32, 32])
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from zoo_sweep_models import LABELS, VOCAB

Make = Callable[[int, bool, int], Any]
Entry = tuple[Callable[[], nn.Module], Make, bool, str]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fixed(*shape: int) -> Make:
    def make(n: int, long: bool, seed: int) -> torch.Tensor:
        return torch.randn(n, *shape, generator=_gen(seed))

    return make


def _ids(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 11 if long else 9), generator=_gen(seed))


# ------------------------------------------------------------------------------------------ monai
def _monai(cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(importlib.import_module("monai.networks.nets"), cls)(**kw)

    return build


_EFF_BLOCKS = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25"]


def _monai_models() -> dict[str, Entry]:
    img2, img3 = _fixed(1, 32, 32), _fixed(1, 16, 16, 16)
    return {
        "monai_unet2d": (_monai("UNet", spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32),
                                strides=(2, 2), num_res_units=1), img2, False, "cnn"),
        "monai_unet3d": (_monai("UNet", spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
                                strides=(2, 2), num_res_units=1), img3, False, "cnn"),
        "monai_basicunet": (_monai("BasicUNet", spatial_dims=2, in_channels=1, out_channels=2,
                                   features=(4, 4, 8, 8, 16, 4)), img2, False, "cnn"),
        "monai_dynunet": (_monai("DynUNet", spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3, 3, 3],
                                 strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[8, 16, 32], res_block=True),
                          img2, False, "cnn"),
        "monai_segresnet3d": (_monai("SegResNet", spatial_dims=3, in_channels=1, out_channels=2, init_filters=8,
                                     norm=("group", {"num_groups": 4}), blocks_down=(1, 1, 1), blocks_up=(1, 1)),
                              img3, False, "cnn"),
        "monai_densenet": (_monai("DenseNet", spatial_dims=2, in_channels=1, out_channels=LABELS, init_features=8,
                                  growth_rate=4, block_config=(2, 2, 2)), img2, True, "cnn"),
        "monai_efficientnet": (_monai("EfficientNet", blocks_args_str=_EFF_BLOCKS, spatial_dims=2, in_channels=1,
                                      num_classes=LABELS, width_coefficient=0.5, depth_coefficient=0.5,
                                      image_size=32), img2, True, "cnn"),
        "monai_resnet": (_monai("ResNet", block="basic", layers=(1, 1, 1, 1), block_inplanes=(8, 16, 24, 32),
                                spatial_dims=2, n_input_channels=1, num_classes=LABELS), img2, True, "cnn"),
        "monai_attention_unet": (_monai("AttentionUnet", spatial_dims=2, in_channels=1, out_channels=2,
                                        channels=(8, 16, 32), strides=(2, 2)), img2, False, "cnn"),
        "monai_unetr": (_monai("UNETR", in_channels=1, out_channels=2, img_size=(32, 32), feature_size=4,
                               hidden_size=32, mlp_dim=48, num_heads=4, spatial_dims=2), img2, False, "transformer"),
        "monai_swinunetr": (_monai("SwinUNETR", in_channels=1, out_channels=2, feature_size=12, spatial_dims=2,
                                   depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), _fixed(1, 64, 64), False,
                            "transformer"),
        "monai_vit": (_monai("ViT", in_channels=1, img_size=(32, 32), patch_size=(8, 8), hidden_size=32, mlp_dim=48,
                             num_layers=2, num_heads=4, classification=True, num_classes=LABELS, spatial_dims=2),
                      img2, True, "transformer"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ vit-pytorch
def _vit_module(name: str) -> types.ModuleType:
    if "vit_pytorch" not in sys.modules:  # skip the package __init__ (it imports torchvision)
        spec = importlib.util.find_spec("vit_pytorch")
        pkg = types.ModuleType("vit_pytorch")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["vit_pytorch"] = pkg
    return importlib.import_module(f"vit_pytorch.{name}")


def _vit(module: str, cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(_vit_module(module), cls)(**kw)

    return build


_VITB = dict(image_size=32, num_classes=LABELS, dim=32, depth=2, heads=4, mlp_dim=48)


def _vit_models() -> dict[str, Entry]:
    img = _fixed(3, 32, 32)
    return {
        "lr_vit": (_vit("vit", "ViT", patch_size=8, **_VITB), img, True, "transformer"),
        "lr_simple_vit": (_vit("simple_vit", "SimpleViT", patch_size=8, **_VITB), img, True, "transformer"),
        "lr_cait": (_vit("cait", "CaiT", patch_size=8, cls_depth=1, **_VITB), img, True, "transformer"),
        "lr_cross_vit": (_vit("cross_vit", "CrossViT", image_size=32, num_classes=LABELS, sm_dim=16, lg_dim=32,
                              sm_patch_size=8, lg_patch_size=16, sm_enc_depth=1, sm_enc_heads=2, sm_enc_mlp_dim=32,
                              lg_enc_depth=1, lg_enc_heads=2, lg_enc_mlp_dim=48, cross_attn_depth=1,
                              cross_attn_heads=2, depth=1), img, True, "transformer"),
        "lr_t2t": (_vit("t2t", "T2TViT", image_size=32, num_classes=LABELS, dim=32, depth=2, heads=4, mlp_dim=48,
                        t2t_layers=((4, 4), (2, 2))), img, True, "transformer"),
        "lr_pit": (_vit("pit", "PiT", patch_size=8, image_size=32, num_classes=LABELS, dim=32, depth=(1, 1),
                        heads=4, mlp_dim=48), img, True, "transformer"),
        "lr_levit": (_vit("levit", "LeViT", image_size=32, num_classes=LABELS, stages=2, dim=(16, 32), depth=1,
                          heads=(2, 4), mlp_mult=2), img, True, "transformer"),
        "lr_mobile_vit": (_vit("mobile_vit", "MobileViT", image_size=(64, 64), dims=[16, 24, 32],
                               channels=[8, 8, 16, 16, 24, 24, 32, 32, 48, 48, 64], num_classes=LABELS),
                          _fixed(3, 64, 64), True, "cnn"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ x-transformers
def _xt(decoder: bool, **layer_kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import x_transformers as xt

        wrap_kw = {"num_memory_tokens": layer_kw.pop("num_memory_tokens")} if "num_memory_tokens" in layer_kw else {}
        layers = (xt.Decoder if decoder else xt.Encoder)(dim=32, depth=2, heads=4, **layer_kw)
        return xt.TransformerWrapper(num_tokens=VOCAB, max_seq_len=32, attn_layers=layers, **wrap_kw)

    return build


def _xt_models() -> dict[str, Entry]:
    return {
        "xt_encoder": (_xt(False), _ids, False, "transformer"),
        "xt_decoder_rotary": (_xt(True, rotary_pos_emb=True, ff_glu=True, attn_qk_norm=True), _ids, False,
                              "transformer"),
        "xt_encoder_alibi": (_xt(False, use_rmsnorm=True, ff_swish=True, ff_glu=True, alibi_pos_bias=True,
                                 residual_attn=True, attn_num_mem_kv=2, num_memory_tokens=2), _ids, False,
                             "transformer"),
        "xt_decoder_postnorm": (_xt(True, pre_norm=False, use_scalenorm=True, rel_pos_bias=True), _ids, False,
                                "transformer"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ torch_geometric
NODES = 6  # nodes per graph


def _graphs(n: int, long: bool, seed: int) -> tuple[torch.Tensor, ...]:
    """``n`` graphs of NODES nodes (8 float features), a ring plus random chords, and the batch vector."""
    g = _gen(seed)
    x = torch.randn(n * NODES, 8, generator=g)
    ring = torch.arange(NODES)
    edges = []
    for i in range(n):
        src = torch.cat([ring, torch.randint(0, NODES, (4,), generator=g)])
        dst = torch.cat([(ring + 1) % NODES, torch.randint(0, NODES, (4,), generator=g)])
        edges.append(torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]) + i * NODES)
    return x, torch.cat(edges, 1), torch.arange(n).repeat_interleave(NODES)


def _nodes(n: int, long: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _graphs(n, long, seed)[:2]


class GraphClassifier(nn.Module):
    """A PyG stack over every node, a global mean pool per graph (int64 ``batch``), a Linear head."""

    def __init__(self, gnn: nn.Module) -> None:
        super().__init__()
        self.gnn = gnn
        self.head = nn.Linear(16, LABELS)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        return self.head(global_mean_pool(torch.relu(self.gnn(x, edge_index)), batch))


def _pyg(cls: str, graph_level: bool, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torch_geometric.nn as gnn

        out = 16 if graph_level else LABELS
        model = getattr(gnn, cls)(in_channels=8, hidden_channels=16, num_layers=2, out_channels=out, **kw)
        return GraphClassifier(model) if graph_level else model

    return build


def _pyg_models() -> dict[str, Entry]:
    return {
        "pyg_gcn_nodes": (_pyg("GCN", False), _nodes, False, "cnn"),
        "pyg_gat_nodes": (_pyg("GAT", False, heads=2), _nodes, False, "cnn"),
        "pyg_sage_nodes": (_pyg("GraphSAGE", False), _nodes, False, "cnn"),
        "pyg_gin_graphs": (_pyg("GIN", True), _graphs, True, "cnn"),
        "pyg_gcn_graphs": (_pyg("GCN", True, norm="batch_norm"), _graphs, True, "cnn"),
    }


# ------------------------------------------------------------------------------------------ tabular
CONT, CARDS = 5, (3, 7, 4)


def _tab(n: int, long: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], 1)
    return torch.randn(n, CONT, generator=g), cats


def _rtdl(cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import rtdl_revisiting_models as rtdl

        if cls == "FTTransformer":
            base = {**rtdl.FTTransformer.get_default_kwargs(n_blocks=2), "d_block": 32, "attention_n_heads": 4,
                    "ffn_d_hidden_multiplier": 1.5}  # fmt: skip
            return rtdl.FTTransformer(n_cont_features=CONT, cat_cardinalities=list(CARDS), d_out=LABELS, **base)
        return getattr(rtdl, cls)(d_in=CONT, d_out=LABELS, n_blocks=2, d_block=32, **kw)

    return build


def _tabnet() -> nn.Module:
    from pytorch_tabnet.tab_network import TabNet

    # one group per feature (pytorch_tabnet.utils.create_group_matrix([]) imports pandas)
    return TabNet(CONT, LABELS, n_d=8, n_a=8, n_steps=2, virtual_batch_size=4, group_attention_matrix=torch.eye(CONT))


def _tab_models() -> dict[str, Entry]:
    return {
        "rtdl_mlp": (_rtdl("MLP", dropout=0.1), _fixed(CONT), True, "cnn"),
        "rtdl_resnet": (_rtdl("ResNet", d_hidden_multiplier=2.0, dropout1=0.1, dropout2=0.0), _fixed(CONT), True,
                        "cnn"),
        "rtdl_ft_transformer": (_rtdl("FTTransformer"), _tab, True, "transformer"),
    }  # fmt: skip


_PACKAGES = {"monai": _monai_models, "vit_pytorch": _vit_models, "x_transformers": _xt_models,
             "torch_geometric": _pyg_models, "rtdl_revisiting_models": _tab_models,
             "pytorch_tabnet": lambda: {"tabnet": (_tabnet, _fixed(CONT), True, "cnn")}}
ROUND5: dict[str, Entry] = {}
SKIPPED: list[str] = []  # packages not installed: their models are left out
for _pkg, _models in _PACKAGES.items():
    if importlib.util.find_spec(_pkg) is None:
        SKIPPED.append(_pkg)
    else:
        ROUND5.update(_models())
