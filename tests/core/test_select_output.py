"""A model returning several outputs is scored by its first item (a dict: ``logits``) unless the user names the
one to score: ``nc.select_output(model, index_or_key)`` or a recipe's ``model: {output: ...}``; an output the
model does not return is a ConfigError listing what it does return."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import ConfigError
from netcompress.core.output_select import SelectOutput
from netcompress.recipes import run_recipe


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.aux = nn.Linear(8, 7)
        self.cls = nn.Linear(8, 3)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        h = torch.relu(self.body(x))
        if self.as_dict:
            return {"aux": self.aux(h), "scores": self.cls(h)}
        return self.aux(h), self.cls(h)


def _batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]


@pytest.mark.parametrize(("as_dict", "output"), [(False, 1), (True, "scores")])
def test_the_named_output_is_evaluated_and_trained(as_dict, output):
    torch.manual_seed(0)
    model, batches = TwoHeads(as_dict), _batches()
    scored = nc.select_output(model, output, example_inputs=batches[0][0])
    assert scored.model is model
    with torch.no_grad():
        logits = torch.cat([model.cls(torch.relu(model.body(x))) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    by_hand = float((logits.argmax(1) == labels).float().mean())
    assert nc.evaluate(scored, batches)["accuracy"] == pytest.approx(by_hand)
    aux_before = model.aux.weight.detach().clone()
    nc.fit(scored, batches, config=nc.TrainConfig(epochs=25, lr=0.05, optimizer="adam", progress=False))
    assert torch.equal(model.aux.weight, aux_before)  # the unscored head gets no gradient
    assert nc.evaluate(scored, batches)["accuracy"] > max(by_hand, 0.8)


def test_an_output_the_model_does_not_return_is_named():
    x = torch.randn(2, 4)
    with pytest.raises(ConfigError, match=r"output=2: TwoHeads returns 2 items \(indices 0-1\)"):
        nc.select_output(TwoHeads(), 2, example_inputs=x)
    with pytest.raises(ConfigError, match=r"output='logits': TwoHeads returns a dict with keys \['aux', 'scores'\]"):
        nc.select_output(TwoHeads(as_dict=True), "logits", example_inputs=x)
    with pytest.raises(ConfigError, match=r"output=1: Linear returns one Tensor of shape \(2, 3\); there is nothing"):
        SelectOutput(nn.Linear(4, 3), 1)(x)
    for bad in (-1, True, 1.5, ""):
        with pytest.raises(ConfigError, match="name the output to score by index"):
            nc.select_output(TwoHeads(), bad)


CODE = '''
import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Flatten()
        self.aux = nn.Linear(64, 7)
        self.cls = nn.Linear(64, 10)

    def forward(self, x):
        h = self.body(x)
        return self.aux(h), self.cls(h)


def build():
    return TwoHeads()
'''


def test_recipe_model_output_key(tmp_path, monkeypatch):
    (tmp_path / "heads.py").write_text(textwrap.dedent(CODE))
    monkeypatch.chdir(tmp_path)
    recipe = {
        "name": "heads",
        "model": {"factory": "heads.py:build", "output": 1},
        "data": {"name": "digits", "batch_size": 64},
        "steps": [{"op": "train", "method": "supervised", "epochs": 2, "lr": 0.05, "progress": False}],
        "evaluate": {"latency": False},
        "report": {"plots": False},
    }
    result = run_recipe(recipe, out_dir=tmp_path / "run", progress=False)
    assert result.stages[1]["accuracy"] > 0.8  # the 10-class head, trained and scored
    recipe["model"]["output"] = 2
    with pytest.raises(ConfigError, match=r"output=2: TwoHeads returns 2 items"):
        run_recipe(recipe, out_dir=tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()
    recipe["model"]["output"] = [1]
    with pytest.raises(ConfigError, match=r"model.output=\[1\]: name the output to score"):
        run_recipe(recipe, out_dir=tmp_path / "run3", progress=False)
    del recipe["model"]["output"]  # without it: the first item (7 scores) is refused, the message says how to name
    with pytest.raises(ConfigError, match=r"gives 7 class scores .*recipe model: \{output: 1\}"):
        run_recipe(recipe, out_dir=tmp_path / "run4", progress=False)
