"""Character-level LSTM language model on the Python documentation.

The text is the documentation that ships with every CPython in
``pydoc_data.topics`` (the pages behind ``help("assert")`` and friends,
about 465,000 characters of English prose and code): no download.  By default
the first 200,000 characters are used for training (``--chars`` to change
it) and the 20,000 characters after them are held out.

Model: character ids ``(B, T)`` -> ``Embedding(V, E)`` -> ``LSTM(E, H,
stateful=True)`` (or ``GRU``, ``--cell gru``) -> ``Dense(H, V)`` on every time
step -> softmax cross-entropy at every position.  ``--cell both`` trains an
LSTM and a GRU of the same width on the same text and compares them.  Training is truncated backpropagation through time: the text is cut
into B parallel streams that are walked through in chunks of T characters,
the LSTM carrying its state from one chunk to the next (gradients stop at
chunk boundaries).  The loss is reported in nats per character next to the
unigram entropy of the text, the loss of a model that knows only how often
each character occurs.  At the end the model writes some text.

    python examples/char_lstm.py [--chars 200000] [--epochs 3] [--hidden 128]
                                 [--cell lstm|gru|both] [--embed-dim 32]
                                 [--batch-size 16] [--steps 32] [--lr LR]
                                 [--temperature 0.7] [--quick]

``--quick`` (for the tests) trains a 64-unit model for 2 epochs on 60,000
characters.
"""

import argparse
import collections
import math
import sys
import time

import numpy as np

import jitprop as jp

#: rare characters (fewer than ``min_count`` occurrences) are all mapped to this one
FOLD_CHAR = "\N{REPLACEMENT CHARACTER}"


def load_text(n_chars=200_000, n_heldout=0, min_count=10):
    """The pydoc topics text, encoded as character ids.

    Parameters
    ----------
    n_chars : int or None
        Characters used for training, from the start of the text.  None, or
        more than the text holds: all of it except the held-out part.
    n_heldout : int
        Characters right after the training text kept for evaluation.
    min_count : int
        Characters seen fewer times than this in the training text are folded
        into one id, shown as ``FOLD_CHAR``.

    Returns
    -------
    train_ids : ndarray (n,) int64
    heldout_ids : ndarray (m,) int64 (possibly empty)
    vocab : list of str
        ``vocab[i]`` is the character of id ``i`` (sorted; the fold character,
        if used, is included).
    """
    from pydoc_data.topics import topics

    text = "\n".join(topics.values())
    if n_chars is None or n_chars + n_heldout > len(text):
        n_chars = max(len(text) - n_heldout, 2)
    train, heldout = text[:n_chars], text[n_chars:n_chars + n_heldout]
    counts = collections.Counter(train)
    keep = sorted(c for c, k in counts.items() if k >= min_count)
    if len(keep) < len(counts) or any(c not in counts for c in set(heldout)):
        keep = sorted(keep + [FOLD_CHAR])
    index = {c: i for i, c in enumerate(keep)}
    fold = index.get(FOLD_CHAR, -1)

    def encode(s):
        return np.fromiter((index.get(c, fold) for c in s), dtype=np.int64, count=len(s))

    return encode(train), encode(heldout), keep


def unigram_entropy(ids, vocab_size):
    """Entropy of the character frequencies in nats per character."""
    p = np.bincount(ids, minlength=vocab_size) / ids.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


CELLS = {"lstm": jp.LSTM, "gru": jp.GRU}
#: Default learning rates: in quick mode the GRU stalls near 76% of the
#: unigram entropy at 2.0 and reaches 57% at 1.0 (the LSTM: 55% at 2.0).
DEFAULT_LR = {"lstm": 2.0, "gru": 1.0}


def build(vocab_size, hidden=128, seed=0, stateful=True, cell="lstm", embed_dim=32):
    """``Embedding(V, E)``, ``LSTM(E, H, stateful)`` (or ``GRU``) and
    ``Dense(H, V)`` applied to every step; the model takes character ids."""
    return jp.Sequential([
        jp.Embedding(vocab_size, embed_dim, seed=seed + 2),
        CELLS[cell](embed_dim, hidden, stateful=stateful, seed=seed),
        jp.Dense(hidden, vocab_size, seed=seed + 1),
    ])


def recurrent_layer(model):
    """The stateful LSTM/GRU of a model from :func:`build`."""
    return model.layers[1]


def _streams(ids, batch_size, steps):
    """Inputs and next-character targets as B parallel streams, cut to a whole
    number of chunks of ``steps``: two (B, L) arrays."""
    L = (ids.size - 1) // batch_size // steps * steps
    if L == 0:
        raise ValueError(f"{ids.size} characters are too few for {batch_size} streams of {steps} steps")
    x = ids[:batch_size * L].reshape(batch_size, L)
    y = ids[1:batch_size * L + 1].reshape(batch_size, L)
    return x, y


class _Chunks:
    """Input id and label buffers for chunks of the streams, reused."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.T = x, y, steps
        B = x.shape[0]
        self.ids = np.empty((B, steps), np.int64)
        self.labels = np.empty(B * steps, np.int64)
        self.n = x.shape[1] // steps

    def get(self, k):
        s = k * self.T
        np.copyto(self.ids, self.x[:, s:s + self.T])     # (the slice is not contiguous)
        self.labels.reshape(self.ids.shape)[...] = self.y[:, s:s + self.T]
        return self.ids, self.labels


def evaluate(model, loss, ids, batch_size, steps, vocab_size):
    """Mean cross-entropy (nats/char) of next-character prediction on ``ids``,
    run as ``batch_size`` streams from a zero state.  Resets the recurrent state."""
    lstm = recurrent_layer(model)
    x, y = _streams(ids, batch_size, steps)
    chunks = _Chunks(x, y, steps)
    lstm.reset_state()
    total = 0.0
    for k in range(chunks.n):
        xb, yb = chunks.get(k)
        out = model.forward(xb)
        total += loss.forward(out.reshape(-1, vocab_size), yb)
    lstm.reset_state()
    return total / chunks.n


def train(model, ids, vocab_size, epochs=3, batch_size=16, steps=32, lr=2.0, momentum=0.9, clip=1.0,
          heldout=None, progress=True, log=print):
    """Truncated-BPTT training of a model from :func:`build`.

    The text is split into ``batch_size`` streams walked through in chunks of
    ``steps`` characters; the recurrent state is carried across chunks and
    reset at the start of every epoch.

    Returns
    -------
    dict
        ``"loss"``: mean training loss per epoch (nats/char);
        ``"heldout_loss"``: per epoch, if ``heldout`` ids were given;
        ``"chars_per_s"``: training throughput per epoch;
        ``"entropy"``: unigram entropy of the training text (nats/char).
    """
    lstm = recurrent_layer(model)
    V = vocab_size
    H = unigram_entropy(ids, V)
    loss = jp.SoftmaxCrossEntropy()
    opt = jp.SGD(model, lr=lr, momentum=momentum, clip_norm=clip)
    x, y = _streams(ids, batch_size, steps)
    chunks = _Chunks(x, y, steps)
    chars_per_step = batch_size * steps
    hist = {"loss": [], "heldout_loss": [], "chars_per_s": [], "entropy": H}
    for epoch in range(epochs):
        lstm.reset_state()
        bar = jp.Progress(chunks.n, desc=f"epoch {epoch + 1}/{epochs}") if progress else None
        total = 0.0
        t0 = time.perf_counter()
        for k in range(chunks.n):
            xb, yb = chunks.get(k)
            out = model.forward(xb)                                   # (B, T, V), C-contiguous
            value = loss.forward(out.reshape(-1, V), yb)              # over all B*T positions
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, chunk {k + 1}")
            model.backward(loss.backward().reshape(out.shape), need_input_grad=False)
            opt.step()
            total += value
            if bar is not None:
                el = time.perf_counter() - t0
                bar.update(k + 1, f"loss {total / (k + 1):.3f} {(k + 1) * chars_per_step / el:,.0f} chars/s")
        dt = time.perf_counter() - t0
        mean = total / chunks.n
        hist["loss"].append(mean)
        hist["chars_per_s"].append(chunks.n * chars_per_step / dt)
        info = f"loss {mean:.3f} {hist['chars_per_s'][-1]:,.0f} chars/s"
        if bar is not None:
            bar.close(info)
        line = (f"epoch {epoch + 1:2d}  train loss {mean:.3f} nats/char = {mean / H:.0%} of the unigram "
                f"entropy {H:.3f}  ({hist['chars_per_s'][-1]:,.0f} chars/s, {dt:.1f} s)")
        if heldout is not None and heldout.size > batch_size * steps:
            hl = evaluate(model, loss, heldout, batch_size, steps, V)
            hist["heldout_loss"].append(hl)
            line += f"  held-out loss {hl:.3f}"
        log(line)
    lstm.reset_state()
    return hist


def warm_up(vocab_size, hidden, batch_size, steps, cell="lstm", embed_dim=32):
    """Compile (or load from Numba's cache) every kernel training and sampling
    use, on a throwaway model, so that the timings below measure training only.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    model = build(vocab_size, hidden, cell=cell, embed_dim=embed_dim)
    x = np.zeros((batch_size, steps), np.int64)
    loss = jp.SoftmaxCrossEntropy()
    out = model.forward(x)
    loss.forward(out.reshape(-1, vocab_size), np.zeros(batch_size * steps, np.int64))
    model.backward(loss.backward().reshape(out.shape), need_input_grad=False)
    jp.SGD(model, lr=0.1, momentum=0.9, clip_norm=1.0).step()
    recurrent_layer(model).reset_state()
    model.forward(np.ascontiguousarray(x[:1, :1]))       # batch-1 steps, as in sample()
    return time.perf_counter() - t0


def sample(model, vocab, prompt="The ", length=300, temperature=0.7, seed=0):
    """Generate ``length`` characters after ``prompt``, one step at a time.

    Runs a batch-1 copy of ``model`` (the training model's stateful layer
    holds batch-size state and must not be disturbed), feeding each drawn
    character back in.  Lower ``temperature`` gives safer, more repetitive
    text; 1.0 samples from the model's distribution.

    Returns
    -------
    str
        The ``length`` generated characters (without the prompt).
    """
    V = len(vocab)
    index = {c: i for i, c in enumerate(vocab)}
    fold = index.get(FOLD_CHAR)
    rnn = recurrent_layer(model)
    gen = build(V, rnn.n_hidden, stateful=True, cell=type(rnn).__name__.lower(), embed_dim=rnn.n_in)
    gen.set_params(model.get_params())
    rng = np.random.default_rng(seed)
    prompt_ids = [index.get(c, fold) for c in prompt]
    prompt_ids = [i for i in prompt_ids if i is not None] or [rng.integers(V)]
    x = np.array([prompt_ids], np.int64)
    logits = gen.forward(x)[0, -1]                         # state now follows the prompt
    step = np.zeros((1, 1), np.int64)
    out = []
    for _ in range(length):
        z = logits.astype(np.float64) / max(temperature, 1e-6)
        p = np.exp(z - z.max())
        p /= p.sum()
        c = int(rng.choice(V, p=p))
        out.append(vocab[c])
        step[0, 0] = c
        logits = gen.forward(step)[0, -1]
    return "".join(out)


def run(cell, args, train_ids, heldout_ids, vocab):
    """Build, warm up, train and sample one model (``cell`` "lstm" or "gru");
    prints as it goes and returns the result dict of :func:`main`."""
    V = len(vocab)
    H = unigram_entropy(train_ids, V)
    model = build(V, args.hidden, seed=args.seed, cell=cell, embed_dim=args.embed_dim)
    print(f"model: {' -> '.join(repr(la) for la in model.layers)}, {model.n_params:,} parameters; "
          f"{args.batch_size} streams x {args.steps} steps per update")
    print(f"compiling the kernels (or loading them from Numba's cache): "
          f"{warm_up(V, args.hidden, args.batch_size, args.steps, cell, args.embed_dim):.1f} s")
    t0 = time.perf_counter()
    hist = train(model, train_ids, V, epochs=args.epochs, batch_size=args.batch_size, steps=args.steps,
                 lr=DEFAULT_LR[cell] if args.lr is None else args.lr, momentum=args.momentum, clip=args.clip,
                 heldout=heldout_ids if heldout_ids.size else None, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    final = hist["loss"][-1]
    print(f"final training loss {final:.3f} nats/char ({final / math.log(2):.2f} bits/char), "
          f"{1 - final / H:.0%} below the unigram entropy {H:.3f}")
    if hist["heldout_loss"]:
        print(f"held-out loss {hist['heldout_loss'][-1]:.3f} nats/char")
    extra = ", including the held-out evaluation" if hist["heldout_loss"] else ""
    print(f"throughput: {np.mean(hist['chars_per_s']):,.0f} characters/s in training "
          f"({wall:.1f} s in all{extra})")

    text = sample(model, vocab, args.prompt, args.sample_length, args.temperature, args.seed)
    print(f"sample (temperature {args.temperature}, seed {args.seed}):")
    print("-" * 60)
    print(args.prompt + text)
    print("-" * 60)
    return {"cell": cell, "loss": hist["loss"], "entropy": H, "heldout_loss": hist["heldout_loss"],
            "chars_per_s": hist["chars_per_s"], "sample": text, "vocab": vocab, "n_params": model.n_params}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=200_000, help="training characters (from the start of the text)")
    p.add_argument("--heldout", type=int, default=20_000, help="held-out characters after the training text")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--cell", choices=["lstm", "gru", "both"], default="lstm",
                   help="recurrent layer; 'both' trains an LSTM and a GRU and compares them")
    p.add_argument("--embed-dim", type=int, default=32, help="width E of the character embedding")
    p.add_argument("--batch-size", type=int, default=16, help="parallel streams B")
    p.add_argument("--steps", type=int, default=32, help="BPTT chunk length T")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 2.0 LSTM, 1.0 GRU)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="The ")
    p.add_argument("--sample-length", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--quick", action="store_true", help="small settings that run in ~20 s (for tests)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.chars, args.heldout, args.epochs, args.hidden = 60_000, 0, 2, 64

    train_ids, heldout_ids, vocab = load_text(args.chars, args.heldout)
    V = len(vocab)
    H = unigram_entropy(train_ids, V)
    folded = " (rare characters folded into one)" if FOLD_CHAR in vocab else ""
    print(f"text: {train_ids.size:,} training characters, {heldout_ids.size:,} held out; "
          f"vocabulary {V}{folded}")
    print(f"unigram entropy: {H:.3f} nats/char (the loss of a model that knows only character frequencies)")
    if args.cell != "both":
        return run(args.cell, args, train_ids, heldout_ids, vocab)
    results = {cell: run(cell, args, train_ids, heldout_ids, vocab) for cell in ("lstm", "gru")}
    print("comparison (same text, width and number of updates; learning rate per cell unless --lr):")
    for cell, res in results.items():
        held = f"  held-out {res['heldout_loss'][-1]:.3f}" if res["heldout_loss"] else ""
        print(f"  {cell.upper():4s} {res['n_params']:8,} parameters  final loss {res['loss'][-1]:.3f} nats/char"
              f"{held}  {np.mean(res['chars_per_s']):10,.0f} chars/s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
