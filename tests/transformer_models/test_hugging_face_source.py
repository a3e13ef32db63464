"""A Hugging Face model from a local folder as a recipe's model factory (netcompress.models.hugging_face)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from netcompress.core.errors import ConfigError
from netcompress.models.hugging_face import model_folder, pretrained
from netcompress.recipes.runner import build_model
from netcompress.recipes.schema import resolve_recipe

transformers = pytest.importorskip("transformers")

FACTORY = "netcompress.models.hugging_face:pretrained"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(str(path))
    return path


def test_the_runner_builds_the_saved_model_from_a_folder(folder):
    recipe = {
        "model": {"factory": FACTORY, "kwargs": {"path": str(folder)}},
        "data": {"name": "synthetic"},
        "steps": [{"op": "quantize", "method": "ptq_dynamic"}],
    }
    spec = resolve_recipe(recipe)["model"]
    model = build_model(spec, num_classes=0)
    saved = transformers.BertModel.from_pretrained(str(folder))
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.pooler is None  # sentence encoders mean-pool; the pooler is left out by default
    assert torch.equal(model.encoder.layer[1].output.dense.weight, saved.encoder.layer[1].output.dense.weight)
    assert pretrained(path=str(folder), add_pooling_layer=True).pooler is not None


def test_a_package_that_ships_the_folder(folder, monkeypatch):
    package = types.ModuleType("tiny_bert_weights")
    package.get_model_path = lambda: str(folder)
    monkeypatch.setitem(sys.modules, "tiny_bert_weights", package)
    assert model_folder(package="tiny_bert_weights") == folder
    assert pretrained(package="tiny_bert_weights").config.hidden_size == 32


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        pretrained()
    with pytest.raises(ConfigError, match="no config.json"):
        pretrained(path=str(tmp_path))
    with pytest.raises(ConfigError, match="'no_such_weights_pkg' cannot be imported"):
        pretrained(package="no_such_weights_pkg")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="needs the 'transformers' package"):
        pretrained(path=str(tmp_path))


def test_a_teacher_built_by_a_factory(folder):
    from netcompress.distillation.teacher_loading import check_teacher_spec, load_teacher

    spec = {"factory": FACTORY, "kwargs": {"path": str(folder)}}
    check_teacher_spec(spec)
    teacher = load_teacher(spec, num_classes=0)
    assert type(teacher).__name__ == "BertModel" and teacher.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match="either 'model' or 'factory'"):
        check_teacher_spec({**spec, "model": "digits_cnn"})
    with pytest.raises(ConfigError, match="returned a dict, not an nn.Module"):
        load_teacher({"factory": "json:loads", "kwargs": {"s": "{}"}}, num_classes=0)
