"""Zoo round 4 (session 12): export of encoder-decoders, and what torch's exporter or ONNX Runtime refuses.

- Token ids of an encoder and a decoder (``input_ids`` 9 long, ``decoder_input_ids`` 5 long) shared the one
  symbolic dim ``sequence``: ONNX Runtime failed on the example itself (T5, BART, Marian, Pegasus, M2M100).
- torch's exporter refusing an operation (an LSTM with ``proj_size``; ViLT's ``multinomial``, Informer's
  ``randint``, UperNet's adaptive pooling) escaped as a raw ``SymbolicValueError``.
- A traced graph ONNX Runtime cannot load (PatchTST, PatchTSMixer) escaped as a raw onnxruntime ``Fail`` on
  the int8 path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import UnsupportedModelError


class TinySeq2Seq(nn.Module):
    def __init__(self, vocab: int = 20, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.enc = nn.Linear(width, width)
        self.dec = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        m = attention_mask.unsqueeze(-1).float()
        memory = (self.enc(self.embed(input_ids)) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return self.head(torch.tanh(self.dec(self.embed(decoder_input_ids)) + memory))


def _inputs(n: int, enc: int, dec: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, enc, dtype=torch.long)
    mask[0, enc - 3 :] = 0
    return {"input_ids": torch.randint(1, 20, (n, enc), generator=g), "attention_mask": mask,
            "decoder_input_ids": torch.randint(1, 20, (n, dec), generator=g)}  # fmt: skip


def test_encoder_and_decoder_lengths_get_their_own_dynamic_dims(tmp_path):
    torch.manual_seed(0)
    model = TinySeq2Seq().eval()
    s = nc.export_onnx(model, tmp_path / "s2s.onnx", _inputs(2, 9, 5), check=True)
    axes = s["dynamic_axes"]
    assert axes["input_ids"]["1"] == axes["attention_mask"]["1"] == "sequence"
    assert axes["decoder_input_ids"]["1"] == axes["output"]["1"] == "decoder_sequence"
    assert s["check"]["max_rel_diff"] < 1e-5

    from netcompress.export.ort_model import ort_session

    other = _inputs(3, 6, 4)  # other lengths than the example's, the decoder's shorter than the encoder's
    (out,) = ort_session(tmp_path / "s2s.onnx").run(None, {k: v.numpy() for k, v in other.items()})
    assert torch.allclose(torch.from_numpy(out), model(**other), atol=1e-5)


def test_equal_lengths_of_encoder_and_decoder_stay_separate_dims(tmp_path):
    model = TinySeq2Seq().eval()
    s = nc.export_onnx(model, tmp_path / "s2s.onnx", _inputs(2, 6, 6), check=True)
    assert s["dynamic_axes"]["decoder_input_ids"]["1"] == "decoder_sequence"
    assert s["dynamic_axes"]["input_ids"]["1"] == "sequence"


class ProjectedLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True, proj_size=3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.parametrize("int8", [False, True])
def test_an_operation_the_exporter_refuses_is_named(tmp_path, int8):
    model, x = ProjectedLSTM().eval(), torch.randn(2, 5, 4)
    if int8:
        model = nc.quantize(model, mode="dynamic")
    with pytest.raises(UnsupportedModelError, match=r"ProjectedLSTM.*LSTMs with projections"):
        nc.export_onnx(model, tmp_path / "lstm.onnx", x, int8=int8)
    assert not (tmp_path / "lstm.onnx").exists()


def test_a_graph_onnx_runtime_cannot_load_is_named_on_the_int8_path(tmp_path):
    t = pytest.importorskip("transformers")
    t.logging.set_verbosity_error()
    cfg = t.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=16,
                           num_attention_heads=2, num_hidden_layers=1, ffn_dim=32, num_targets=4)  # fmt: skip
    model = t.PatchTSTForClassification(cfg).eval()
    x = {"past_values": torch.randn(2, 32, 3)}
    q = nc.quantize(model, mode="dynamic")
    with pytest.raises(UnsupportedModelError, match=r"ONNX Runtime cannot load the graph torch traced from PatchTST"):
        nc.export_onnx(q, tmp_path / "p.onnx", x, int8=True)
    assert not (tmp_path / "p.onnx").exists()
