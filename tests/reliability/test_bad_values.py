"""Each bad value a user may type gives a one-line error that names its key (and step), before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netcompress.core.errors import ConfigError
from netcompress.recipes import resolve_recipe

BASE = {"model": {"name": "digits_cnn"}, "data": {"name": "digits"}}

BAD_STEPS = [
    ({"op": "train", "method": "supervised", "epochs": "ten"}, "epochs"),
    ({"op": "train", "method": "supervised", "epochs": 1.5}, "epochs"),
    ({"op": "train", "method": "supervised", "epochs": True}, "epochs"),
    ({"op": "train", "method": "supervised", "lr": "fast"}, "lr"),
    ({"op": "prune", "method": "channel", "ratio": 1.0}, "ratio"),
    ({"op": "prune", "method": "channel", "ratio": -0.1}, "ratio"),
    ({"op": "prune", "method": "l1_unstructured", "amount": 1.0}, "amount"),
    ({"op": "prune", "method": "l1_unstructured", "amount": "half"}, "amount"),
    ({"op": "quantize", "method": "ptq_static", "bits": 8.5}, "bits"),
    ({"op": "quantize", "method": "ptq_static", "bits": 1}, "bits"),
    ({"op": "quantize", "method": "ptq_static", "observer": "maxmin"}, "observer"),
    ({"op": "prune", "method": "channel", "ration": 0.5}, "ration"),
]


@pytest.mark.parametrize(("step", "key"), BAD_STEPS, ids=[f"{s['method']}-{k}" for s, k in BAD_STEPS])
def test_bad_step_values_name_their_key_and_step(step, key):
    with pytest.raises(ConfigError) as err:
        resolve_recipe({**BASE, "steps": [step]})
    message = str(err.value)
    assert key in message and "step 1" in message
    assert "\n" not in message


def test_cli_shape_mismatch_is_a_one_line_error():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netcompress.cli.main",
            "profile",
            "digits_cnn",
            "--input-shape",
            "1,8,8",
            "--no-latency",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--input-shape" in proc.stderr
