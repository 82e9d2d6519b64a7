"""The examples run (small settings) and reach what they promise."""


import pytest

from _helpers import load_example as load


def test_digits_mlp_reaches_97_percent(capsys):
    pytest.importorskip("sklearn")
    acc = load("digits_mlp").main(["--no-progress"])
    out = capsys.readouterr().out
    assert acc >= 0.97
    assert "test accuracy" in out and "samples/s" in out
