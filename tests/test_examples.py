"""The examples run (small settings) and reach what they promise."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_mlp_reaches_97_percent(capsys):
    pytest.importorskip("sklearn")
    acc = load("digits_mlp").main(["--no-progress"])
    out = capsys.readouterr().out
    assert acc >= 0.97
    assert "test accuracy" in out and "samples/s" in out
