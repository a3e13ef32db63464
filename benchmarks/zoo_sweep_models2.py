"""Round 3 of the zoo (session 11): more tiny public model classes for ``benchmarks/zoo_sweep.py``.

Same conventions as ``zoo_sweep_models.py`` (random weights, tiny widths, no downloads); this module adds
vision and text models to its ``VISION`` / ``TEXT`` tables and a third kind, ``OTHER``: models whose inputs
are neither images nor token ids (raw waveforms, spectrograms, torch's own ``nn.Transformer`` with a
source and a target). An ``OTHER`` entry is ``(builder, make_inputs, labelled)``: ``make_inputs(n, long,
seed)`` gives a batch of ``n`` (``long`` picks a second length where the model accepts one) and
``labelled`` says whether the model classifies (batches get class targets) or returns a sequence.

Example:
    >>> build, make_inputs, labelled = OTHER["wav2vec2"]
    >>> build()(make_inputs(2, False, 0)).logits.shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from zoo_sweep_models import LABELS, VOCAB, H, _hf, _t

# ------------------------------------------------------------------------------------------ vision
_VIT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8)  # fmt: skip


def _clip_vision() -> nn.Module:
    t = _t()
    return t.CLIPVisionModel(t.CLIPVisionConfig(**_VIT))


VISION2: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "convnext": (_hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1],
                     num_stages=2, layer_scale_init_value=0.5, num_labels=LABELS), "cnn"),
    "swinv2": (_hf("Swinv2ForImageClassification", "Swinv2Config", image_size=32, patch_size=4, embed_dim=16,
                   depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=LABELS), "transformer"),
    "efficientnet_hf": (_hf("EfficientNetForImageClassification", "EfficientNetConfig", image_size=32,
                            width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
                            num_labels=LABELS), "cnn"),
    "mobilenet_v1": (_hf("MobileNetV1ForImageClassification", "MobileNetV1Config", depth_multiplier=0.25,
                         image_size=32, num_labels=LABELS), "cnn"),
    "mobilevit": (_hf("MobileViTForImageClassification", "MobileViTConfig", image_size=64, patch_size=2,
                      hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                      num_attention_heads=2, num_labels=LABELS), "cnn"),
    "hiera": (_hf("HieraForImageClassification", "HieraConfig", embed_dim=8, image_size=[64, 64],
                  patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], depths=[1, 1, 1, 1],
                  num_heads=[1, 1, 2, 2], embed_dim_multiplier=2.0, num_query_pool=1, query_stride=[2, 2],
                  masked_unit_size=[8, 8], masked_unit_attention=[True, False, False, False],
                  num_labels=LABELS), "transformer"),
    "data2vec_vision": (_hf("Data2VecVisionForImageClassification", "Data2VecVisionConfig", **_VIT,
                            use_relative_position_bias=True, use_mean_pooling=True,
                            layer_scale_init_value=0.1, num_labels=LABELS), "transformer"),
    "clip_vision": (_clip_vision, "transformer"),
    "siglip": (_hf("SiglipForImageClassification", "SiglipConfig", vision_config=_VIT, text_config={},
                   num_labels=LABELS), "transformer"),
    "vit_msn": (_hf("ViTMSNForImageClassification", "ViTMSNConfig", **_VIT, num_labels=LABELS), "transformer"),
    "dinov2_reg": (_hf("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig", **_VIT,
                       num_register_tokens=2, layerscale_value=0.5, num_labels=LABELS), "transformer"),
    "textnet": (_hf("TextNetForImageClassification", "TextNetConfig", stem_out_channels=8,
                    conv_layer_kernel_sizes=[[[3, 3]], [[3, 3], [1, 3]], [[3, 1]], [[3, 3]]],
                    conv_layer_strides=[[1], [2, 1], [2], [2]],
                    hidden_sizes=[8, 8, 16, 16, 32, 32], num_labels=LABELS), "cnn"),
    "regnet_y": (_hf("RegNetForImageClassification", "RegNetConfig", embedding_size=8, hidden_sizes=[8, 16],
                     depths=[1, 2], groups_width=8, layer_type="y", num_labels=LABELS), "cnn"),
    "resnet_basic": (_hf("ResNetForImageClassification", "ResNetConfig", embedding_size=8, hidden_sizes=[8, 16],
                         depths=[1, 2], layer_type="basic", num_labels=LABELS), "cnn"),
}  # fmt: skip
IMAGE_SIZE2 = {"mobilevit": (64, 64), "hiera": (64, 64)}

# ------------------------------------------------------------------------------------------ text
_ENC = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
            max_position_embeddings=64, num_labels=3)  # fmt: skip
_DEC = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=VOCAB,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)  # fmt: skip


def _enc(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    return _hf(cls, cfg, **{**_ENC, **extra})


def _dec(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    return _hf(cls, cfg, **{**_DEC, **extra})


TEXT2: dict[str, Callable[[], nn.Module]] = {
    "bert": _enc("BertForSequenceClassification", "BertConfig"),
    "convbert": _enc("ConvBertForSequenceClassification", "ConvBertConfig", embedding_size=16, head_ratio=2,
                     conv_kernel_size=3),
    "funnel": _hf("FunnelForSequenceClassification", "FunnelConfig", d_model=H, n_head=4, d_head=8,
                  d_inner=37, block_sizes=[1, 1], num_decoder_layers=1, vocab_size=VOCAB, num_labels=3),
    "mobilebert": _enc("MobileBertForSequenceClassification", "MobileBertConfig", embedding_size=16,
                       intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2),
    "squeezebert": _enc("SqueezeBertForSequenceClassification", "SqueezeBertConfig", embedding_size=H, intermediate_size=48,
                        q_groups=2, k_groups=2, v_groups=2, post_attention_groups=2, intermediate_groups=2,
                        output_groups=2),
    "roformer": _enc("RoFormerForSequenceClassification", "RoFormerConfig", embedding_size=H),
    "modernbert": _enc("ModernBertForSequenceClassification", "ModernBertConfig", global_attn_every_n_layers=2,
                       local_attention=4, pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0,
                       sep_token_id=0),
    "ernie": _enc("ErnieForSequenceClassification", "ErnieConfig"),
    "nystromformer": _enc("NystromformerForSequenceClassification", "NystromformerConfig", num_landmarks=64,
                          segment_means_seq_len=64),
    "clip_text": _hf("CLIPTextModel", "CLIPTextConfig", hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, eos_token_id=2),
    "bloom": _hf("BloomForCausalLM", "BloomConfig", hidden_size=H, n_layer=2, n_head=4, vocab_size=VOCAB),
    "falcon": _dec("FalconForCausalLM", "FalconConfig", new_decoder_architecture=True, num_kv_heads=2,
                   ffn_hidden_size=48),
    "gptj": _hf("GPTJForCausalLM", "GPTJConfig", n_embd=H, n_layer=2, n_head=4, n_inner=48, rotary_dim=4,
                vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt_neox": _dec("GPTNeoXForCausalLM", "GPTNeoXConfig", rotary_pct=0.5),
    "codegen": _hf("CodeGenForCausalLM", "CodeGenConfig", n_embd=H, n_layer=2, n_head=4, n_inner=48,
                   rotary_dim=4, vocab_size=VOCAB, n_positions=64, n_ctx=64, bos_token_id=0, eos_token_id=0),
    "stablelm": _dec("StableLmForCausalLM", "StableLmConfig", num_key_value_heads=2, partial_rotary_factor=0.5),
    "phi3": _dec("Phi3ForCausalLM", "Phi3Config", num_key_value_heads=2),
    "qwen3": _dec("Qwen3ForCausalLM", "Qwen3Config", num_key_value_heads=2, head_dim=8),
    "gemma2": _dec("Gemma2ForCausalLM", "Gemma2Config", num_key_value_heads=2, head_dim=8, sliding_window=4),
    "gemma3_text": _dec("Gemma3ForCausalLM", "Gemma3TextConfig", num_key_value_heads=2, head_dim=8,
                        sliding_window=4),
    "olmo": _dec("OlmoForCausalLM", "OlmoConfig", num_key_value_heads=2, clip_qkv=8.0),
    "olmo2": _dec("Olmo2ForCausalLM", "Olmo2Config", num_key_value_heads=2),
    "granite": _dec("GraniteForCausalLM", "GraniteConfig", num_key_value_heads=2, embedding_multiplier=2.0,
                    residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=2.0),
    "starcoder2": _dec("Starcoder2ForCausalLM", "Starcoder2Config", num_key_value_heads=2, sliding_window=4),
    "mixtral": _dec("MixtralForCausalLM", "MixtralConfig", num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2),
    "qwen2_moe": _dec("Qwen2MoeForCausalLM", "Qwen2MoeConfig", num_key_value_heads=2, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24),
    "olmoe": _dec("OlmoeForCausalLM", "OlmoeConfig", num_key_value_heads=2, num_experts=4,
                  num_experts_per_tok=2),
    "mamba": _hf("MambaForCausalLM", "MambaConfig", hidden_size=H, state_size=4, num_hidden_layers=2,
                 expand=2, conv_kernel=3, vocab_size=VOCAB, pad_token_id=0, bos_token_id=0, eos_token_id=0),
}  # fmt: skip


# ------------------------------------------------------------------------------------------ other inputs
def _waveform(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randn(n, 640 if long else 400, generator=torch.Generator().manual_seed(seed))


def _mel(bins: int, frames: int) -> Callable[[int, bool, int], torch.Tensor]:
    def make(n: int, long: bool, seed: int) -> torch.Tensor:  # a fixed length: `long` is ignored
        return torch.randn(n, bins, frames, generator=torch.Generator().manual_seed(seed))

    return make


def _src_tgt(first: str, second: str) -> Callable[[int, bool, int], dict[str, torch.Tensor]]:
    def make(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {
            first: torch.randn(n, 7 if long else 5, H, generator=gen),
            second: torch.randn(n, 6, H, generator=gen),
        }

    return make


_AUDIO = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
              num_conv_pos_embedding_groups=4, num_labels=LABELS, use_weighted_layer_sum=False)  # fmt: skip


def _torch_transformer() -> nn.Module:
    return nn.Transformer(H, 4, 1, 1, dim_feedforward=48, dropout=0.0, batch_first=True)


def _torch_decoder_layer() -> nn.Module:
    return nn.TransformerDecoderLayer(H, 4, dim_feedforward=48, dropout=0.0, batch_first=True)


OTHER: dict[str, tuple[Callable[[], nn.Module], Callable[[int, bool, int], Any], bool]] = {
    "wav2vec2": (_hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", **_AUDIO), _waveform, True),
    "hubert": (_hf("HubertForSequenceClassification", "HubertConfig", **_AUDIO), _waveform, True),
    "wavlm": (_hf("WavLMForSequenceClassification", "WavLMConfig", **_AUDIO, num_buckets=16,
                  max_bucket_distance=32), _waveform, True),
    "whisper_enc": (_hf("WhisperForAudioClassification", "WhisperConfig", d_model=H, encoder_layers=2,
                        encoder_attention_heads=4, encoder_ffn_dim=48, decoder_layers=1,
                        decoder_attention_heads=4, decoder_ffn_dim=48, num_mel_bins=8,
                        max_source_positions=16, max_target_positions=16, vocab_size=VOCAB,
                        num_labels=LABELS), _mel(8, 32), True),
    "ast": (_hf("ASTForAudioClassification", "ASTConfig", hidden_size=H, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=37, patch_size=4, frequency_stride=4, time_stride=4,
                max_length=16, num_mel_bins=16, num_labels=LABELS), _mel(16, 16), True),
    "torch_transformer": (_torch_transformer, _src_tgt("src", "tgt"), False),
    "torch_decoder_layer": (_torch_decoder_layer, _src_tgt("tgt", "memory"), False),
}  # fmt: skip
