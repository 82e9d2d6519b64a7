"""Character-level LSTM language model on the Python documentation.

The text is the documentation that ships with every CPython in
``pydoc_data.topics`` (the pages behind ``help("assert")`` and friends,
about 465,000 characters of English prose and code): no download.  By default
the first 200,000 characters are used for training (``--chars`` to change
it) and the 20,000 characters after them are held out.

Model: one-hot characters ``(B, T, V)`` -> ``LSTM(V, H, stateful=True)`` ->
``Dense(H, V)`` on every time step -> softmax cross-entropy at every
position.  Training is truncated backpropagation through time: the text is cut
into B parallel streams that are walked through in chunks of T characters,
the LSTM carrying its state from one chunk to the next (gradients stop at
chunk boundaries).  The loss is reported in nats per character next to the
unigram entropy of the text, the loss of a model that knows only how often
each character occurs.  At the end the model writes some text.

    python examples/char_lstm.py [--chars 200000] [--epochs 3] [--hidden 128]
                                 [--batch-size 16] [--steps 32] [--lr 2.0]
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


def build(vocab_size, hidden=128, seed=0, stateful=True):
    """``LSTM(V, H, stateful)`` followed by ``Dense(H, V)`` applied to every step."""
    return jp.Sequential([
        jp.LSTM(vocab_size, hidden, stateful=stateful, seed=seed),
        jp.Dense(hidden, vocab_size, seed=seed + 1),
    ])


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
    """One-hot input and label buffers for chunks of the streams, reused."""

    def __init__(self, x, y, steps, vocab_size, dtype):
        self.x, self.y, self.T, self.V = x, y, steps, vocab_size
        B = x.shape[0]
        self.onehot = np.zeros((B, steps, vocab_size), dtype)
        self.labels = np.empty(B * steps, np.int64)
        self._rows = np.arange(B * steps)
        self._prev = None
        self.n = x.shape[1] // steps

    def get(self, k):
        s = k * self.T
        flat = self.onehot.reshape(-1, self.V)
        if self._prev is not None:
            flat[self._rows, self._prev] = 0.0        # clear the previous chunk's ones
        cols = self.x[:, s:s + self.T].ravel()         # a copy (the slice is not contiguous)
        flat[self._rows, cols] = 1.0
        self._prev = cols
        self.labels[:] = self.y[:, s:s + self.T].ravel()
        return self.onehot, self.labels


def evaluate(model, loss, ids, batch_size, steps, vocab_size):
    """Mean cross-entropy (nats/char) of next-character prediction on ``ids``,
    run as ``batch_size`` streams from a zero state.  Resets the LSTM state."""
    lstm = model.layers[0]
    x, y = _streams(ids, batch_size, steps)
    chunks = _Chunks(x, y, steps, vocab_size, model.dtype)
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
    ``steps`` characters; the LSTM state is carried across chunks and reset
    at the start of every epoch.

    Returns
    -------
    dict
        ``"loss"``: mean training loss per epoch (nats/char);
        ``"heldout_loss"``: per epoch, if ``heldout`` ids were given;
        ``"chars_per_s"``: training throughput per epoch;
        ``"entropy"``: unigram entropy of the training text (nats/char).
    """
    lstm = model.layers[0]
    V = vocab_size
    H = unigram_entropy(ids, V)
    loss = jp.SoftmaxCrossEntropy()
    opt = jp.SGD(model, lr=lr, momentum=momentum, clip_norm=clip)
    x, y = _streams(ids, batch_size, steps)
    chunks = _Chunks(x, y, steps, V, model.dtype)
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


def warm_up(vocab_size, hidden, batch_size, steps):
    """Compile (or load from Numba's cache) every kernel training and sampling
    use, on a throwaway model, so that the timings below measure training only.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    model = build(vocab_size, hidden)
    x = np.zeros((batch_size, steps, vocab_size), model.dtype)
    x[..., 0] = 1.0
    loss = jp.SoftmaxCrossEntropy()
    out = model.forward(x)
    loss.forward(out.reshape(-1, vocab_size), np.zeros(batch_size * steps, np.int64))
    model.backward(loss.backward().reshape(out.shape), need_input_grad=False)
    jp.SGD(model, lr=0.1, momentum=0.9, clip_norm=1.0).step()
    model.layers[0].reset_state()
    model.forward(np.ascontiguousarray(x[:1, :1]))       # batch-1 steps, as in sample()
    return time.perf_counter() - t0


def sample(model, vocab, prompt="The ", length=300, temperature=0.7, seed=0):
    """Generate ``length`` characters after ``prompt``, one step at a time.

    Runs a batch-1 copy of ``model`` (the training model's stateful LSTM
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
    lstm0 = model.layers[0]
    gen = build(V, lstm0.n_hidden, stateful=True)
    gen.set_params(model.get_params())
    rng = np.random.default_rng(seed)
    prompt_ids = [index.get(c, fold) for c in prompt]
    prompt_ids = [i for i in prompt_ids if i is not None] or [rng.integers(V)]
    x = np.zeros((1, len(prompt_ids), V), gen.dtype)
    x[0, np.arange(len(prompt_ids)), prompt_ids] = 1.0
    logits = gen.forward(x)[0, -1]                         # state now follows the prompt
    step = np.zeros((1, 1, V), gen.dtype)
    out = []
    for _ in range(length):
        z = logits.astype(np.float64) / max(temperature, 1e-6)
        p = np.exp(z - z.max())
        p /= p.sum()
        c = int(rng.choice(V, p=p))
        out.append(vocab[c])
        step[...] = 0.0
        step[0, 0, c] = 1.0
        logits = gen.forward(step)[0, -1]
    return "".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=200_000, help="training characters (from the start of the text)")
    p.add_argument("--heldout", type=int, default=20_000, help="held-out characters after the training text")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="parallel streams B")
    p.add_argument("--steps", type=int, default=32, help="BPTT chunk length T")
    p.add_argument("--lr", type=float, default=2.0)
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

    model = build(V, args.hidden, seed=args.seed)
    print(f"model: {model.layers[0]!r} -> {model.layers[1]!r}, {model.n_params:,} parameters; "
          f"{args.batch_size} streams x {args.steps} steps per update")
    print(f"compiling the kernels (or loading them from Numba's cache): "
          f"{warm_up(V, args.hidden, args.batch_size, args.steps):.1f} s")
    t0 = time.perf_counter()
    hist = train(model, train_ids, V, epochs=args.epochs, batch_size=args.batch_size, steps=args.steps,
                 lr=args.lr, momentum=args.momentum, clip=args.clip,
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
    return {"loss": hist["loss"], "entropy": H, "heldout_loss": hist["heldout_loss"],
            "chars_per_s": hist["chars_per_s"], "sample": text, "vocab": vocab}


if __name__ == "__main__":
    main(sys.argv[1:])
