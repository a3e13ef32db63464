"""Every registered method, parametrised over the registry: the recipe step's keys and defaults are the
config's fields and defaults, an unknown key is named, and ``apply`` runs it reproducibly on a tiny CNN."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import netcompress as nc
from netcompress.core import ConfigError
from netcompress.core.config import Config
from netcompress.core.methods import METHODS, MethodData, Result, _ensure_registered, apply
from netcompress.recipes import resolve_recipe

_ensure_registered()

# the fewest fields each method needs to run on digits_cnn in a second (everything else is the default)
TINY = {
    "dynamic/early_exit": {"exits": ["features.5"], "epochs": 1, "progress": False},
    "dynamic/slimmable": {"epochs": 1, "progress": False},
    "distill/soft_targets": {"epochs": 1, "progress": False, "teacher": {"model": "digits_cnn"}},
    "quantize/mixed_precision": {"budget_bytes": 20_000, "save": False},
    "quantize/qat": {"epochs": 1, "progress": False},
    "train/supervised": {"epochs": 1, "progress": False},
    "train/finetune": {"epochs": 1, "progress": False},
    "train/slimming": {"epochs": 1, "progress": False},
    "prune/gradual": {"epochs": 1, "save_sparse": False},
    "prune/iterative": {"rounds": 1, "epochs_per_round": 0, "save_sparse": False},
    "prune/iterative_channel": {"rounds": 1, "train": {"epochs": 1, "progress": False}},
    "prune/l1_unstructured": {"save_sparse": False},
    "prune/random_unstructured": {"save_sparse": False},
    "cluster/kmeans": {"save": False},
    "prune/transformer": {"heads": 0.0, "ffn": 0.0},  # a CNN has no attention/FFN block: a checked no-op
    # on a CNN: the (N, 10) outputs are the embeddings; no transformer layer, so no layer terms
    "distill/embedding": {"epochs": 1, "progress": False, "teacher": {"model": "digits_cnn"}},
    "distill/transformer": {
        "epochs": 1,
        "progress": False,
        "teacher": {"model": "digits_cnn"},
        "hidden_weight": 0.0,
        "attention_weight": 0.0,
    },
}
REQUIRED = {"dynamic/early_exit": {"exits": ["features.5"]}}


# the product's methods: stand-ins other test modules register (op "test") depend on collection order
PRODUCT_METHODS = [k for k in METHODS.names() if METHODS.get(k).fn.__module__.startswith("netcompress.")]


def _recipe(step: dict) -> dict:
    return {
        "model": {"name": "digits_cnn"},
        "data": {"name": "synthetic", "num_samples": 64, "input_shape": [1, 8, 8], "num_classes": 10},
        "steps": [step],
    }


@pytest.mark.parametrize("key", PRODUCT_METHODS)
def test_step_keys_and_defaults_are_the_config_fields(key):
    spec = METHODS.get(key)
    step = {"op": spec.op, "method": spec.name, **REQUIRED.get(key, {})}
    resolved = resolve_recipe(_recipe(step))["steps"][0]
    fields = {k: v for k, v in resolved.items() if k not in ("op", "method", "label")}
    assert fields == spec.config(**REQUIRED.get(key, {})).to_dict()
    assert list(fields) == spec.config.field_names()
    with pytest.raises(ConfigError, match=r"unknown key 'not_a_field'.*step 1"):
        resolve_recipe(_recipe({**step, "not_a_field": 1}))


def _data(seed: int) -> MethodData:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(64, 1, 8, 8, generator=g)
    ys = torch.randint(0, 10, (64,), generator=g)
    batches = [(xs[i : i + 16], ys[i : i + 16]) for i in range(0, 64, 16)]
    return MethodData(
        train_loader=batches,
        val_loader=batches[:2],
        calib_loader=batches[:2],
        example_inputs=xs[:1],
        num_classes=10,
        seed=seed,
        progress=False,
    )


def _run(key: str, tmp_path) -> Result:
    spec = METHODS.get(key)
    torch.manual_seed(0)
    model = nc.models.create("digits_cnn")
    config = spec.config.from_dict(TINY.get(key, {}), where=key)
    data = _data(1)
    data.out_dir = tmp_path
    return apply(model, config, data)


@pytest.mark.parametrize("key", PRODUCT_METHODS)
def test_apply_runs_every_method_reproducibly(key, tmp_path):
    first = _run(key, tmp_path / "a")
    second = _run(key, tmp_path / "b")
    assert isinstance(first.model, torch.nn.Module)
    json.dumps(first.summary, default=str)  # the report consumes it
    x = torch.randn(3, 1, 8, 8)
    first.model.eval()
    second.model.eval()
    with torch.no_grad():
        out = first.model(x)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        assert out.shape == (3, 10)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), "the same config, data and seed gave other weights"


def test_apply_refuses_a_config_no_method_owns():
    @dataclasses.dataclass
    class Unregistered(Config):
        x: int = 1

    with pytest.raises(ConfigError, match="no method is registered for config Unregistered"):
        apply(torch.nn.Linear(2, 2), Unregistered())


def test_every_method_has_a_verb_equivalence_test():
    """Each area's tests/<area>/test_contract.py checks its verbs give the weights apply gives."""
    from pathlib import Path

    text = "".join(p.read_text() for p in Path(__file__).resolve().parents[1].glob("*/test_contract.py"))
    missing = [
        key
        for key in METHODS.names()
        if METHODS.get(key).config.__module__.startswith("netcompress.")  # not the tests' own stand-ins
        and METHODS.get(key).config.__name__ not in text
        and f'"{key.split("/")[1]}"' not in text
    ]
    assert missing == []
