"""Tiny random-weight public model classes for ``benchmarks/zoo_sweep.py`` (no downloads).

Each builder returns a model in eval mode; vision models take 32x32 (or 64x64, ``IMAGE_SIZE``) images,
text models ``{"input_ids", "attention_mask"}`` of any sequence length. Widths are tiny (16-48) so the
whole sweep runs in minutes on two shared cores.

Example:
    >>> model = VISION["swin"]()
    >>> model(torch.randn(1, 3, *IMAGE_SIZE.get("swin", (32, 32)))).logits.shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

LABELS = 10
VOCAB = 99
H = 32


def _t() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _vit_like(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        t = _t()
        kw = dict(
            hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8, num_labels=LABELS,
        )  # fmt: skip
        kw.update(extra)
        return getattr(t, cls)(getattr(t, cfg)(**kw))

    return build


def _hf(cls: str, cfg: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        t = _t()
        return getattr(t, cls)(getattr(t, cfg)(**kw))

    return build


def _efficientnet_pytorch(
    model_name: str, width: float, depth: float, static: bool
) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import efficientnet_pytorch as ep
        from efficientnet_pytorch.utils import get_model_params

        params = {
            "image_size": 32 if static else None,
            "width_coefficient": width,
            "depth_coefficient": depth,
        }
        model = ep.EfficientNet(*get_model_params(model_name, {**params, "num_classes": LABELS}))
        model.set_swish(memory_efficient=False)
        return model

    return build


# name -> (builder, family): "cnn" goes through prune_channels, "transformer" through prune_transformer
VISION: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "swin": (_hf("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                 depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=LABELS), "transformer"),
    "vit": (_vit_like("ViTForImageClassification", "ViTConfig"), "transformer"),
    "deit": (_vit_like("DeiTForImageClassification", "DeiTConfig"), "transformer"),
    "beit": (_vit_like("BeitForImageClassification", "BeitConfig", use_relative_position_bias=True,
                       use_mean_pooling=True, layer_scale_init_value=0.1), "transformer"),
    "dinov2": (_vit_like("Dinov2ForImageClassification", "Dinov2Config", layerscale_value=0.5), "transformer"),
    "convnextv2": (_hf("ConvNextV2ForImageClassification", "ConvNextV2Config", hidden_sizes=[8, 16],
                       depths=[1, 1], num_stages=2, num_labels=LABELS), "cnn"),
    "levit": (_hf("LevitForImageClassification", "LevitConfig", image_size=64, patch_size=16,
                  hidden_sizes=[16, 24, 32], num_attention_heads=[2, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8],
                  drop_path_rate=0, mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2],
                  down_ops=[["Subsample", 8, 1, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]],
                  num_labels=LABELS), "transformer"),
    "poolformer": (_hf("PoolFormerForImageClassification", "PoolFormerConfig", hidden_sizes=[8, 16, 24, 32],
                       depths=[1, 1, 1, 1], num_encoder_blocks=4, num_labels=LABELS), "cnn"),
    "swiftformer": (_hf("SwiftFormerForImageClassification", "SwiftFormerConfig", depths=[1, 1, 1, 1],
                        embed_dims=[8, 16, 24, 32], num_labels=LABELS), "cnn"),
    "segformer": (_hf("SegformerForImageClassification", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1],
                      sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                      patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], num_labels=LABELS),
                  "transformer"),
    "cvt": (_hf("CvtForImageClassification", "CvtConfig", embed_dim=[16, 32], num_heads=[1, 2], depth=[1, 2],
                patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], mlp_ratio=[2.0, 2.0],
                attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0], drop_path_rate=[0.0, 0.0],
                qkv_bias=[True, True], cls_token=[False, True], qkv_projection_method=["dw_bn", "dw_bn"],
                kernel_qkv=[3, 3], padding_kv=[1, 1], stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1],
                num_labels=LABELS), "transformer"),
    "pvt": (_hf("PvtForImageClassification", "PvtConfig", image_size=32, num_encoder_blocks=2, depths=[1, 1],
                sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                patch_sizes=[4, 2], strides=[4, 2], mlp_ratios=[2, 2], num_labels=LABELS), "transformer"),
    "pvt_v2": (_hf("PvtV2ForImageClassification", "PvtV2Config", image_size=32, num_encoder_blocks=2,
                   depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                   patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], num_labels=LABELS), "transformer"),
    "focalnet": (_hf("FocalNetForImageClassification", "FocalNetConfig", image_size=32, patch_size=4,
                     embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3],
                     num_labels=LABELS), "cnn"),
    "bit": (_hf("BitForImageClassification", "BitConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                layer_type="preactivation", global_padding="SAME", num_groups=4, num_labels=LABELS), "cnn"),
    "bit_bottleneck": (_hf("BitForImageClassification", "BitConfig", embedding_size=8, hidden_sizes=[16, 32],
                           depths=[1, 1], layer_type="bottleneck", num_groups=4, num_labels=LABELS), "cnn"),
    "resnet_bottleneck": (_hf("ResNetForImageClassification", "ResNetConfig", embedding_size=8,
                              hidden_sizes=[16, 32], depths=[1, 2], layer_type="bottleneck",
                              downsample_in_first_stage=True, downsample_in_bottleneck=True,
                              num_labels=LABELS), "cnn"),
    "mobilenet_v2_035": (_hf("MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.35,
                             image_size=32, num_labels=LABELS), "cnn"),
    "mobilenet_v2_05_tf": (_hf("MobileNetV2ForImageClassification", "MobileNetV2Config", depth_multiplier=0.5,
                               image_size=32, tf_padding=True, finegrained_output=False, num_labels=LABELS),
                           "cnn"),
    "regnet_x": (_hf("RegNetForImageClassification", "RegNetConfig", embedding_size=8, hidden_sizes=[8, 16],
                     depths=[1, 1], groups_width=8, layer_type="x", num_labels=LABELS), "cnn"),
    "mobilevit_v2": (_hf("MobileViTV2ForImageClassification", "MobileViTV2Config", image_size=64,
                         width_multiplier=0.25, num_labels=LABELS), "cnn"),
    "effnet_pt_b1_static": (_efficientnet_pytorch("efficientnet-b1", 0.3, 0.2, static=True), "cnn"),
    "effnet_pt_b3_dynamic": (_efficientnet_pytorch("efficientnet-b3", 0.2, 0.1, static=False), "cnn"),
}  # fmt: skip
IMAGE_SIZE = {"levit": (64, 64), "mobilevit_v2": (64, 64)}


def _encoder(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    kw = dict(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
        max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    kw.update(extra)
    return _hf(cls, cfg, **kw)


def _decoder(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    kw = dict(
        hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=VOCAB,
        max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    kw.update(extra)
    return _hf(cls, cfg, **kw)


TEXT: dict[str, Callable[[], nn.Module]] = {
    "roberta": _encoder("RobertaForSequenceClassification", "RobertaConfig", pad_token_id=1),
    "distilbert": _hf("DistilBertForSequenceClassification", "DistilBertConfig", dim=H, n_layers=2, n_heads=4,
                      hidden_dim=37, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3),
    "albert": _encoder("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16),
    "electra": _encoder("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16),
    "deberta_v2": _encoder("DebertaV2ForSequenceClassification", "DebertaV2Config", relative_attention=True,
                           pos_att_type=["p2c", "c2p"], max_relative_positions=16, position_buckets=8),
    "mpnet": _encoder("MPNetForSequenceClassification", "MPNetConfig"),
    "xlm_roberta": _encoder("XLMRobertaForSequenceClassification", "XLMRobertaConfig", pad_token_id=1),
    "gpt2": _hf("GPT2LMHeadModel", "GPT2Config", n_embd=H, n_layer=2, n_head=4, vocab_size=VOCAB,
                n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt_neo": _hf("GPTNeoForCausalLM", "GPTNeoConfig", hidden_size=H, num_layers=2, num_heads=4,
                   attention_types=[[["global", "local"], 1]], window_size=4, intermediate_size=48,
                   vocab_size=VOCAB, max_position_embeddings=64),
    "opt": _hf("OPTForCausalLM", "OPTConfig", hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
               ffn_dim=48, word_embed_proj_dim=H, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=1),
    "llama": _decoder("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2),
    "mistral": _decoder("MistralForCausalLM", "MistralConfig", num_key_value_heads=2, sliding_window=4),
    "qwen2": _decoder("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=2),
    "phi": _decoder("PhiForCausalLM", "PhiConfig", partial_rotary_factor=0.5),
    "gemma": _decoder("GemmaForCausalLM", "GemmaConfig", num_key_value_heads=1, head_dim=16),
    "t5_encoder": _hf("T5EncoderModel", "T5Config", d_model=H, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      vocab_size=VOCAB, relative_attention_num_buckets=8),
}  # fmt: skip


def text_inputs(n: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids in [2, VOCAB) and a mask with the first sentence padded after two thirds."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, seq), generator=gen)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, seq * 2 // 3 :] = 0
    return {"input_ids": ids, "attention_mask": mask}
