"""Round 7 of the zoo (session 15): model classes other authors wrote, for ``benchmarks/zoo_sweep.py --round 7``.

``peft`` (LoRA / IA3 / LoHa wrapped transformers and CNNs: what users bring after fine-tuning), lucidrains'
pure-torch packages (``perceiver-pytorch``, ``mlp-mixer-pytorch``, ``conformer``, ``performer-pytorch``,
``g-mlp-pytorch``, ``nystrom-attention``), ``fair-esm`` (ESM-2 protein transformer), ``stable-baselines3`` policies
(MLP / CNN actor-critic, DQN Q-network, TD3 / SAC actors), ``snntorch`` (spiking nets run over time steps),
``brevitas`` (already-quantized layers), ``kornia`` local-feature descriptors (HardNet, HardNet8, TFeat, SOSNet,
HyNet; random weights) and ``transformers`` classes rounds 1-6 did not build (Speech2Text, LED, Longformer,
Reformer, SEW, Data2VecAudio, MPT, XGLM). Random weights, tiny widths, no downloads.

The only wrappers: a stable-baselines3 actor-critic is called with ``deterministic=True`` (its default samples
actions) and a snntorch net is a tutorial-style loop over time steps whose layers are snntorch's. A package that
is absent is skipped and named in ``SKIPPED``.

An entry of ``ROUND7`` is ``(builder, make_inputs, labelled, family)`` as in ``zoo_sweep_models3.ROUND4``.

Example:
    >>> build, make_inputs, labelled, family = ROUND7["kornia_hardnet"]
    >>> build()(make_inputs(2, False, 0)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from zoo_sweep_models import LABELS, VOCAB, _hf
from zoo_sweep_models3 import Make, _fixed, _gen, _ids, _ids_mask, _seq2seq, _wave  # round 4's inputs

Entry = tuple[Callable[[], nn.Module], Make, bool, str]
SKIPPED: list[str] = []  # packages not installed: their models are left out


# ------------------------------------------------------------------------------------------ peft
def _peft(base: Callable[[], nn.Module], kind: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import peft

        torch.manual_seed(0)
        model = peft.get_peft_model(base(), getattr(peft, f"{kind}Config")(**kw))
        for name, p in model.named_parameters():  # adapters start as the identity (B = 0): make them count
            if "lora_B" in name or "hada_w2" in name or "ia3_l" in name:
                with torch.no_grad():
                    p.normal_(0, 0.05) if "ia3" not in name else p.uniform_(0.8, 1.2)
        return model

    return build


class SmallCNN(nn.Module):
    """A user's own CNN (conv-bn-relu x 2, pooled head): what a LoRA / LoHa adapter wraps in ``peft_*_cnn``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64, num_labels=LABELS)  # fmt: skip
_LLAMA = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=48, max_position_embeddings=64, pad_token_id=0)  # fmt: skip


def _peft_models() -> dict[str, Entry]:
    bert = _hf("BertForSequenceClassification", "BertConfig", **_BERT)
    llama = _hf("LlamaForCausalLM", "LlamaConfig", **_LLAMA)
    lm = "transformer"
    return {
        "peft_lora_bert": (_peft(bert, "Lora", r=4, lora_alpha=8, target_modules=["query", "value"],
                                 task_type="SEQ_CLS"), _ids_mask, True, lm),
        "peft_lora_llama": (_peft(llama, "Lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                  task_type="CAUSAL_LM"), _ids, False, lm),
        "peft_ia3_bert": (_peft(bert, "IA3", target_modules=["key", "value", "output.dense"],
                                feedforward_modules=["output.dense"], task_type="SEQ_CLS"), _ids_mask, True, lm),
        "peft_prefix_gpt2": (_peft(_hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64), "PrefixTuning", num_virtual_tokens=4, task_type="CAUSAL_LM"),
                             _ids, False, lm),
        "peft_lora_cnn": (_peft(SmallCNN, "Lora", r=4, target_modules=["conv1", "conv2", "fc"]), _fixed(3, 16, 16),
                          True, "cnn"),
        "peft_loha_cnn": (_peft(SmallCNN, "LoHa", r=4, target_modules=["conv2", "fc"]), _fixed(3, 16, 16), True,
                          "cnn"),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ lucidrains
def _cls(module: str, cls: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(importlib.import_module(module), cls)(**kw)

    return build


def _tokens(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 16), generator=_gen(seed))  # fixed length: some models need a multiple


def _lucidrains_models() -> dict[str, Entry]:
    tf = "transformer"
    found = {  # each package on its own: an absent one drops its models only
        "perceiver": (_cls("perceiver_pytorch", "Perceiver", input_channels=3, input_axis=2, num_freq_bands=4,
                           max_freq=10.0, depth=2, num_latents=8, latent_dim=32, cross_heads=1, latent_heads=4,
                           cross_dim_head=8, latent_dim_head=8, num_classes=LABELS, self_per_cross_attn=1),
                      _fixed(8, 8, 3), True, tf),
        "mlp_mixer": (_cls("mlp_mixer_pytorch", "MLPMixer", image_size=16, channels=3, patch_size=4, dim=32, depth=2,
                           num_classes=LABELS), _fixed(3, 16, 16), True, tf),
        "conformer_block": (_cls("conformer", "ConformerBlock", dim=32, dim_head=8, heads=4, ff_mult=2,
                                 conv_expansion_factor=2, conv_kernel_size=7), _fixed(12, 32), False, tf),
        "performer_lm": (_cls("performer_pytorch", "PerformerLM", num_tokens=VOCAB, max_seq_len=32, dim=32, depth=2,
                              heads=4, dim_head=8, nb_features=16, causal=True, feature_redraw_interval=10**9),
                         _tokens, False, tf),
        "gmlp_vision": (_cls("g_mlp_pytorch", "gMLPVision", image_size=16, patch_size=4, num_classes=LABELS, dim=32,
                             depth=2), _fixed(3, 16, 16), True, tf),
        "gmlp_lm": (_cls("g_mlp_pytorch", "gMLP", num_tokens=VOCAB, dim=32, depth=2, seq_len=16, attn_dim=16),
                    _tokens, False, tf),
        "nystrom": (_cls("nystrom_attention", "Nystromformer", dim=32, dim_head=8, heads=4, depth=2,
                         num_landmarks=4), _fixed(16, 32), False, tf),
    }  # fmt: skip
    absent = sorted({p for p in _LUCIDRAINS.values() if importlib.util.find_spec(p) is None})
    SKIPPED.extend(absent)  # each package on its own: an absent one is named, the others still run
    return {n: e for n, e in found.items() if _LUCIDRAINS[n] not in absent}


_LUCIDRAINS = {"perceiver": "perceiver_pytorch", "mlp_mixer": "mlp_mixer_pytorch", "conformer_block": "conformer",
               "performer_lm": "performer_pytorch", "gmlp_vision": "g_mlp_pytorch", "gmlp_lm": "g_mlp_pytorch",
               "nystrom": "nystrom_attention"}  # fmt: skip


# ------------------------------------------------------------------------------------------ fair-esm
class _Esm2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import esm

        self.net = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4,
                                       alphabet=esm.data.Alphabet.from_architecture("ESM-1b"))  # fmt: skip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)["logits"]


def _protein(n: int, long: bool, seed: int) -> torch.Tensor:
    return torch.randint(4, 24, (n, 11 if long else 9), generator=_gen(seed))  # amino-acid tokens of ESM-1b


# ------------------------------------------------------------------------------------------ stable-baselines3
class _Deterministic(nn.Module):
    """An SB3 actor-critic called as users deploy it: ``policy(obs, deterministic=True)``."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.policy(obs, deterministic=True)


def _sb3(kind: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import numpy as np
        from gymnasium import spaces
        from stable_baselines3.common import policies
        from stable_baselines3.common.torch_layers import FlattenExtractor
        from stable_baselines3.dqn.policies import QNetwork
        from stable_baselines3.sac.policies import Actor as SacActor
        from stable_baselines3.td3.policies import Actor as Td3Actor

        lr = lambda _: 1e-3  # noqa: E731 - SB3 takes a schedule
        vec = spaces.Box(-1.0, 1.0, (8,), dtype=np.float32)
        box = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
        if kind == "mlp":
            return _Deterministic(policies.ActorCriticPolicy(vec, spaces.Discrete(4), lr, net_arch=[32, 32]))
        if kind == "mlp_box":
            return _Deterministic(policies.ActorCriticPolicy(vec, box, lr, net_arch=dict(pi=[32], vf=[16])))
        if kind == "cnn":
            img = spaces.Box(0, 255, (3, 40, 40), dtype=np.uint8)
            return _Deterministic(policies.ActorCriticCnnPolicy(img, spaces.Discrete(4), lr,
                                                               features_extractor_kwargs={"features_dim": 32}))
        ext = FlattenExtractor(vec)
        if kind == "dqn":
            return QNetwork(vec, spaces.Discrete(4), ext, 8, net_arch=[32, 32])
        if kind == "td3":
            return Td3Actor(vec, box, [32, 32], ext, 8)
        return _Deterministic(SacActor(vec, box, [32, 32], ext, 8))  # its default samples

    return build


def _sb3_models() -> dict[str, Entry]:
    obs = _fixed(8)
    return {
        "sb3_ac_mlp": (_sb3("mlp"), obs, False, "cnn"),
        "sb3_ac_mlp_box": (_sb3("mlp_box"), obs, False, "cnn"),
        "sb3_ac_cnn": (_sb3("cnn"), _fixed(3, 40, 40), False, "cnn"),
        "sb3_dqn_q": (_sb3("dqn"), obs, False, "cnn"),
        "sb3_td3_actor": (_sb3("td3"), obs, False, "cnn"),
        "sb3_sac_actor": (_sb3("sac"), obs, False, "cnn"),
    }


# ------------------------------------------------------------------------------------------ snntorch
class SpikingMLP(nn.Module):
    """snntorch's tutorial net: Linear -> Leaky (or Synaptic) over ``steps`` steps, spike counts out."""

    def __init__(self, neuron: str = "Leaky", steps: int = 4) -> None:
        super().__init__()
        import snntorch as snn

        self.steps = steps
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, LABELS)
        make = getattr(snn, neuron)
        kw = {"Synaptic": {"alpha": 0.8}, "RLeaky": {"all_to_all": False}}.get(neuron, {})  # RLeaky: own feedback
        self.lif1, self.lif2 = make(beta=0.9, **kw), make(beta=0.9, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s2 = (s if isinstance(s, tuple) else (s,) for s in (self.lif1.reset_mem(), self.lif2.reset_mem()))
        total = 0
        for _ in range(self.steps):
            out1 = self.lif1(self.fc1(x), *s1)
            out2 = self.lif2(self.fc2(out1[0]), *s2)
            s1, s2 = out1[1:], out2[1:]
            total = total + out2[-1]  # membrane potential: a smooth output (spike counts are steps)
        return total / self.steps


class SpikingCNN(nn.Module):
    """Conv -> Leaky -> pooled Linear over time steps (snntorch's convolutional tutorial, smaller)."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        import snntorch as snn

        self.steps = steps
        self.conv, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.lif1, self.fc, self.lif2 = snn.Leaky(beta=0.8), nn.Linear(8 * 4 * 4, LABELS), snn.Leaky(beta=0.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m1, m2, total = self.lif1.reset_mem(), self.lif2.reset_mem(), 0
        for _ in range(self.steps):
            s1, m1 = self.lif1(nn.functional.avg_pool2d(self.bn(self.conv(x)), 2), m1)
            _, m2 = self.lif2(self.fc(s1.flatten(1)), m2)
            total = total + m2
        return total


def _snn_models() -> dict[str, Entry]:
    return {
        "snn_leaky_mlp": (lambda: SpikingMLP("Leaky"), _fixed(16), True, "cnn"),
        "snn_synaptic_mlp": (lambda: SpikingMLP("Synaptic"), _fixed(16), True, "cnn"),
        "snn_rleaky_mlp": (lambda: SpikingMLP("RLeaky"), _fixed(16), True, "cnn"),
        "snn_leaky_cnn": (SpikingCNN, _fixed(1, 8, 8), True, "cnn"),
    }


# ------------------------------------------------------------------------------------------ brevitas
def _brevitas(conv: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import brevitas.nn as qnn

        if conv:
            return nn.Sequential(qnn.QuantIdentity(return_quant_tensor=False), qnn.QuantConv2d(3, 8, 3, weight_bit_width=4),
                                 nn.BatchNorm2d(8), qnn.QuantReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 qnn.QuantLinear(8, LABELS, bias=True, weight_bit_width=4))  # fmt: skip
        return nn.Sequential(qnn.QuantLinear(16, 32, bias=True, weight_bit_width=4), qnn.QuantReLU(),
                             qnn.QuantLinear(32, LABELS, bias=True, weight_bit_width=4))  # fmt: skip

    return build


def _brevitas_models() -> dict[str, Entry]:
    return {
        "brevitas_mlp": (_brevitas(False), _fixed(16), True, "cnn"),
        "brevitas_cnn": (_brevitas(True), _fixed(3, 16, 16), True, "cnn"),
    }


# ------------------------------------------------------------------------------------------ kornia
def _kornia_models() -> dict[str, Entry]:
    patch = _fixed(1, 32, 32)
    out = {f"kornia_{n.lower()}": (_cls("kornia.feature", n, pretrained=False), patch, False, "cnn")
           for n in ("HardNet", "HardNet8", "TFeat", "SOSNet")}  # fmt: skip
    out["kornia_hynet"] = (_cls("kornia.feature", "HyNet", pretrained=False), patch, False, "cnn")
    return out


# ------------------------------------------------------------------------------------------ transformers
def _speech(n: int, long: bool, seed: int) -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(n, 24 if long else 20, 16, generator=_gen(seed)),
            "decoder_input_ids": torch.randint(2, VOCAB, (n, 5 if long else 4), generator=_gen(seed + 7))}  # fmt: skip


_ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, num_labels=LABELS)  # fmt: skip
_AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, conv_dim=(16, 16),
              conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
              num_labels=LABELS)  # fmt: skip
_S2S = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, pad_token_id=0,
            decoder_start_token_id=2)  # fmt: skip


def _hf_models() -> dict[str, Entry]:
    tf = "transformer"
    return {
        "hf_speech2text": (_hf("Speech2TextForConditionalGeneration", "Speech2TextConfig", **_S2S,
                               max_source_positions=64, max_target_positions=32, input_feat_per_channel=16,
                               num_conv_layers=2, conv_channels=16, conv_kernel_sizes=[5, 5]), _speech, False, tf),
        "hf_led": (_hf("LEDForConditionalGeneration", "LEDConfig", **_S2S, max_encoder_position_embeddings=64,
                       max_decoder_position_embeddings=32, attention_window=[4, 4]), _seq2seq, False, tf),
        "hf_longformer": (_hf("LongformerForSequenceClassification", "LongformerConfig", **_ENC, attention_window=4,
                              pad_token_id=1), _ids_mask, True, tf),
        "hf_reformer": (_hf("ReformerModelWithLMHead", "ReformerConfig", vocab_size=VOCAB, hidden_size=32,
                            num_attention_heads=2, attention_head_size=16, feed_forward_size=48, axial_pos_shape=[4, 4],
                            axial_pos_embds_dim=[16, 16], max_position_embeddings=16, attn_layers=["local", "lsh"],
                            local_attn_chunk_length=4, lsh_attn_chunk_length=4, num_buckets=2, is_decoder=True, hash_seed=0,
                            pad_token_id=0), _tokens, False, tf),
        "hf_sew": (_hf("SEWForSequenceClassification", "SEWConfig", **_AUDIO, squeeze_factor=2), _wave, True, tf),
        "hf_data2vec_audio": (_hf("Data2VecAudioForSequenceClassification", "Data2VecAudioConfig",
                                  **{**_AUDIO, "num_conv_pos_embeddings": 5}, conv_pos_kernel_size=5), _wave, True, tf),
        "hf_mpt": (_hf("MptForCausalLM", "MptConfig", vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2,
                       expansion_ratio=2, max_seq_len=64), _ids, False, tf),
        "hf_xglm": (_hf("XGLMForCausalLM", "XGLMConfig", vocab_size=VOCAB, d_model=32, num_layers=2,
                        attention_heads=4, ffn_dim=48, max_position_embeddings=64, pad_token_id=1), _ids, False, tf),
    }  # fmt: skip


_PACKAGES = {"peft": _peft_models, "einops": _lucidrains_models, "esm": lambda: {
    "esm2": (_Esm2, _protein, False, "transformer")}, "stable_baselines3": _sb3_models, "snntorch": _snn_models,
    "brevitas": _brevitas_models, "kornia": _kornia_models, "transformers": _hf_models}  # fmt: skip
ROUND7: dict[str, Entry] = {}
for _pkg, _models in _PACKAGES.items():
    if importlib.util.find_spec(_pkg) is None:
        SKIPPED.append(_pkg)
        if _pkg == "einops":  # lucidrains' packages all need it: name the absent ones too, as when einops is there
            SKIPPED.extend(sorted({p for p in _LUCIDRAINS.values() if importlib.util.find_spec(p) is None}))
    else:
        ROUND7.update(_models())
