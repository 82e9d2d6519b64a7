"""examples/chain_rule.py: the article's chain-rule formulas against jitprop."""

import math
import re

import numpy as np
import pytest

from _helpers import load_example as load


@pytest.fixture(scope="module")
def ex():
    return load("chain_rule")


@pytest.fixture(scope="module")
def res(ex):
    return ex.compute()


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _dsig(z):
    # written differently from the example on purpose: e^-z / (1 + e^-z)^2
    e = math.exp(-z)
    return e / (1.0 + e) ** 2


@pytest.fixture(scope="module")
def closed(ex):
    """The article's quantities from the stated numbers, computed here."""
    a0, y = ex.A0, ex.Y
    (w1, w2, w3), (b1, b2, b3) = ex.WEIGHTS, ex.BIASES
    z1 = w1 * a0 + b1
    a1 = _sig(z1)
    z2 = w2 * a1 + b2
    a2 = _sig(z2)
    z3 = w3 * a2 + b3
    a3 = _sig(z3)
    g = 2.0 * (a3 - y)
    return {
        "z1": z1, "a1": a1, "z2": z2, "a2": a2, "z3": z3, "a3": a3,
        "C0": (a3 - y) ** 2, "dC0_daL": g, "sp_zL": _dsig(z3), "dzL_dwL": a2,
        "dC0_dwL": g * _dsig(z3) * a2,
        "sp_zLm1": _dsig(z2), "dzL_daLm1": w3, "dzLm1_dwLm1": a1,
        "dC0_dwLm1": g * _dsig(z3) * w3 * _dsig(z2) * a1,
        "dC0_dwLm1_printed": g * _dsig(z3) * a2 * _dsig(z3) * a1,
        "dC0_dwLm1_fix_sigma_only": g * _dsig(z3) * a2 * _dsig(z2) * a1,
        "dC0_dwLm1_fix_w_only": g * _dsig(z3) * w3 * _dsig(z3) * a1,
    }


def test_intermediates_match_closed_forms(res, closed):
    for key, value in closed.items():
        assert res[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key
    # jitprop's forward pass and loss gradient give the same numbers
    for l in (1, 2, 3):
        assert res[f"jp_z{l}"] == pytest.approx(closed[f"z{l}"], rel=1e-12, abs=1e-14)
        assert res[f"jp_a{l}"] == pytest.approx(closed[f"a{l}"], rel=1e-12, abs=1e-14)
    assert res["jp_C0"] == pytest.approx(closed["C0"], rel=1e-12)
    assert res["jp_dC0_daL"] == pytest.approx(closed["dC0_daL"], rel=1e-12)


def test_last_layer_gradient(res, closed):
    assert abs(res["jp_dC0_dwL"] - closed["dC0_dwL"]) <= 1e-12
    assert abs(res["fd_dC0_dwL"] - closed["dC0_dwL"]) <= 1e-6 * abs(closed["dC0_dwL"])


def test_previous_layer_gradient_corrected_formula(res, closed):
    assert abs(res["jp_dC0_dwLm1"] - closed["dC0_dwLm1"]) <= 1e-12
    assert abs(res["fd_dC0_dwLm1"] - closed["dC0_dwLm1"]) <= 1e-6 * abs(closed["dC0_dwLm1"])


@pytest.mark.parametrize("key", ["dC0_dwLm1_printed", "dC0_dwLm1_fix_sigma_only", "dC0_dwLm1_fix_w_only"])
def test_article_formula_and_each_single_error_disagree(res, key):
    for ref in (res["jp_dC0_dwLm1"], res["fd_dC0_dwLm1"]):
        assert abs(res[key] - ref) / abs(ref) > 1e-3, key


def test_the_two_errors_are_visible_in_the_numbers(res):
    # the chosen numbers make both substitutions matter
    assert abs(res["sp_zL"] - res["sp_zLm1"]) / res["sp_zLm1"] > 1e-3
    assert abs(res["dzL_dwL"] - res["dzL_daLm1"]) > 1e-3


def test_matrix_form_matches_jitprop(ex):
    m = ex.matrix_form()
    assert m["max_abs_diff"] <= 1e-12
    shapes = {"dW1": (3, 4), "db1": (4,), "dW2": (4, 2), "db2": (2,)}
    for k, shape in shapes.items():
        assert m["jitprop"][k].shape == shape
        assert np.max(np.abs(m["jitprop"][k])) > 1e-6
        np.testing.assert_allclose(m["jitprop"][k], m["hand"][k], rtol=0, atol=1e-12)


FINAL_FRACTION = 1e-3   # the loss must end below this fraction of its start


def test_training_loss_falls(ex):
    steps, every = 200, 20
    losses = ex.train(steps, lr=0.5)
    assert len(losses) == steps
    printed = [losses[k] for k in range(steps) if k % every == 0 or k == steps - 1]
    assert all(b < a for a, b in zip(printed, printed[1:]))
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < FINAL_FRACTION * losses[0]


def test_sgd_update_is_p_minus_lr_grad(ex):
    assert ex.sgd_update_check(steps=3, lr=0.5) <= 1e-15


def _numbers(line):
    return [float(t) for t in re.findall(r"[+-]\d+\.\d+(?:e[+-]\d+)?", line)]


def test_main_prints_the_key_lines(ex, closed, capsys):
    ex.main(["--steps", "60", "--every", "20"])
    out = capsys.readouterr().out
    lines = out.splitlines()

    def line(start):
        hits = [ln for ln in lines if ln.strip().startswith(start)]
        assert hits, f"no line starting with {start!r}"
        return hits[0]

    # every printed hand value equals the closed form (printed with 12 decimals)
    printed = {
        "z(L) =": ("z3", "z3"), "a(L) =": ("a3", "a3"), "C0 =": ("C0", "C0"),
        "dC0/da(L) =": ("dC0_daL", "dC0_daL"), "sigma'(z(L))": ("sp_zL",),
        "dz(L)/dw(L) =": ("dzL_dwL", "dzL_dwL"),
        "dC0/dw(L) = product": ("dC0_dwL", "dC0_dwL", "dC0_dwL"),
        "as printed:": ("dC0_dwLm1_printed",), "only sigma'(z(L-1)) fixed": ("dC0_dwLm1_fix_sigma_only",),
        "only w(L) fixed": ("dC0_dwLm1_fix_w_only",), "corrected:": ("dC0_dwLm1",),
        "jitprop backward": ("dC0_dwLm1",), "central finite difference": ("dC0_dwLm1",),
        "sigma'(z(L-1)) =": ("sp_zLm1", "sp_zL"), "dz(L)/da(L-1) = w(L) =": ("dzL_daLm1", "dzL_dwL"),
    }
    for start, keys in printed.items():
        nums = _numbers(line(start))
        assert len(nums) >= len(keys), start
        for i, (v, k) in enumerate(zip(nums, keys)):
            fd = start == "central finite difference" or (start == "dC0/dw(L) = product" and i == 2)
            assert v == pytest.approx(closed[k], rel=1e-6 if fd else 0, abs=0 if fd else 1e-12), start

    assert "Only the corrected formula agrees" in out
    assert "max |hand - jitprop|" in out
    assert "SGD update equals p - lr*grad" in out
    assert "examples/vanishing_gradients.py" in out
    step_losses = [float(m) for m in re.findall(r"step\s+\d+\s+C0 = (\S+)", out)]
    assert len(step_losses) == 4   # steps 0, 20, 40 and the last, 59
    assert all(b < a for a, b in zip(step_losses, step_losses[1:]))
