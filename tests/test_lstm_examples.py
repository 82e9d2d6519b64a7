"""The LSTM examples run in quick mode and reach what they promise."""

import math

import numpy as np
import pytest

from _helpers import load_example as load


@pytest.mark.slow
def test_char_lstm_beats_unigram_entropy(capsys):
    mod = load("char_lstm")
    res = mod.main(["--quick", "--no-progress", "--sample-length", "120", "--temperature", "0.8"])
    out = capsys.readouterr().out
    # quick mode ends near 0.63 of the unigram entropy; 0.85 leaves a wide margin
    assert res["loss"][-1] < 0.85 * res["entropy"]
    assert res["loss"][-1] < res["loss"][0]
    assert 2.5 < res["entropy"] < 4.0            # English text with code: ~3.2 nats/char
    text = res["sample"]
    assert isinstance(text, str) and len(text) == 120
    assert set(text) <= set(res["vocab"])
    assert "unigram entropy" in out and "chars/s" in out and text in out


def test_char_lstm_pieces():
    mod = load("char_lstm")
    train_ids, heldout_ids, vocab = mod.load_text(5_000, n_heldout=500)
    assert train_ids.size == 5_000 and heldout_ids.size == 500
    assert vocab == sorted(vocab) and len(set(vocab)) == len(vocab)
    assert 0 <= train_ids.min() and max(train_ids.max(), heldout_ids.max()) < len(vocab)
    # the unigram entropy is at most log(V), and zero for a constant text
    H = mod.unigram_entropy(train_ids, len(vocab))
    assert 0 < H <= math.log(len(vocab))
    assert mod.unigram_entropy(train_ids[:1].repeat(10), len(vocab)) == 0.0


@pytest.mark.slow
def test_char_gru_variant_beats_unigram_entropy(capsys):
    res = load("char_lstm").main(["--quick", "--no-progress", "--cell", "gru", "--sample-length", "40"])
    # quick mode ends near 0.57 of the unigram entropy at the GRU's default rate
    assert res["cell"] == "gru" and res["loss"][-1] < 0.85 * res["entropy"]
    assert len(res["sample"]) == 40 and "GRU(32, 64" in capsys.readouterr().out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_model_takes_character_ids(cell):
    mod = load("char_lstm")
    ids, _, vocab = mod.load_text(3_000)
    model = mod.build(len(vocab), 8, cell=cell, embed_dim=5)
    assert mod.recurrent_layer(model).n_in == 5 and model.input_dtype.kind == "i"
    hist = mod.train(model, ids, len(vocab), epochs=1, batch_size=4, steps=8, lr=0.5, progress=False,
                     log=lambda line: None)
    assert hist["loss"][0] < 1.1 * np.log(len(vocab))
    text = mod.sample(model, vocab, "The ", length=7)
    assert len(text) == 7 and set(text) <= set(vocab)


@pytest.mark.slow
def test_adding_problem_learns(capsys):
    mse = load("adding_problem").main(["--quick", "--no-progress"])
    out = capsys.readouterr().out
    # quick mode (T = 20) ends near 0.001-0.004; the mean predictor scores 0.167
    assert mse < 0.02
    assert "baseline" in out and "test MSE" in out


def test_adding_problem_data():
    mod = load("adding_problem")
    X, y = mod.make_data(200, 10, seed=3)
    assert X.shape == (200, 10, 2) and y.shape == (200, 1)
    marks = X[..., 1]
    assert (marks.sum(axis=1) == 2).all()
    assert (marks[:, :5].sum(axis=1) == 1).all() and (marks[:, 5:].sum(axis=1) == 1).all()
    assert abs((X[..., 0] * marks).sum(axis=1, keepdims=True) - y).max() < 1e-6
