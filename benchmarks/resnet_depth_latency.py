"""ORT batch-64 latency of ResNet-20 allocations, interleaved: session 10's width-only widths vs residual
branches removed (issue 18, session 13; RESULTS.md).

Structure only: the weights are random, because a latency does not depend on them. Widths come from
``latency_search.Variants`` at the latency search's widths 1 / 0.75 / 0.5 / 0.25 (``round_to="auto"``), plus
index 4, which removes the branch where the group is removable.

    PYTHONPATH=$PWD nice -n 10 python benchmarks/resnet_depth_latency.py --rounds 15
"""

from __future__ import annotations

import argparse
import time

import torch

import netcompress as nc
from netcompress.evaluation.macs import count_macs
from netcompress.pruning.branch_removal import removable_branches
from netcompress.pruning.graph_tracing import build_channel_graph
from netcompress.pruning.importance import layer_scores, unit_scores
from netcompress.pruning.latency_search import Variants
from netcompress.pruning.latency_table import MeasureSpec, time_deployed

# group ids of cifar_resnet20's channel graph: 0 stage-1 stream, 1-3 layer1.0-1.2 inner, 4 layer2.0 inner,
# 5 stage-2 stream, 6-7 layer2.1-2.2 inner, 8 layer3.0 inner, 9 stage-3 stream, 10-11 layer3.1-3.2 inner;
# value: width index (0 = 1.0, 1 = 0.75, 2 = 0.5, 3 = 0.25, 4 = branch removed)
ALLOCATIONS = {
    "session 10 width-only (streams 4 / 16 / 16)": {
        0: 3, 1: 0, 2: 3, 3: 3, 4: 2, 5: 2, 6: 2, 7: 2, 8: 1, 9: 3, 10: 2, 11: 2,
    },
    "remove layer1.1 + 1.2 (streams full)": {2: 4, 3: 4},
    "remove layer1.0-1.2 (streams full)": {1: 4, 2: 4, 3: 4},
    "remove layer1.0-1.2 + 2.2 + 3.2 (streams full)": {1: 4, 2: 4, 3: 4, 7: 4, 11: 4},
    "remove all 7 identity branches": {1: 4, 2: 4, 3: 4, 6: 4, 7: 4, 10: 4, 11: 4},
    "remove layer1.1 + 1.2, stages 2-3 at half width": {2: 4, 3: 4, **dict.fromkeys(range(4, 12), 2)},
    "remove layer1.1 + 1.2, stream 1 at 12, stages 2-3 at half": {
        0: 1, 2: 4, 3: 4, **dict.fromkeys(range(4, 12), 2),
    },
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nc.models.create("cifar_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    graph = build_channel_graph(model, x)
    scores = unit_scores(graph, layer_scores("group_l2", model, graph))
    candidates = {g.id: scores[g.id] for g in graph.prunable_groups()}
    variants = Variants.of(model, graph, candidates, [1.0, 0.75, 0.5, 0.25], round_to="auto", min_channels=1,
                           branches=removable_branches(model, graph, x))  # fmt: skip
    label = {gid: name for name, gid in variants.labels.items()}
    models = {"unpruned": model}
    for name, state in ALLOCATIONS.items():
        models[name] = variants.build({label[gid]: index for gid, index in state.items()}).eval()
    spec = MeasureSpec(target="latency", runtime="onnxruntime", batch_size=64, threads=1, rounds=args.rounds)
    started = time.perf_counter()
    ms = time_deployed(models, x, spec)
    print("| allocation | ORT b64 ms | speed-up | MMACs |\n| --- | ---: | ---: | ---: |")
    for name, small in models.items():
        macs = count_macs(small, x[:1])[0] / 1e6
        print(f"| {name} | {ms[name]:.1f} | {ms['unpruned'] / ms[name]:.2f} | {macs:.2f} |")
    print(f"timing {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
