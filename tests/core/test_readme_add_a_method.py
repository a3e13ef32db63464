"""The README's "How to add a method" block runs as written and gives a working method."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_method_registers_and_runs_through_every_entry_point():
    text = README.read_text()
    block = re.search(r"<!-- add-a-method:.*?-->\n```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    from netcompress.core.methods import METHODS

    if "perturb/noise" in METHODS:  # already registered by an earlier run in this process
        METHODS._entries.pop("perturb/noise")
    exec(compile(block, "README.md", "exec"), namespace)
    import netcompress as nc
    from netcompress.core.errors import ConfigError
    from netcompress.core.methods import find_method

    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    before = a.weight.clone()
    assert namespace["add_noise_"](a, std=0.5, seed=1) == {"std": 0.5}
    assert not torch.equal(a.weight, before)
    spec = find_method("perturb", "noise", where="test")
    result = nc.apply(b, spec.config.from_dict({"std": 0.5, "seed": 1}))
    assert torch.equal(result.model.weight, a.weight)  # the verb and the recipe path agree
    try:
        spec.config.from_dict({"std": "big"}, where="step 1")
    except ConfigError as exc:
        assert "std" in str(exc) and "step 1" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a string std was accepted")
    METHODS._entries.pop("perturb/noise")
