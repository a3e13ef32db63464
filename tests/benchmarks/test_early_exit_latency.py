"""benchmarks/early_exit_latency.py helpers: the model flag and its default exits, each exit's path (what a sample
leaving there costs) and the routed-time prediction from exit shares."""

from __future__ import annotations

import early_exit as eeb
import early_exit_paths as paths
import torch

from netcompress import models
from netcompress.dynamic import add_early_exits

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_model_flag_picks_its_default_exits_and_leaves_resnet20_alone():
    default = eeb.parse([])
    assert eeb.model_name(default) == "resnet20" and default.model is None  # not in resnet20's cache key
    assert default.exits == eeb.RESNET20_EXITS
    vgg = eeb.parse(["--model", "narrow_vgg"])
    assert vgg.exits == ["features.6", "features.9", "features.13", "features.16"]
    assert eeb.parse(["--model", "narrow_vgg", "--exits", "features.6"]).exits == ["features.6"]
    # the default narrow-VGG exits take the conv head (maps of at least 8 x 8 at 32 x 32)
    vgg_model = models.create("cifar_vgg", cfg="narrow", num_classes=10).eval()
    ee = add_early_exits(vgg_model, exits=vgg.exits, example_inputs=X[:1], head="pool_conv_grid_linear", cascade=True)
    assert [tuple(lg.shape) for lg in ee.eval().forward_all(X)] == [(4, 10)] * 5


def test_paths_run_segments_and_heads_up_to_their_exit():
    torch.manual_seed(0)
    resnet = models.create("cifar_resnet20", num_classes=10).eval()
    ee = add_early_exits(resnet, exits=["layer1.0", "layer2.0"], example_inputs=X[:1], cascade=True).eval()
    fns = paths.path_models("eager", ee, ee.num_exits)
    assert sorted(fns) == sorted([f"path {k}" for k in range(3)] + [f"backbone {k}" for k in range(3)])
    with torch.no_grad():
        assert torch.allclose(fns["backbone 2"](X), resnet(X), atol=1e-5)  # the whole backbone: the model
        assert torch.allclose(fns["path 2"](X), ee.forward_all(X, raw=True)[-1], atol=1e-5)
        assert torch.equal(fns["backbone 0"](X), ee.run_segment(0, (X,))[0])
    assert paths.predicted_ms([0.5, 0.25, 0.25], [1.0, 2.0, 4.0]) == 2.0
