"""Round 4 of the zoo (session 12): structures rounds 1-3 did not try, for ``benchmarks/zoo_sweep.py --round 4``.

Recurrent classifiers, encoder-decoders with decoder inputs, vision-language dual towers, dense prediction
(segmentation, depth, detection), time series with many inputs, U-Nets, Conv3d, grouped / dilated convs, weight
tying, EmbeddingBag recommenders, parameters read outside modules. Random weights, tiny widths, no downloads.

An entry of ``ROUND4`` is ``(builder, make_inputs, labelled, family)``: ``make_inputs(n, long, seed)`` gives a
batch of ``n`` (``long`` picks a second sequence length where the model takes one), ``labelled`` says whether the
batches carry class targets, ``family`` picks the pruning verb (``"cnn"``: channel pruning; ``"transformer"``:
``prune_transformer``). Every round-4 model goes through every verb of both earlier tables.
``diffusers`` is optional: its UNet is left out where the package is absent.

Example:
    >>> build, make_inputs, labelled, family = ROUND4["lstm_bi_2l"]
    >>> build()(make_inputs(2, False, 0)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import zoo_sweep_torch_models as tm
from torch import nn
from zoo_sweep_models import LABELS, VOCAB, H, _hf, _t, text_inputs
from zoo_sweep_models import _efficientnet_pytorch as _effnet

Make = Callable[[int, bool, int], Any]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ inputs
def _ids(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, 11 if long else 9), generator=_gen(seed))


def _ids_mask(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return text_inputs(n, 11 if long else 9, seed)


def _seq2seq(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return {**text_inputs(n, 11 if long else 9, seed),
            "decoder_input_ids": torch.randint(2, VOCAB, (n, 6 if long else 5), generator=_gen(seed + 7))}  # fmt: skip


def _fixed(*shape: int) -> Make:
    def make(n: int, long: bool, seed: int) -> torch.Tensor:  # one size: `long` is ignored
        return torch.randn(n, *shape, generator=_gen(seed))

    return make


def _wave(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randn(n, 640 if long else 400, generator=_gen(seed))


def _features(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randn(n, 11 if long else 9, 12, generator=_gen(seed))


def _whisper(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(n, 8, 32, generator=_gen(seed)),
            "decoder_input_ids": torch.randint(2, VOCAB, (n, 5 if long else 4), generator=_gen(seed + 7))}  # fmt: skip


def _image_text(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return {**text_inputs(n, 11 if long else 9, seed), "pixel_values": torch.randn(n, 3, 32, 32, generator=_gen(seed))}


def _recsys(n: int, long: bool, seed: int) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    bag = 4 if long else 3
    return torch.randint(0, 50, (n, bag), generator=g), torch.randint(0, 60, (n, bag), generator=g), torch.randn(
        n, 4, generator=g)  # fmt: skip


def _timestep_unet(n: int, long: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g).float()


def _series(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return {"past_values": torch.randn(n, 32, 3, generator=_gen(seed))}


_TS = dict(prediction_length=4, context_length=8, lags_sequence=[1, 2], num_time_features=1, d_model=16,
           encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
           encoder_ffn_dim=32, decoder_ffn_dim=32)  # fmt: skip


def _ts_inputs(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    past = 10  # context_length + max(lags_sequence)
    return {"past_values": torch.randn(n, past, generator=g), "past_time_features": torch.randn(n, past, 1, generator=g),
            "past_observed_mask": torch.ones(n, past), "future_values": torch.randn(n, 4, generator=g),
            "future_time_features": torch.randn(n, 4, 1, generator=g)}  # fmt: skip


# ------------------------------------------------------------------------------------------ builders
def _s2s(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    kw = dict(d_model=H, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=VOCAB, max_position_embeddings=64,
              pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)  # fmt: skip
    return _hf(cls, cfg, **{**kw, **extra})


def _bart_encoder() -> nn.Module:
    return _s2s("BartForConditionalGeneration", "BartConfig")().get_encoder()


_WHISPER = dict(d_model=H, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=48, decoder_layers=1,
                decoder_attention_heads=4, decoder_ffn_dim=48, num_mel_bins=8, max_source_positions=16,
                max_target_positions=16, vocab_size=VOCAB, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=2)  # fmt: skip
_VIT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8)  # fmt: skip
_TXT = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB,
            max_position_embeddings=64)  # fmt: skip


def _dual(cls: str, cfg: str, **extra: Any) -> Callable[[], nn.Module]:
    return _hf(cls, cfg, text_config=_TXT, vision_config=_VIT, **extra)


def _sub(cls: str, cfg: str, **kw: Any) -> Callable[[], nn.Module]:
    return _hf(cls, cfg, **kw)


def _upernet() -> nn.Module:
    t = _t()
    backbone = t.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    return t.UperNetForSemanticSegmentation(t.UperNetConfig(backbone_config=backbone, hidden_size=16,
                                                            auxiliary_in_channels=24, auxiliary_channels=8,
                                                            num_labels=LABELS))  # fmt: skip


def _detr() -> nn.Module:
    t = _t()
    backbone = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              layer_type="basic", out_features=["stage4"])  # fmt: skip
    return t.DetrForObjectDetection(t.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=H,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=48, decoder_ffn_dim=48, num_queries=5, num_labels=LABELS))  # fmt: skip


def _mask2former() -> nn.Module:
    t = _t()
    backbone = t.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
                            window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    return t.Mask2FormerForUniversalSegmentation(t.Mask2FormerConfig(
        backbone_config=backbone, hidden_dim=32, num_queries=5, encoder_layers=1, decoder_layers=2,
        encoder_feedforward_dim=48, dim_feedforward=48, num_attention_heads=4, feature_size=32, mask_feature_size=32,
        num_labels=LABELS, common_stride=4))  # fmt: skip


def _diffusers_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=8)  # fmt: skip


_PATCHTST = dict(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=16,
                 num_attention_heads=2, num_hidden_layers=2, ffn_dim=32)  # fmt: skip
_MIXER = dict(context_length=32, patch_length=8, patch_stride=8, num_input_channels=3, d_model=16, num_layers=2)


ROUND4: dict[str, tuple[Callable[[], nn.Module], Make, bool, str]] = {
    # recurrent
    "lstm_bi_2l": (lambda: tm.RNNClassifier("LSTM", layers=2, bidirectional=True), _ids, True, "cnn"),
    "gru_seq_first": (lambda: tm.RNNClassifier("GRU", batch_first=False), _ids, True, "cnn"),
    "rnn_tanh_2l": (lambda: tm.RNNClassifier("RNN", layers=2), _ids, True, "cnn"),
    "lstm_proj": (lambda: tm.RNNClassifier("LSTM", bidirectional=True, proj=8), _ids, True, "cnn"),
    "gru_features": (tm.FeatureGRU, _features, True, "cnn"),
    "lstm_attention": (tm.LSTMAttention, _ids_mask, True, "cnn"),
    "conv_gru_audio": (tm.ConvGRUAudio, _wave, True, "cnn"),
    # encoder-decoder
    "t5": (_hf("T5ForConditionalGeneration", "T5Config", d_model=H, d_kv=8, d_ff=48, num_layers=2,
               num_decoder_layers=1, num_heads=4, vocab_size=VOCAB, relative_attention_num_buckets=8,
               decoder_start_token_id=0, pad_token_id=0), _seq2seq, False, "transformer"),
    "bart": (_s2s("BartForConditionalGeneration", "BartConfig"), _seq2seq, False, "transformer"),
    "marian": (_s2s("MarianMTModel", "MarianConfig", decoder_vocab_size=VOCAB), _seq2seq, False, "transformer"),
    "pegasus": (_s2s("PegasusForConditionalGeneration", "PegasusConfig"), _seq2seq, False, "transformer"),
    "m2m100": (_s2s("M2M100ForConditionalGeneration", "M2M100Config"), _seq2seq, False, "transformer"),
    "bart_encoder": (_bart_encoder, _ids_mask, False, "transformer"),
    "whisper": (_hf("WhisperForConditionalGeneration", "WhisperConfig", **_WHISPER), _whisper, False, "transformer"),
    # vision-language, several inputs
    "clip": (_dual("CLIPModel", "CLIPConfig", projection_dim=16), _image_text, False, "transformer"),
    "siglip_dual": (_dual("SiglipModel", "SiglipConfig"), _image_text, False, "transformer"),
    "siglip_text": (_sub("SiglipTextModel", "SiglipTextConfig", **_TXT), _ids_mask, False, "transformer"),
    "siglip_vision": (_sub("SiglipVisionModel", "SiglipVisionConfig", **_VIT), _fixed(3, 32, 32), False,
                      "transformer"),
    "vilt": (_hf("ViltForQuestionAnswering", "ViltConfig", **{**_TXT, **_VIT}, max_image_length=-1,
                 num_labels=LABELS), _image_text, False, "transformer"),
    "blip_itm": (_dual("BlipForImageTextRetrieval", "BlipConfig", projection_dim=16), _image_text, False,
                 "transformer"),
    # dense prediction, several output tensors
    "segformer_seg": (_hf("SegformerForSemanticSegmentation", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1],
                          sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                          strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=LABELS),
                      _fixed(3, 32, 32), False, "transformer"),
    "dpt": (_hf("DPTForDepthEstimation", "DPTConfig", **{**_VIT, "num_hidden_layers": 4}, backbone_out_indices=[0, 1, 2, 3],
                neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5]),
            _fixed(3, 32, 32), False, "transformer"),
    "upernet_convnext": (_upernet, _fixed(3, 32, 32), False, "cnn"),
    "detr": (_detr, _fixed(3, 64, 64), False, "transformer"),
    "mask2former": (_mask2former, _fixed(3, 64, 64), False, "transformer"),
    # time series
    "patchtst_cls": (_hf("PatchTSTForClassification", "PatchTSTConfig", **_PATCHTST, num_targets=LABELS), _series,
                     True, "transformer"),
    "patchtst_pred": (_hf("PatchTSTForPrediction", "PatchTSTConfig", **_PATCHTST, prediction_length=8), _series,
                      False, "transformer"),
    "patchtsmixer_pred": (_hf("PatchTSMixerForPrediction", "PatchTSMixerConfig", **_MIXER, prediction_length=8),
                          _series, False, "cnn"),
    "patchtsmixer_cls": (_hf("PatchTSMixerForTimeSeriesClassification", "PatchTSMixerConfig", **_MIXER,
                             num_targets=LABELS), _series, True, "cnn"),
    "ts_transformer": (_hf("TimeSeriesTransformerModel", "TimeSeriesTransformerConfig", **_TS), _ts_inputs, False,
                       "transformer"),
    "informer": (_hf("InformerModel", "InformerConfig", **_TS), _ts_inputs, False, "transformer"),
    "autoformer": (_hf("AutoformerModel", "AutoformerConfig", **_TS, label_length=4), _ts_inputs, False, "transformer"),
    # convolutional structures
    "effnet_pt_b0": (_effnet("efficientnet-b0", 0.25, 0.2, static=False), _fixed(3, 32, 32), True, "cnn"),
    "effnet_pt_b2_static": (_effnet("efficientnet-b2", 0.35, 0.3, static=True), _fixed(3, 32, 32), True, "cnn"),
    "unet_transpose": (tm.UNetTranspose, _fixed(3, 32, 32), False, "cnn"),
    "unet_upsample": (tm.UNetUpsample, _fixed(3, 32, 32), False, "cnn"),
    "video_conv3d": (tm.Video3D, _fixed(3, 4, 16, 16), True, "cnn"),
    "grouped_dilated": (tm.GroupedDilated, _fixed(3, 32, 32), True, "cnn"),
    "tied_gru_lm": (tm.TiedGRULM, _ids, False, "cnn"),
    "embbag_recsys": (tm.EmbeddingBagRecommender, _recsys, True, "cnn"),
    "outside_params": (tm.OutsideParams, _fixed(3, 8, 8), True, "cnn"),
}  # fmt: skip
if importlib.util.find_spec("diffusers") is not None:
    ROUND4["diffusers_unet"] = (_diffusers_unet, _timestep_unet, False, "cnn")
