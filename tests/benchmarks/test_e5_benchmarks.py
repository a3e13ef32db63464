"""benchmarks/apoz.py, clustering.py, e5_rows.py: rows merge across runs, tables and APoZ counts are right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

e5_rows = pytest.importorskip("e5_rows")
clustering = pytest.importorskip("clustering")
apoz = pytest.importorskip("apoz")


def test_benchmark_names_do_not_shadow_the_library() -> None:
    assert clustering.__file__.endswith("benchmarks/clustering.py")
    import netcompress.clustering as lib

    assert lib.__name__ == "netcompress.clustering" and hasattr(lib, "cluster_weights_")


def test_row_store_merges_rows_written_by_two_runs(tmp_path) -> None:
    first, second = (
        e5_rows.RowStore("t", "quick", folder=tmp_path),
        e5_rows.RowStore("t", "quick", folder=tmp_path),
    )
    first.put(("ft", 16), {"acc": 0.5})
    second.put(("ft", 4), {"acc": 0.25})  # second never saw the first row: it re-reads before writing
    again = e5_rows.RowStore("t", "quick", folder=tmp_path)
    assert {k: v["acc"] for k, v in again.rows.items()} == {"ft/16": 0.5, "ft/4": 0.25}
    assert len(again.get(("ft", 4))["load_average"]) == 3


def test_clustering_report_gives_the_delta_to_the_baseline_and_draws_the_figure(tmp_path) -> None:
    store = e5_rows.RowStore("c", "quick", folder=tmp_path)
    store.put(("baseline",), {"acc": 0.8})
    store.put(
        ("control", None, 1), {"variant": "control", "clusters": None, "acc_after": 0.81, "acc_qat": 0.805}
    )
    store.put(
        ("ft", 16, 1),
        {"variant": "ft", "clusters": 16, "acc_clustered": 0.79, "acc_after": 0.7962, "max_distinct": 16,
         "file_bytes": 100_000, "float32_bytes": 2_400_000},
    )  # fmt: skip
    store.put(("qat", 16, 1), {"variant": "qat", "clusters": 16, "acc_after": 0.79, "max_distinct": 15})
    (row,) = clustering.report(store, "quick", figures=tmp_path)
    assert row["bits"] == 4 and row["distinct"] == 16 and row["ratio"] == 24.0
    assert row["delta"] == pytest.approx(-0.38) and row["qat"] == 0.79 and row["loss_ft"] is None
    assert row["delta_ft"] == pytest.approx(-1.38)  # against the unclustered model fine-tuned the same way
    assert (tmp_path / "e5_quick_clustering_accuracy_vs_clusters.png").stat().st_size > 0


def test_apoz_stats_count_the_neurons_above_each_threshold() -> None:
    # 4 hidden neurons; inputs x in {+1, -1} with bias b: neuron k fires on exactly `fires[k]` of the 10 inputs
    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2))
    fires = [10, 5, 2, 0]
    x = torch.tensor([[float(i)] for i in range(10)])  # 0..9
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.copy_(torch.tensor([f - 0.5 for f in fires]))  # relu(b - x) > 0 iff x < f
    loader = [(x, torch.zeros(10, dtype=torch.long))]
    stats = apoz.apoz_stats(model, "0", loader, max_batches=1)
    assert stats["neurons"] == 4 and stats["mean_apoz"] == pytest.approx((0 + 0.5 + 0.8 + 1.0) / 4)
    assert (stats["above_0.6"], stats["above_0.7"], stats["above_0.8"], stats["above_0.9"]) == (2, 2, 1, 1)


def test_reinitialised_copy_keeps_shapes_and_leaves_the_model_alone() -> None:
    torch.manual_seed(5)  # not the reinitialisation's seed: the same seed would draw the same weights
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    fresh = apoz.reinitialised(model, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in before]
    assert not torch.equal(fresh[0].weight, model[0].weight)
