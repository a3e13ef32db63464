"""Round 6 of the zoo (session 14): model classes other authors wrote, for ``benchmarks/zoo_sweep.py --round 6``.

``pytorchcv`` (pure-torch ImageNet / CIFAR architectures: ResNeXt, SE / pre-activation / pyramid / shake-shake /
shake-drop / DIA / RoR ResNets, DenseNet, MSDNet, NIN, MobileNetV3, GhostNet, ShuffleNet v1 / v2, RegNet X / Y,
HRNet, DLA, SqueezeNet, SqueezeNext, MnasNet, MixNet, ProxylessNAS, FBNet, IGCV3, MENet, CondenseNet, PeleeNet,
VoVNet, HarDNet, ResNeSt, Octave ResNet, ChannelNet, DiceNet), ``diffusers`` (conditional UNet with cross attention,
AutoencoderKL, VQ-VAE, DiT, 1-D UNet) and ``transformers`` classes rounds 1-5 did not build (Mamba-2, RWKV,
RecurrentGemma, Jamba, DeepSeek-V3, Cohere, FNet, XLNet, BigBird, CANINE, ESM, YOLOS). Random weights, tiny widths,
no downloads.

pytorchcv's ImageNet models end in ``AvgPool2d(kernel_size=7)`` sized for 224 x 224 inputs; at the 64 x 64 used here
that pool is swapped for ``AdaptiveAvgPool2d(1)`` (the only change made to an imported model). pytorchcv's
``model_provider`` imports torchvision (absent; installing it would replace torch), so each model's own module is
imported. A package that is absent is skipped and named in ``SKIPPED``.

An entry of ``ROUND6`` is ``(builder, make_inputs, labelled, family)`` as in ``zoo_sweep_models3.ROUND4``.

Example:
    >>> build, make_inputs, labelled, family = ROUND6["pcv_seresnet20"]
    >>> build()(make_inputs(2, False, 0)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from zoo_sweep_models import LABELS, VOCAB, _hf
from zoo_sweep_models3 import Make, _fixed, _gen, _ids, _ids_mask  # round 4's inputs, the same here

Entry = tuple[Callable[[], nn.Module], Make, bool, str]


# ------------------------------------------------------------------------------------------ pytorchcv
def _pcv(module: str, fn: str, imagenet: bool, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        make = getattr(importlib.import_module(f"pytorchcv.models.{module}"), fn)
        model = make(num_classes=LABELS, **({"in_size": (64, 64)} if imagenet else {}), **kw)
        for name, child in list(model.named_modules()):
            if isinstance(child, nn.AvgPool2d) and name.endswith("final_pool"):
                parent = model.get_submodule(name.rpartition(".")[0])
                setattr(parent, name.rpartition(".")[2], nn.AdaptiveAvgPool2d(1))
        return model

    return build


_CIFAR = {  # name: (module, function), 32 x 32 inputs
    "pcv_resnext20": ("resnext_cifar", "resnext20_16x4d_cifar10"),
    "pcv_seresnet20": ("seresnet_cifar", "seresnet20_cifar10"),
    "pcv_sepreresnet20": ("sepreresnet_cifar", "sepreresnet20_cifar10"),
    "pcv_densenet40": ("densenet_cifar", "densenet40_k12_cifar10"),
    "pcv_xdensenet40": ("xdensenet_cifar", "xdensenet40_2_k24_bc_cifar10"),
    "pcv_pyramidnet110": ("pyramidnet_cifar", "pyramidnet110_a48_cifar10"),
    "pcv_nin": ("nin_cifar", "nin_cifar10"),
    "pcv_ror3_56": ("ror_cifar", "ror3_56_cifar10"),
    "pcv_shakeshake20": ("shakeshakeresnet_cifar", "shakeshakeresnet20_2x16d_cifar10"),
    "pcv_shakedrop20": ("shakedropresnet_cifar", "shakedropresnet20_cifar10"),
    "pcv_diaresnet20": ("diaresnet_cifar", "diaresnet20_cifar10"),
    "pcv_resdrop20": ("resdropresnet_cifar", "resdropresnet20_cifar10"),
    "pcv_msdnet22": ("msdnet_cifar10", "msdnet22_cifar10"),
}
_IMAGENET = {  # name: (module, function), 64 x 64 inputs
    "pcv_mobilenetv3": ("mobilenetv3", "mobilenetv3_small_w7d20"),
    "pcv_ghostnet": ("ghostnet", "ghostnet"),
    "pcv_shufflenetv2": ("shufflenetv2", "shufflenetv2_wd2"),
    "pcv_shufflenet_g1": ("shufflenet", "shufflenet_g1_wd4"),
    "pcv_regnetx002": ("regnet", "regnetx002"),
    "pcv_regnety002": ("regnet", "regnety002"),
    "pcv_hrnet_w18s": ("hrnet", "hrnet_w18_small_v1"),
    "pcv_dla46xc": ("dla", "dla46xc"),
    "pcv_squeezenet": ("squeezenet", "squeezenet_v1_1"),
    "pcv_sqnxt23": ("squeezenext", "sqnxt23_w1"),
    "pcv_mnasnet_small": ("mnasnet", "mnasnet_small"),
    "pcv_mixnet_s": ("mixnet", "mixnet_s"),
    "pcv_proxylessnas": ("proxylessnas", "proxylessnas_mobile"),
    "pcv_fbnet_cb": ("fbnet", "fbnet_cb"),
    "pcv_igcv3": ("igcv3", "igcv3_wd4"),
    "pcv_menet": ("menet", "menet108_8x1_g3"),
    "pcv_condensenet": ("condensenet", "condensenet74_c4_g4"),
    "pcv_peleenet": ("peleenet", "peleenet"),
    "pcv_vovnet27s": ("vovnet", "vovnet27s"),
    "pcv_hardnet39": ("hardnet", "hardnet39ds"),
    "pcv_resnesta18": ("resnesta", "resnesta18"),
    "pcv_octresnet10": ("octresnet", "octresnet10_ad2"),
    "pcv_channelnet": ("channelnet", "channelnet"),
    "pcv_dicenet": ("dicenet", "dicenet_wd5"),
}


def _pcv_models() -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for name, (module, fn) in _CIFAR.items():
        out[name] = (_pcv(module, fn, False), _fixed(3, 32, 32), True, "cnn")
    for name, (module, fn) in _IMAGENET.items():
        out[name] = (_pcv(module, fn, True), _fixed(3, 64, 64), True, "cnn")
    return out


# ------------------------------------------------------------------------------------------ diffusers
def _diffusers(cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(importlib.import_module("diffusers"), cls)(**kw)

    return build


def _unet_cond_inputs(n: int, long: bool, seed: int) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    return (torch.randn(n, 4, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g).float(),
            torch.randn(n, 7 if long else 5, 16, generator=g))  # fmt: skip


def _dit_inputs(n: int, long: bool, seed: int) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randint(0, LABELS, (n,), generator=g))  # fmt: skip


def _unet1d_inputs(n: int, long: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, 2, 32, generator=g), torch.randint(0, 1000, (n,), generator=g).float()


_ENC = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))  # fmt: skip


def _diffusers_models() -> dict[str, Entry]:
    return {
        "diff_unet_cond": (_diffusers("UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4,
                                      layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                      attention_head_dim=4), _unet_cond_inputs, False, "cnn"),
        "diff_vae": (_diffusers("AutoencoderKL", latent_channels=4, sample_size=16, **_ENC), _fixed(3, 16, 16), False,
                     "cnn"),
        "diff_vq": (_diffusers("VQModel", latent_channels=4, num_vq_embeddings=16, vq_embed_dim=4, sample_size=16,
                               **_ENC), _fixed(3, 16, 16), False, "cnn"),
        "diff_dit": (_diffusers("DiTTransformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=LABELS),
                     _dit_inputs, False, "transformer"),
        "diff_unet1d": (_diffusers("UNet1DModel", sample_size=32, in_channels=2, out_channels=2,
                                   block_out_channels=(32, 32, 64), extra_in_channels=64, layers_per_block=1,
                                   down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
                                   up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
                                   mid_block_type="UNetMidBlock1D", time_embedding_type="fourier",
                                   use_timestep_embedding=False, flip_sin_to_cos=True, act_fn=None,
                                   out_block_type=None), _unet1d_inputs, False, "cnn"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ transformers
_LM = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=48, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                max_position_embeddings=64, num_labels=LABELS)  # fmt: skip


def _hf_models() -> dict[str, Entry]:
    lm = "transformer"
    return {
        "hf_mamba2": (_hf("Mamba2ForCausalLM", "Mamba2Config", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                          state_size=8, num_heads=4, head_dim=16, n_groups=1, expand=2, chunk_size=8), _ids, False, lm),
        "hf_rwkv": (_hf("RwkvForCausalLM", "RwkvConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        attention_hidden_size=32, intermediate_size=64, context_length=64), _ids, False, lm),
        "hf_recurrent_gemma": (_hf("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig", vocab_size=VOCAB,
                                   hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                   intermediate_size=48, lru_width=32, attention_window_size=8, conv1d_width=4,
                                   block_types=["recurrent", "recurrent", "attention"]), _ids, False, lm),
        "hf_jamba": (_hf("JambaForCausalLM", "JambaConfig", **_LM, num_experts=4, num_experts_per_tok=2,
                         expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1,
                         mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, use_mamba_kernels=False), _ids, False, lm),
        "hf_deepseek_v3": (_hf("DeepseekV3ForCausalLM", "DeepseekV3Config", **{**_LM, "num_key_value_heads": 4}, moe_intermediate_size=16,
                               n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                               n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                               qk_nope_head_dim=8, v_head_dim=8), _ids, False, lm),
        "hf_cohere": (_hf("CohereForCausalLM", "CohereConfig", **_LM), _ids, False, lm),
        "hf_fnet": (_hf("FNetForSequenceClassification", "FNetConfig", **{**_ENCODER, "num_attention_heads": 1}),
                    _ids, True, lm),
        "hf_xlnet": (_hf("XLNetForSequenceClassification", "XLNetConfig", vocab_size=VOCAB, d_model=32, n_layer=2,
                         n_head=4, d_inner=48, num_labels=LABELS), _ids_mask, True, lm),
        "hf_bigbird": (_hf("BigBirdForSequenceClassification", "BigBirdConfig", **_ENCODER,
                           attention_type="original_full"), _ids_mask, True, lm),
        "hf_canine": (_hf("CanineForSequenceClassification", "CanineConfig", **{**_ENCODER, "vocab_size": 0},
                          downsampling_rate=2, num_hash_buckets=64, num_hash_functions=2, local_transformer_stride=4),
                      _ids_mask, True, lm),
        "hf_esm": (_hf("EsmForSequenceClassification", "EsmConfig", **_ENCODER, pad_token_id=1, mask_token_id=2,
                       position_embedding_type="rotary"), _ids_mask, True, lm),
        "hf_yolos": (_hf("YolosForObjectDetection", "YolosConfig", hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=48, image_size=[32, 32], patch_size=8,
                         num_detection_tokens=4, num_labels=LABELS), _fixed(3, 32, 32), False, lm),
    }  # fmt: skip


_PACKAGES = {"pytorchcv": _pcv_models, "diffusers": _diffusers_models, "transformers": _hf_models}
ROUND6: dict[str, Entry] = {}
SKIPPED: list[str] = []  # packages not installed: their models are left out
for _pkg, _models in _PACKAGES.items():
    if importlib.util.find_spec(_pkg) is None:
        SKIPPED.append(_pkg)
    else:
        ROUND6.update(_models())
