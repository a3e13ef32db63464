"""The data-free parts of the CIFAR benchmark harness: cache keys, baseline cache, tables, sections, checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netcompress.core import ConfigError
from netcompress.data import DataBundle
from tests.crash_hooks import CrashAt

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # pruning.py imports cifar_protocol by its plain name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cp = _load("cifar_protocol")


def _tiny_bundle(n: int = 16) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=gen), torch.arange(n) % 10)
    return DataBundle(name="tiny", train=data, test=data, num_classes=10, input_shape=(3, 32, 32))


def test_cache_key_ignores_order_and_sees_every_value():
    a = cp.cache_key({"epochs": 15, "lr": 0.05, "model": "cifar_vgg"})
    assert a == cp.cache_key({"model": "cifar_vgg", "lr": 0.05, "epochs": 15})
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != cp.cache_key({"epochs": 16, "lr": 0.05, "model": "cifar_vgg"})
    assert a != cp.cache_key({"epochs": 15, "lr": 0.1, "model": "cifar_vgg"})


def test_baseline_settings_key_on_protocol_and_model():
    bundle = _tiny_bundle()
    cpu = cp.baseline_settings("narrow_vgg", cp.PROTOCOLS["cpu"], epochs=15, lr=0.05, bundle=bundle)
    assert cpu["model"] == "cifar_vgg" and cpu["model_kwargs"] == {"cfg": "narrow"}
    assert cpu["num_train"] == 16 and cpu["train_subset"] == 10000
    keys = {
        cp.cache_key(cpu),
        cp.cache_key(
            cp.baseline_settings("narrow_vgg", cp.PROTOCOLS["full"], epochs=15, lr=0.05, bundle=bundle)
        ),
        cp.cache_key(
            cp.baseline_settings("resnet20", cp.PROTOCOLS["cpu"], epochs=15, lr=0.05, bundle=bundle)
        ),
        cp.cache_key(
            cp.baseline_settings("narrow_vgg", cp.PROTOCOLS["cpu"], epochs=14, lr=0.05, bundle=bundle)
        ),
    }
    assert len(keys) == 4


def test_train_baseline_caches_and_reloads_the_same_weights(tmp_path):
    protocol = cp.ProtocolConfig(name="t", train_subset=None, epochs=1, batch_size=8)
    bundle = _tiny_bundle()
    first, info = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle, cache_dir=tmp_path)
    assert not info["cache_hit"] and len(info["history"]) == 1
    assert [p.name for p in tmp_path.glob("*.pt")] == [Path(info["path"]).name]
    second, again = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle, cache_dir=tmp_path)
    assert again["cache_hit"] and again["settings"] == info["settings"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert sum(p.numel() for p in second.parameters()) == 585_450


def test_baseline_trains_on_the_protocol_threads_and_keys_on_them(tmp_path, monkeypatch):
    bundle = _tiny_bundle()
    one = cp.ProtocolConfig(name="t", train_subset=None, epochs=1, batch_size=8, train_threads=1)
    two = cp.ProtocolConfig(name="t", train_subset=None, epochs=1, batch_size=8, train_threads=2)
    settings = [cp.baseline_settings("narrow_vgg", p, epochs=1, lr=0.05, bundle=bundle) for p in (one, two)]
    assert [s["threads"] for s in settings] == [1, 2]
    assert cp.cache_key(settings[0]) != cp.cache_key(settings[1])
    seen = []
    monkeypatch.setattr(cp, "fit", lambda *a, **k: seen.append(torch.get_num_threads()) or _History())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, info = cp.train_baseline("narrow_vgg", protocol=two, bundle=bundle, cache_dir=tmp_path)
        assert seen == [2] and info["threads"] == 2
        assert torch.get_num_threads() == 1  # the caller's count is back
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ConfigError, match="train_threads"):
        cp.ProtocolConfig(train_threads=0)


class _History:
    rows: list = []


def test_pruning_rows_cache_key_ignores_how_models_are_timed():
    pr = _load("pruning")
    base = {"model": "cifar_vgg", "threads": 2}
    key = pr.rows_cache_key(pr.PruningBenchConfig(), base, heldout=False)
    timing = pr.PruningBenchConfig(latency_rounds=9, timing_threads=2)
    assert pr.rows_cache_key(timing, base, heldout=False) == key
    for changed in (pr.PruningBenchConfig(train_threads=2), pr.PruningBenchConfig(finetune_epochs=4)):
        assert pr.rows_cache_key(changed, base, heldout=False) != key
    assert pr.rows_cache_key(pr.PruningBenchConfig(), {**base, "threads": 1}, heldout=False) != key
    assert pr.rows_cache_key(pr.PruningBenchConfig(), base, heldout=True) != key


def test_unknown_model_and_conflicting_flags_are_errors():
    with pytest.raises(ConfigError, match="unknown protocol model 'vgg99'"):
        cp.model_spec("vgg99")
    with pytest.raises(ConfigError, match="exclude each other"):
        cp.protocol_from_flags(quick=True, full=True)
    assert cp.protocol_from_flags(quick=False, full=False).train_subset == 10000
    assert cp.protocol_from_flags(quick=True, full=False).epochs == 1


def test_markdown_table_formats_and_escapes():
    rows = [{"m": "a|b", "acc": 0.78125, "n": 1234567, "t": None}, {"m": "c", "acc": 1.0, "n": 5, "t": 2.5}]
    columns = [
        ("method", "m", cp.fmt_text),
        ("acc %", "acc", cp.fmt_percent),
        ("n", "n", cp.fmt_number()),
        ("t", "t", cp.fmt_number(1)),
    ]
    assert cp.markdown_table(rows, columns) == (
        "| method | acc % | n | t |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| a\\|b | 78.12 | 1,234,567 | – |\n"
        "| c | 100.00 | 5 | 2.5 |"
    )
    with pytest.raises(ConfigError):
        cp.markdown_table(rows, [])


def test_replace_section_keeps_other_sections_byte_for_byte():
    text = "# R\n\n## Other\nkeep  me\n\n## Pruning\nold table\n\n## Last\nlast\n"
    out = cp.replace_section(text, "## Pruning", "new table")
    assert out == "# R\n\n## Other\nkeep  me\n\n## Pruning\n\nnew table\n\n## Last\nlast\n"
    assert cp.replace_section(out, "## Pruning", "new table") == out  # idempotent
    appended = cp.replace_section("# R\n\n## Other\nx\n", "## Pruning", "t")
    assert appended == "# R\n\n## Other\nx\n\n## Pruning\n\nt\n"
    assert cp.replace_section("# R\n\n## Pruning\nold\n", "## Pruning", "t") == "# R\n\n## Pruning\n\nt\n"


def test_machine_description_names_cpu_and_torch():
    machine = cp.machine_description()
    assert machine["cpu_count"] >= 1 and machine["torch"] == torch.__version__
    line = cp.describe_machine(machine, timing_threads=1)
    assert f"{machine['cpu_count']} CPUs" in line and "1 for timing" in line


def test_heap_is_kept_warm_for_timing_where_glibc_allows():
    import platform

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert cp.keep_heap_warm() is glibc
    machine = cp.machine_description()
    assert machine["heap_kept_warm"] is glibc
    line = cp.describe_machine(machine, timing_threads=1)
    assert ("heap kept warm" in line) is glibc


def test_bisect_ratio_finds_the_smallest_fitting_ratio():
    pr = _load("pruning")
    ratio = pr.bisect_ratio(lambda r: r, lambda r: r >= 0.3)
    assert 0.3 <= ratio <= 0.3 + 1e-3
    with pytest.raises(ConfigError, match="cannot be reached"):
        pr.bisect_ratio(lambda r: r, lambda r: r >= 0.9, hi=0.8)


def test_target_checks_report_pass_and_miss_with_numbers():
    pr = _load("pruning")
    base = {"method": "unpruned", "acc_after": 0.80}
    rows = [
        base,
        {"method": "dense_finetune", "acc_after": 0.81},
        {
            "method": "nc_l1_global",
            "acc_after": 0.795,
            "mac_reduction": 3.6,
            "speedup_b64": 2.0,
            "folded_speedup_b64": 2.52,
            "ort_speedup_b64": 2.51,
        },
        {"method": "tp_magnitude", "acc_after": 0.78},
        {"method": "nc_unstructured", "acc_after": 0.7, "sparse_ratio": 0.2},
    ]
    lines = pr.target_checks(rows, pr.PruningBenchConfig())
    assert lines[0].endswith("+1.50 points (target >= +2): MISS")
    assert lines[1] == "nc_l1_global vs unpruned baseline: 0.50 points lower (target <= 1): PASS"
    assert lines[2] == "nc_l1_global vs dense_finetune: 1.50 points lower (target <= 1): MISS"
    assert lines[3] == (
        "nc_l1_global batch-64 speed-up vs 0.7 x 3.60 = 2.52x: "
        "eager 2.00x MISS, BN folded 2.52x PASS, ONNX Runtime 2.51x MISS"
    )
    assert lines[4] == "nc_unstructured .ncz file = 20.0% of the dense unpruned file (target <= 25%): PASS"


def test_target_checks_use_the_seed_mean_where_a_row_has_seeds():
    pr = _load("pruning")
    rows = [
        {"method": "unpruned", "acc_after": 0.80},
        # seed 0 alone would win by 3 points; the mean over three seeds is 0.79
        {
            "method": "nc_a",
            "acc_after": 0.81,
            "acc_seeds": [0.81, 0.78, 0.78],
            "mac_reduction": 3.5,
            "speedup_b64": 3,
        },
        {"method": "nc_b", "acc_after": 0.80, "mac_reduction": 3.5, "speedup_b64": 3},
        {"method": "tp_magnitude", "acc_after": 0.78, "acc_seeds": [0.78, 0.80, 0.79]},
    ]
    lines = pr.target_checks(rows, pr.PruningBenchConfig())
    assert lines[0].startswith(
        "best netcompress structured (nc_b) vs best Torch-Pruning (tp_magnitude): +1.00 points"
    )
    assert pr.seeds_text(rows[1]) == "79.00 ± 1.73 (n=3)"
    assert pr.seeds_text(rows[2]) is None


@pytest.mark.slow
def test_quick_pruning_benchmark_runs_end_to_end(cifar_archive):
    pr = _load("pruning")
    assert pr.main(["--quick", "--models", "narrow_vgg", "--methods", "nc_l1_global", "nc_unstructured"]) == 0


def test_kept_reading_survives_a_table_rewrite(tmp_path):
    pr = _load("pruning")
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# R\n\n{pr.SECTION}\n\nold table\n\n### Reading\n\nmine\n- x\n\n## Next\nn\n")
    assert pr.kept_reading(path) == "\n\n### Reading\n\nmine\n- x"
    path.write_text(f"# R\n\n{pr.SECTION}\n\nold table\n\n## Next\n\n### Reading\nnot ours\n")
    assert pr.kept_reading(path) == ""


def test_heldout_split_is_balanced_and_disjoint_from_the_training_subset(cifar_archive):
    protocol = cp.ProtocolConfig(name="t", train_subset=1000)
    bundle = cp.load_data(protocol, root=str(cifar_archive))
    loader = cp.heldout_loader(protocol, size=500, root=str(cifar_archive))
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert images.shape == (500, 3, 32, 32)
    assert torch.bincount(labels, minlength=10).tolist() == [50] * 10
    # no held-out image is one of the training subset's (compare the stored uint8 pixels)
    held_out = loader.dataset.dataset.images[loader.dataset.indices]
    training = {img.numpy().tobytes() for img in bundle.train.images}
    assert len(training) == 1000
    assert not any(img.numpy().tobytes() in training for img in held_out)
    with pytest.raises(ConfigError, match="held-out"):
        cp.heldout_loader(cp.ProtocolConfig(name="all", train_subset=None))


def test_deployed_forms_compute_what_the_model_computes(tmp_path):
    pr = _load("pruning")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(5, 3, 8, 8)
    forms = pr.deployed_forms({"m": model}, x[:1], tmp_path, threads=1)
    assert sorted(forms) == ["m|folded", "m|ort"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in forms["m|folded"].modules())
    with torch.no_grad():
        reference = model(x)
        for form in forms.values():
            assert (form(x) - reference).abs().max().item() < 1e-4
    assert (tmp_path / "m.onnx").is_file()


def test_baseline_training_variants_parse_as_yaml_values():
    bt = _load("baseline_training")
    assert bt.parse_variant(["lr=0.02", "augment=false", "optimizer=adam"]) == {
        "lr": 0.02,
        "augment": False,
        "optimizer": "adam",
    }
    with pytest.raises(ConfigError, match="'lr0.02' is not key=value"):
        bt.parse_variant(["lr0.02"])


def test_a_killed_baseline_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    protocol = cp.ProtocolConfig(name="t", train_subset=None, epochs=2, batch_size=8)
    bundle = _tiny_bundle()
    full, _ = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle, cache_dir=tmp_path / "full")
    assert not list((tmp_path / "full").glob("*.run"))  # the per-epoch checkpoints go once the cache is written

    real_fit = cp.fit
    monkeypatch.setattr(cp, "fit", lambda *a, **k: real_fit(*a, **k, hooks=[CrashAt(1)]))
    with pytest.raises(KeyboardInterrupt):
        cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle, cache_dir=tmp_path / "killed")
    (run_dir,) = (tmp_path / "killed").glob("*.run")
    assert (run_dir / "last.pt").exists() and not list((tmp_path / "killed").glob("*.pt"))
    monkeypatch.setattr(cp, "fit", real_fit)
    resumed, info = cp.train_baseline("narrow_vgg", protocol=protocol, bundle=bundle, cache_dir=tmp_path / "killed")
    assert not info["cache_hit"] and len(info["history"]) == 2 and not run_dir.exists()
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
