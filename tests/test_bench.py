"""Tests for ``python -m jitprop.bench`` (the side-by-side benchmark command)."""

import json
import math
import os
import subprocess
import sys

import numpy as np

from jitprop import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_flops_counts_three_matmuls_per_layer_two_for_first():
    spec = bench.WORKLOADS["mlp-wide"]
    b = 512
    expected = (2 * 2 * b * 1024 * 2048      # first layer: forward + dW (no dx)
                + 3 * 2 * b * 2048 * 2048    # forward, dW, dx
                + 3 * 2 * b * 2048 * 10)
    assert bench.train_step_flops(spec) == expected
    assert bench.train_flops_per_sample(spec) == expected / b


def test_flops_per_sample_match_the_issue():
    """Issue 17: forward + weight gradients + input gradients of every layer
    but the first: 3.21 MFLOP per sample for mlp-mid, 33.7 for mlp-wide."""
    mid = bench.train_flops_per_sample(bench.WORKLOADS["mlp-mid"])
    wide = bench.train_flops_per_sample(bench.WORKLOADS["mlp-wide"])
    assert round(mid / 1e6, 2) == 3.21
    assert round(wide / 1e6, 1) == 33.7
    macs = 784 * 512 + 512 * 512 + 512 * 10
    assert mid == 2 * (2 * macs + 512 * 512 + 512 * 10)


def test_lstm_flops_per_sample_follow_the_same_rule():
    """Per time step: x@W_x, h@W_h and the head forward, the same three weight
    gradients, and the input gradients of the recurrence and of the head (not
    of the LSTM's input, the first layer)."""
    for name in ("lstm-small", "lstm-mid"):
        sp = bench.WORKLOADS[name]
        n_in, H, n_out, T = sp["n_in"], sp["hidden"], sp["n_out"], sp["T"]
        macs = n_in * 4 * H + H * 4 * H + H * n_out
        expected = T * 2 * (2 * macs + H * 4 * H + H * n_out)
        assert bench.train_flops_per_sample(sp) == expected, name
        assert bench.train_step_flops(sp) == expected * sp["batch"], name


def test_efficiency_is_training_flops_over_sgemm():
    from jitprop.bench import cli

    row = {"samples_per_s": 10000.0}
    cli.add_efficiency(row, 3.21e6, 100.0)
    assert math.isclose(row["gflops"], 32.1)
    assert math.isclose(row["efficiency"], 0.321)
    assert cli.format_efficiency(row["efficiency"]) == "32.1%"
    assert cli.format_efficiency(2.5e-7) == "2.5e-05%"
    assert cli.format_efficiency(None) == "-"
    # no SGEMM rate measured: FLOP/s but no efficiency; a failed row stays bare
    row = cli.add_efficiency({"samples_per_s": 1.0}, 16, None)
    assert row["gflops"] == 16e-9 and "efficiency" not in row
    assert cli.add_efficiency({"samples_per_s": None}, 16, 100.0) == {"samples_per_s": None}


def test_synthetic_data_is_deterministic_and_well_formed():
    spec = bench.WORKLOADS["mlp-small"]
    a, b = bench.make_data(spec), bench.make_data(spec)
    assert len(a["X"]) == spec["n_batches"]
    for xa, xb, ya, yb in zip(a["X"], b["X"], a["Y"], b["Y"]):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert xa.dtype == np.float32 and xa.flags.c_contiguous and xa.shape == (64, 784)
        assert ya.dtype == np.int64 and ya.shape == (64,)
        assert ya.min() >= 0 and ya.max() < 10
    spec = bench.WORKLOADS["lstm-small"]
    d = bench.make_data(spec)
    assert d["X"][0].shape == (16, 50, 16) and d["Y"][0].shape == (16, 50, 16)
    assert d["X"][0].dtype == np.float32 and d["Y"][0].dtype == np.float32


def test_quick_run_jitprop_only_json_output():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "jitprop.bench", "--quick", "--workloads", "mlp-tiny",
         "--threads", "1", "--seconds", "0.1", "--json", "-"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)          # with --json -, stdout holds only the JSON
    assert "mlp-tiny" in proc.stderr        # ...and the readable table goes to stderr

    meta = doc["metadata"]
    for key in ("cpu_model", "numpy", "numba", "torch", "jax", "date", "statistic"):
        assert key in meta
    assert meta["numpy"] == np.__version__

    rows = doc["results"]
    assert len(rows) == 2
    gemm, row = rows            # the run's SGEMM rate at 1 thread, then the workload
    assert gemm["framework"] == "numpy-sgemm" and gemm["threads"] == 1 and gemm["gflops"] > 0
    assert any(lib["user_api"] == "blas" and lib["architecture"] for lib in gemm["blas"])
    assert row["efficiency"] == row["gflops"] / gemm["gflops"]
    assert row["flops_per_sample"] == 16   # 1-1-1-1: 3 forward, 3 weight, 2 input products
    assert any(lib["user_api"] == "blas" and lib["owner"] == "scipy" for lib in row["blas"])
    assert row["kernels"]["llvm_cpu"]
    assert "Libraries and kernel sets per process:" in proc.stderr
    # mlp-tiny trains through fit over epochs of 1,024 samples, and fit's cost per call is reported
    assert bench.WORKLOADS["mlp-tiny"]["n_batches"] == 1024
    assert row["fit_call_steps"] == 16 and row["fit_call_s"] > 0
    assert row["fit_fixed_s"] < row["fit_call_s"]
    assert "Trainer.fit per call" in proc.stderr
    assert row["workload"] == "mlp-tiny"
    assert row["framework"] == "jitprop"
    assert row["threads"] == 1
    for key in ("samples_per_s", "first_step_s", "samples_per_s_median", "cpu_per_wall"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert row["steps_per_repeat"] >= 1
    assert row["final_loss"] is not None and math.isfinite(row["final_loss"])
    assert "error" not in row


def test_peer_workers_run_with_their_own_openmp_defaults(monkeypatch):
    """Importing jitprop sets a short OpenMP spin for jitprop's threads; the
    PyTorch worker must not inherit it (it would change PyTorch's own
    threading), while jitprop's worker keeps it."""
    from jitprop import _openmp, bench

    monkeypatch.setattr(_openmp, "ENV_SET", {"GOMP_SPINCOUNT": "2000"})
    monkeypatch.setenv("GOMP_SPINCOUNT", "2000")
    peer = bench.worker_env(2, "torch")
    assert "GOMP_SPINCOUNT" not in peer and peer["JITPROP_OMP_DEFAULTS"] == "0"
    own = bench.worker_env(2, "jitprop")
    assert own["GOMP_SPINCOUNT"] == "2000" and "JITPROP_OMP_DEFAULTS" not in own
    # a value the user chose is passed to every worker alike
    monkeypatch.setenv("GOMP_SPINCOUNT", "5000")
    assert bench.worker_env(2, "torch")["GOMP_SPINCOUNT"] == "5000"
    # and a worker told to keep the defaults does not set them on import
    code = "import os, jitprop._openmp as o; print(os.environ.get('GOMP_SPINCOUNT'), o.ENV_SET)"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JITPROP_OMP_DEFAULTS="0"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["None", "{}"]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "2000"


def test_step_products_match_the_flop_count():
    for name, spec in bench.WORKLOADS.items():
        prods = bench.step_products(spec)
        flops = sum(2 * m * k * n * count for _, m, k, n, count, _, _ in prods)
        assert flops == bench.train_step_flops(spec), name
        if spec["kind"] == "lstm":  # 2 per-step products per time step, 2 weight-gradient products, 3 for the head
            assert sum(p[4] for p in prods) == 2 * spec["T"] + 6, name


def test_floor_report_runs(tmp_path):
    out = tmp_path / "floor.json"
    r = subprocess.run([sys.executable, "-m", "jitprop.bench", "--floor", "--workloads", "mlp-small",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mlp-small" in r.stdout and "at most" in r.stdout
    doc = json.loads(out.read_text())
    f = doc["floor"]["mlp-small"]
    assert len(f["products"]) == 5 and f["seconds_per_step"] > 0
    assert f["max_samples_per_s"] == 64 / f["seconds_per_step"]


def _lib(api, internal, version, arch, path):
    return {"user_api": api, "internal_api": internal, "version": version, "architecture": arch,
            "owner": "scipy" if "scipy.libs" in path else "numpy" if "numpy.libs" in path else "",
            "filepath": path, "num_threads": 1}


def test_runtime_lines_name_each_blas_kernel_set_once_per_framework():
    from jitprop.bench import cli

    scipy_ob = _lib("blas", "openblas", "0.3.30", "SkylakeX", "/x/scipy.libs/libscipy_openblas.so")
    numpy_ob = _lib("blas", "openblas", "0.3.31", "Haswell", "/x/numpy.libs/libscipy_openblas64_.so")
    gomp = _lib("openmp", "openmp", None, None, "/x/libgomp.so.1")
    rows = [
        {"framework": "jitprop", "blas": [scipy_ob, numpy_ob, gomp],
         "kernels": {"numba": "0.68.1", "llvm_cpu": "znver4"}},
        # the same libraries in another order: the same set, one line
        {"framework": "jitprop", "blas": [gomp, numpy_ob, scipy_ob],
         "kernels": {"numba": "0.68.1", "llvm_cpu": "znver4"}},
        {"framework": "torch", "blas": [gomp], "kernels": {"blas": "mkl", "cpu_capability": "AVX512"}},
    ]
    gemm = [{"framework": "numpy-sgemm", "blas": [numpy_ob]}]
    lines = cli.format_runtime(rows, gemm)
    assert lines[0].startswith("Libraries and kernel sets")
    body = lines[1:]
    assert len(body) == 3
    assert body[0].split()[0] == "numpy-sgemm" and "openblas 0.3.31 Haswell (numpy)" in body[0]
    assert body[1].split()[0] == "jitprop"
    assert "openblas 0.3.30 SkylakeX (scipy)" in body[1] and "openblas 0.3.31 Haswell (numpy)" in body[1]
    assert "llvm_cpu znver4" in body[1]
    assert body[2].split()[0] == "torch" and "blas mkl" in body[2] and "cpu_capability AVX512" in body[2]
    # a process with a different kernel set gets its own line
    rows.append({"framework": "jitprop", "blas": [dict(scipy_ob, architecture="Haswell")],
                 "kernels": {"numba": "0.68.1", "llvm_cpu": "znver4"}})
    assert len(cli.format_runtime(rows, gemm)) == 5


def _cfg(fw, th, rates, variant=None, wl="lstm-mid"):
    row = {"workload": wl, "framework": fw, "threads": th, "config_threads": th, "variant": variant,
           "batch": 64}
    best = {}
    for r in rates:
        out = bench.cli.record_round(best, (wl, th, fw, variant), dict(row, samples_per_s=r))
    return out


def test_record_round_keeps_the_best_round_and_every_rate():
    best = {}
    for rate in (100.0, None, 130.0, 120.0):
        row = bench.cli.record_round(best, "k", {"samples_per_s": rate, "round_rate": rate})
    assert row is best["k"]
    assert row["samples_per_s"] == 130.0 and row["round_rate"] == 130.0
    assert row["samples_per_s_rounds"] == [100.0, None, 130.0, 120.0]


def test_settled_needs_a_second_round_near_the_best():
    assert not bench.cli.is_settled([100.0])
    assert not bench.cli.is_settled([100.0, None])
    assert bench.cli.is_settled([80.0, 100.0, 96.0])     # a slow round changes nothing
    assert not bench.cli.is_settled([100.0, 90.0, 80.0])  # one fast run alone is not reproduced
    assert bench.cli.is_settled([100.0, 90.0], tol=0.1)


def test_peer_at_best_takes_the_better_of_one_and_n_threads_and_of_formulations():
    rows = [_cfg("jax", 1, [700.0], "einsum-hoisted"), _cfg("jax", 1, [1400.0, 1300.0], "xw-in-scan"),
            _cfg("jax", 2, [1000.0], "einsum-hoisted"), _cfg("jax", 2, [1200.0], "xw-in-scan"),
            _cfg("jax", 4, [9999.0], "xw-in-scan"),       # neither 1 nor 2 threads: never chosen at 2
            _cfg("torch", 1, [1300.0]), _cfg("torch", 2, [2100.0]), _cfg("torch", 3, [None])]
    at2 = bench.cli.peer_at_best(rows, "jax", 2)
    assert (at2["config_threads"], at2["variant"], at2["samples_per_s"]) == (1, "xw-in-scan", 1400.0)
    assert bench.cli.config_label(at2) == "1t,xw-in-scan"
    assert bench.cli.peer_at_best(rows, "jax", 1)["samples_per_s"] == 1400.0
    t2 = bench.cli.peer_at_best(rows, "torch", 2)
    assert (t2["config_threads"], t2["samples_per_s"]) == (2, 2100.0)
    assert bench.cli.config_label(t2) == "2t"
    assert bench.cli.peer_at_best(rows, "torch", 1)["samples_per_s"] == 1300.0
    assert bench.cli.peer_at_best(rows, "torch", 3)["samples_per_s"] == 1300.0   # 3t failed
    assert bench.cli.peer_at_best(rows, "mxnet", 2) is None


def test_compare_ratios_against_the_best_peer_at_its_best():
    rows = [_cfg("jitprop", 1, [1500.0, 1490.0]), _cfg("jitprop", 2, [2400.0, 1000.0, 2350.0]),
            _cfg("torch", 1, [1300.0]), _cfg("torch", 2, [900.0, 2000.0]),
            _cfg("jax", 1, [1400.0, 1380.0], "xw-in-scan"), _cfg("jax", 2, [1200.0], "xw-in-scan"),
            _cfg("jax", 1, [600.0], "einsum-hoisted", wl="lstm-small")]   # another workload
    group = bench.cli.compare(rows, "lstm-mid", 2, ["jitprop", "torch", "jax"])
    jp, torch_row, jax_row = group
    assert [r["framework"] for r in group] == ["jitprop", "torch", "jax"]
    assert all(r["threads"] == 2 for r in group)
    assert jp["samples_per_s"] == 2400.0 and jp["config_threads"] == 2
    assert (torch_row["config_threads"], torch_row["samples_per_s"]) == (2, 2000.0)
    assert (jax_row["config_threads"], jax_row["samples_per_s"]) == (1, 1400.0)
    assert jp["best_peer"] == "torch" and jp["best_peer_config"] == "2t"
    assert jp["ratio_vs_best_peer"] == 1.2
    assert jp["target_ratio"] == 1.5 and jp["target_met"] is False
    assert jp["settled"] is False          # torch's 2000 was not reproduced
    # the configuration rows themselves are not changed by the comparison
    assert [r["threads"] for r in rows if r["framework"] == "jax"] == [1, 2, 1]

    group = bench.cli.compare(rows, "lstm-mid", 1, ["jitprop", "torch", "jax"])
    jp = group[0]
    assert jp["best_peer"] == "jax" and jp["best_peer_config"] == "1t,xw-in-scan"
    assert math.isclose(jp["ratio_vs_best_peer"], 1500.0 / 1400.0)
    assert jp["settled"] is True
    # jitprop alone: no ratio
    assert "ratio_vs_best_peer" not in bench.cli.compare(rows, "lstm-mid", 1, ["jitprop"])[0]


def test_table_prints_peer_configs_ratio_target_and_efficiency():
    rows = [_cfg("jitprop", 2, [2400.0, 2390.0]), _cfg("torch", 1, [1300.0, 1290.0]),
            _cfg("torch", 2, [900.0]), _cfg("jax", 1, [1000.0, 1000.0], "xw-in-scan")]
    group = bench.cli.compare(rows, "lstm-mid", 2, ["jitprop", "torch", "jax"])
    flops = bench.train_flops_per_sample(bench.WORKLOADS["lstm-mid"])
    for r in group:
        bench.cli.add_efficiency(r, flops, 200.0)
    text = bench.cli.format_table(group, ["jitprop", "torch", "jax"], {2: 200.0})
    line = next(ln for ln in text.splitlines() if ln.startswith("lstm-mid"))
    assert "2.4k" in line and "1.3k (1t)" in line and "1.0k (1t,xw-in-scan)" in line
    assert "1.85x (torch)" in line and "1.5x met" in line and " yes " in line
    eff = [100 * flops * r / 200e9 for r in (2400.0, 1300.0, 1000.0)]
    assert "/".join("%.3g%%" % e for e in eff) in line


def test_jax_lstm_formulations_compute_the_same_loss():
    jax = __import__("pytest").importorskip("jax")
    from jitprop.bench import peers

    spec = dict(bench.WORKLOADS["lstm-small"], n_batches=1, T=6)
    data = bench.make_data(spec)
    losses = []
    for v in peers.LSTM_JAX_VARIANTS:
        step, _ = peers.make_jax_step(spec, data, 1, variant=v)
        losses.append(float(jax.device_get(step(0))))
    assert peers.variants("jax", spec) == list(peers.LSTM_JAX_VARIANTS)
    assert peers.variants("torch", spec) == [None]
    assert math.isfinite(losses[0]) and math.isclose(losses[0], losses[1], rel_tol=1e-5)


def test_fit_cost_per_call_and_its_line():
    from jitprop.bench import cli, worker

    calls = []
    r = worker.time_fit_calls(lambda: calls.append(1), 16, 1e-6, seconds=0.01, repeats=2)
    assert len(calls) == 3 + 2 * r["fit_calls_per_block"] and r["fit_calls_per_block"] >= 3
    assert r["fit_call_steps"] == 16
    assert math.isclose(r["fit_fixed_s"], r["fit_call_s"] - 16e-6)
    rows = [{"framework": "jitprop", "workload": "mlp-tiny", "threads": 1, "fit_call_s": 80e-6,
             "fit_call_steps": 16, "fit_fixed_s": 48e-6},
            {"framework": "jax", "workload": "mlp-tiny", "threads": 1},
            {"framework": "jitprop", "workload": "mlp-wide", "threads": 1}]
    lines = cli.format_fit_cost(rows)
    assert len(lines) == 2 and "16 batches" in lines[0]
    assert lines[1].split() == ["mlp-tiny", "1", "thread", ":", "80.0", "us", "per", "call", "=", "16",
                                "steps", "x", "2.00", "us", "+", "48.0", "us", "fixed"]
    assert cli.format_fit_cost(rows[1:]) == []


def test_extra_rounds_remeasure_both_sides_of_each_unsettled_ratio():
    results = [
        {"framework": "numpy-sgemm", "workload": "sgemm-2048", "threads": 2},
        {"framework": "jitprop", "workload": "lstm-mid", "threads": 1, "settled": True},
        {"framework": "jitprop", "workload": "lstm-mid", "threads": 2, "settled": False},
        {"framework": "jax", "workload": "lstm-mid", "threads": 2},
        {"framework": "jitprop", "workload": "mlp-mid", "threads": 2, "settled": False},
        {"framework": "jitprop", "workload": "mlp-tiny", "threads": 2},   # no peer: no flag
    ]

    def variants(fw, wl):
        return ["a", "b"] if (fw, wl) == ("jax", "lstm-mid") else [None]

    todo = bench.cli.extra_round_configs(results, ["jitprop", "torch", "jax"], [1, 2], variants)
    assert todo == [
        ("lstm-mid", 2, "jitprop", None),
        ("lstm-mid", 1, "torch", None), ("lstm-mid", 2, "torch", None),
        ("lstm-mid", 1, "jax", "a"), ("lstm-mid", 1, "jax", "b"),
        ("lstm-mid", 2, "jax", "a"), ("lstm-mid", 2, "jax", "b"),
        ("mlp-mid", 2, "jitprop", None),
        ("mlp-mid", 1, "torch", None), ("mlp-mid", 2, "torch", None),
        ("mlp-mid", 1, "jax", None), ("mlp-mid", 2, "jax", None),
    ]
    assert bench.cli.extra_round_configs(results[:2], ["jitprop", "jax"], [1, 2], variants) == []


def test_gru_workloads_and_jax_peer_compute_the_jitprop_gru():
    """The JAX peer's GRU scan gives the same first-step loss as jitprop's
    GRU workload model with the same weights (the peer's init order:
    W_x, W_h, b_x, b_h, W_out, b_out from default_rng(0))."""
    import pytest

    pytest.importorskip("jax")
    from jitprop.bench import peers, workloads

    for name, H in (("gru-small", 64), ("gru-mid", 256)):
        spec = bench.WORKLOADS[name]
        assert spec["kind"] == "gru" and spec["hidden"] == H and spec["T"] == 50
        labels = [p[0] for p in workloads.step_products(spec)]
        assert labels[0] == "gru x@W_x (all steps)"
        assert workloads.step_products(spec)[1][3] == 3 * H          # h @ W_h is (B, H) @ (H, 3H)
    spec = dict(bench.WORKLOADS["gru-small"], T=5, batch=3, n_batches=1, n_in=4, hidden=6, n_out=2)
    data = workloads.make_data(spec)
    step, _ = peers.make_jax_step(spec, data, 1)
    jax_loss = float(step(0))
    model, loss = workloads.build_model(spec)
    gru, dense = model.layers
    rng = np.random.default_rng(0)
    for layer, name, fan_in in ((gru, "W_x", 6), (gru, "W_h", 6), (gru, "b_x", 6), (gru, "b_h", 6),
                                (dense, "W", 6), (dense, "b", 6)):
        layer.params[name][...] = peers._uniform_init(rng, fan_in, layer.params[name].shape)
    ours = loss.forward(model.forward(data["X"][0]), data["Y"][0])
    assert abs(ours - jax_loss) < 1e-5 * max(1.0, abs(ours))
