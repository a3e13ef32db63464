"""A new user's model, from a fresh folder, no PYTHONPATH: a recipe with a factory and a state dict prunes,
quantizes and exports; nc.save / nc.load of the pruned and the quantized model in a fresh process give
identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

MYMODEL = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Block(nn.Module):
        """A residual block of the user's own, with its own forward."""

        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(channels)

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))


    class MyNet(nn.Module):
        def __init__(self, width=16, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.block = Block(width)
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


    def build(width=16, num_classes=10):
        return MyNet(width, num_classes)
    '''
)

RECIPE = textwrap.dedent(
    """
    # netcompress run byo.yaml --out run
    name: byo
    model: {factory: "mymodel.py:build", kwargs: {width: 16}, checkpoint: state.pt}
    data: {name: synthetic, num_samples: 128, input_shape: [1, 8, 8], num_classes: 10, batch_size: 32}
    steps:
      - {op: prune, method: channel, ratio: 0.5}
      - {op: quantize, method: ptq_static, bits: 8, num_calib_batches: 2}
    evaluate: {latency: false}
    export: {onnx: true, int8: true}
    report: {plots: false}
    """
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def test_recipe_with_a_factory_and_state_dict_prunes_quantizes_and_exports(tmp_path: Path):
    (tmp_path / "mymodel.py").write_text(MYMODEL)
    (tmp_path / "byo.yaml").write_text(RECIPE)
    make_state = (
        "import torch, mymodel; torch.manual_seed(0); torch.save(mymodel.build(16).state_dict(), 'state.pt')"
    )
    assert _run([sys.executable, "-c", make_state], tmp_path).returncode == 0
    proc = _run(
        [sys.executable, "-m", "netcompress.cli.main", "run", "byo.yaml", "--out", "run", "--quiet"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    assert names[:3] == ["initial", "prune/channel", "quantize/ptq_static"]
    params = [s["params"] for s in metrics["stages"][:3]]
    assert params[1] < params[0]  # physically smaller
    assert any(p.suffix == ".onnx" for p in (tmp_path / "run").rglob("*.onnx"))


def test_save_and_load_of_a_pruned_and_a_quantized_custom_model_in_a_fresh_process(tmp_path: Path):
    (tmp_path / "mymodel.py").write_text(MYMODEL)
    script = textwrap.dedent(
        """
        import torch, netcompress as nc
        from netcompress.core.factory import call_factory
        torch.manual_seed(0)
        model = call_factory("mymodel.py:build", {"width": 16})
        x = torch.randn(8, 1, 8, 8)
        pruned = nc.prune_channels(model, x, ratio=0.5)
        quantized = nc.quantize(pruned, [(x, torch.zeros(8))], bits=8)
        nc.save(pruned, "pruned.nc", example_inputs=x)
        nc.save(quantized, "quantized.nc", example_inputs=x)
        torch.save({"x": x, "pruned": pruned.eval()(x), "quantized": quantized.eval()(x)}, "expected.pt")
        """
    )
    proc = _run([sys.executable, "-c", script], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = textwrap.dedent(
        """
        import torch, netcompress as nc
        from netcompress.core.errors import CheckpointError
        expected = torch.load("expected.pt")
        try:
            nc.load("pruned.nc")
        except CheckpointError as exc:
            assert "allow_modules" in str(exc), exc  # the user's classes load only when named
        else:
            raise AssertionError("a file naming the user's module loaded without allow_modules")
        for name in ("pruned", "quantized"):
            model = nc.load(f"{name}.nc", allow_modules=["mymodel"])
            with torch.no_grad():
                assert torch.equal(model(expected["x"]), expected[name]), name
        print("ok")
        """
    )
    proc = _run([sys.executable, "-c", check], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    assert torch.load(tmp_path / "expected.pt")["x"].shape == (8, 1, 8, 8)
