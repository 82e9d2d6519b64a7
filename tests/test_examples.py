"""The examples run (small settings) and reach what they promise."""


import pytest

from _helpers import load_example as load


def test_digits_mlp_reaches_about_97_percent(capsys):
    pytest.importorskip("sklearn")
    acc = load("digits_mlp").main(["--no-progress"])
    out = capsys.readouterr().out
    # seed 0 gave 0.9667 (SkylakeX kernels), but the float32 trajectory is
    # chaotic: seeds 0-9 gave 0.962 to 0.984 (jitprop.datasets' split), so a
    # bound that holds whatever the rounding sits below that range
    assert acc >= 0.95
    assert "test accuracy" in out and "samples/s" in out


def test_training_toolkit_example(capsys):
    pytest.importorskip("sklearn")
    results = load("training_toolkit").main(["--epochs", "12", "--hidden", "48"])
    out = capsys.readouterr().out
    assert "what each piece contributed" in out and "+ early stopping" in out
    assert len(results) == 5
    for r in results.values():
        assert r["test_accuracy"] > 0.85 and r["epochs"] <= 12
    # restore_best put back the best epoch: its validation loss is the best one recorded
    assert results["+ early stopping"]["val_loss"] == results["+ early stopping"]["best_val_loss"]
