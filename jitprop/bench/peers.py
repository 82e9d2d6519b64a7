"""PyTorch and JAX implementations of the ``python -m jitprop.bench`` workloads.

Each ``make_<framework>_step(spec, data, threads)`` returns ``(step, sync)``:

* ``step(i)`` runs one full float32 training step (forward, loss, backward,
  plain SGD update, or Adam for the ``-adam`` workloads, with lr = spec["lr"])
  on batch ``i % n_batches`` and returns the loss (a framework object; it is not converted to a Python float in the
  timed loop).
* ``sync()`` blocks until every step issued so far has finished (a no-op for
  eager PyTorch, ``block_until_ready`` on the parameters for JAX).

These functions run inside the benchmark's per-(framework, threads) worker
subprocess, after the environment (thread variables, XLA_FLAGS, CPU affinity)
has been set, so importing torch / jax here is what fixes their thread pools.

The networks mirror the jitprop ones exactly:

* ``kind == "mlp"``: Dense layers ``sizes[0] -> sizes[1] -> ...`` with
  ``spec["act"]`` ("relu" or "sigmoid") after every hidden Dense, and after the
  last one too when ``spec["final_act"]`` is true; loss "mse" (mean over all
  elements) or "xent" (softmax cross-entropy, mean over the batch, int labels).
* ``kind == "lstm"`` / ``"gru"``: one LSTM / GRU layer (n_in -> hidden, all T
  outputs) followed by a Dense(hidden, n_out) applied at every time step; MSE loss.
"""

import numpy as np


def _uniform_init(rng, fan_in, shape):
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


# --------------------------------------------------------------------------- #
# PyTorch (eager, torch.nn modules, torch.optim.SGD)
# --------------------------------------------------------------------------- #
def make_torch_step(spec, data, threads, variant=None):
    import torch

    if variant is not None:
        raise ValueError("unknown PyTorch variant %r" % variant)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only allowed before any inter-op work has started
        pass
    torch.manual_seed(0)

    nn = torch.nn
    if spec["kind"] == "mlp":
        act_cls = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[spec["act"]]
        sizes = spec["sizes"]
        layers = []
        for j in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[j], sizes[j + 1]))
            if j < len(sizes) - 2 or spec["final_act"]:
                layers.append(act_cls())
        model = nn.Sequential(*layers)
    elif spec["kind"] in ("lstm", "gru"):
        rnn_cls = nn.LSTM if spec["kind"] == "lstm" else nn.GRU

        class RNNRegressor(nn.Module):
            def __init__(self, n_in, n_hidden, n_out):
                super().__init__()
                self.rnn = rnn_cls(n_in, n_hidden, batch_first=True)
                self.head = nn.Linear(n_hidden, n_out)

            def forward(self, x):
                h, _ = self.rnn(x)
                return self.head(h)

        model = RNNRegressor(spec["n_in"], spec["hidden"], spec["n_out"])
    else:
        raise ValueError("unknown workload kind %r" % spec["kind"])
    model = model.float().train()

    if spec["loss"] == "mse":
        loss_fn = nn.MSELoss()
    elif spec["loss"] == "xent":
        loss_fn = nn.CrossEntropyLoss()
    else:
        raise ValueError("unknown loss %r" % spec["loss"])

    opt_cls = torch.optim.Adam if spec.get("opt") == "adam" else torch.optim.SGD
    opt = opt_cls(model.parameters(), lr=spec["lr"])
    xs = [torch.from_numpy(x) for x in data["X"]]
    ys = [torch.from_numpy(y) for y in data["Y"]]
    n = len(xs)

    def step(i):
        k = i % n
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xs[k]), ys[k])
        loss.backward()
        opt.step()
        return loss

    def sync():
        pass

    return step, sync


# --------------------------------------------------------------------------- #
# JAX (whole step under one jax.jit, params donated)
# --------------------------------------------------------------------------- #
def make_jax_step(spec, data, threads, variant=None):
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)
    lr = np.float32(spec["lr"])

    if spec["kind"] == "mlp":
        sizes = spec["sizes"]
        params = []
        for j in range(len(sizes) - 1):
            w = _uniform_init(rng, sizes[j], (sizes[j], sizes[j + 1]))
            b = _uniform_init(rng, sizes[j], (sizes[j + 1],))
            params.append((jnp.asarray(w), jnp.asarray(b)))
        act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[spec["act"]]
        n_layers = len(params)
        final_act = spec["final_act"]

        def forward(p, x):
            for j, (w, b) in enumerate(p):
                x = x @ w + b
                if j < n_layers - 1 or final_act:
                    x = act(x)
            return x

    elif spec["kind"] == "lstm":
        n_in, hid, n_out = spec["n_in"], spec["hidden"], spec["n_out"]
        params = {
            # gate order along the 4H axis: input, forget, cell candidate, output
            "wx": jnp.asarray(_uniform_init(rng, hid, (n_in, 4 * hid))),
            "wh": jnp.asarray(_uniform_init(rng, hid, (hid, 4 * hid))),
            "b": jnp.asarray(_uniform_init(rng, hid, (4 * hid,))),
            "wo": jnp.asarray(_uniform_init(rng, hid, (hid, n_out))),
            "bo": jnp.asarray(_uniform_init(rng, hid, (n_out,))),
        }

        hoisted = (variant or LSTM_JAX_VARIANTS[0]) == "einsum-hoisted"
        if variant not in (None,) + LSTM_JAX_VARIANTS:
            raise ValueError("unknown JAX LSTM variant %r" % variant)

        def gates(g, c):
            i = jax.nn.sigmoid(g[:, :hid])
            f = jax.nn.sigmoid(g[:, hid:2 * hid])
            gg = jnp.tanh(g[:, 2 * hid:3 * hid])
            o = jax.nn.sigmoid(g[:, 3 * hid:])
            c = f * c + i * gg
            return o * jnp.tanh(c), c

        def forward(p, x):  # x: (B, T, n_in) -> (B, T, n_out)
            batch = x.shape[0]
            if hoisted:
                # input projection for all time steps at once, time-major
                xs = jnp.einsum("bti,ig->tbg", x, p["wx"]) + p["b"]

                def cell(carry, g_x):
                    h, c = carry
                    h, c = gates(g_x + h @ p["wh"], c)
                    return (h, c), h
            else:
                # x_t @ W_x inside the step, beside h @ W_h
                xs = jnp.swapaxes(x, 0, 1)

                def cell(carry, x_t):
                    h, c = carry
                    h, c = gates(x_t @ p["wx"] + h @ p["wh"] + p["b"], c)
                    return (h, c), h

            zeros = jnp.zeros((batch, hid), x.dtype)
            _, hs = lax.scan(cell, (zeros, zeros), xs)  # (T, B, H)
            out = hs @ p["wo"] + p["bo"]  # (T, B, n_out)
            return jnp.swapaxes(out, 0, 1)

    elif spec["kind"] == "gru":
        n_in, hid, n_out = spec["n_in"], spec["hidden"], spec["n_out"]
        params = {
            # gate order along the 3H axis: reset, update, new (torch.nn.GRU's)
            "wx": jnp.asarray(_uniform_init(rng, hid, (n_in, 3 * hid))),
            "wh": jnp.asarray(_uniform_init(rng, hid, (hid, 3 * hid))),
            "bx": jnp.asarray(_uniform_init(rng, hid, (3 * hid,))),
            "bh": jnp.asarray(_uniform_init(rng, hid, (3 * hid,))),
            "wo": jnp.asarray(_uniform_init(rng, hid, (hid, n_out))),
            "bo": jnp.asarray(_uniform_init(rng, hid, (n_out,))),
        }

        def forward(p, x):  # x: (B, T, n_in) -> (B, T, n_out)
            batch = x.shape[0]
            xg = jnp.einsum("bti,ig->tbg", x, p["wx"]) + p["bx"]

            def cell(h, g_x):
                u = h @ p["wh"] + p["bh"]
                r = jax.nn.sigmoid(g_x[:, :hid] + u[:, :hid])
                z = jax.nn.sigmoid(g_x[:, hid:2 * hid] + u[:, hid:2 * hid])
                n = jnp.tanh(g_x[:, 2 * hid:] + r * u[:, 2 * hid:])
                h = (1.0 - z) * n + z * h
                return h, h

            _, hs = lax.scan(cell, jnp.zeros((batch, hid), x.dtype), xg)  # (T, B, H)
            out = hs @ p["wo"] + p["bo"]
            return jnp.swapaxes(out, 0, 1)

    else:
        raise ValueError("unknown workload kind %r" % spec["kind"])

    if spec["loss"] == "mse":

        def loss_fn(p, x, y):
            d = forward(p, x) - y
            return jnp.mean(d * d)

    elif spec["loss"] == "xent":

        def loss_fn(p, x, y):
            logp = jax.nn.log_softmax(forward(p, x), axis=-1)
            picked = jnp.take_along_axis(logp, y[:, None], axis=-1)
            return -jnp.mean(picked)

    else:
        raise ValueError("unknown loss %r" % spec["loss"])

    if spec.get("opt") == "adam":
        import optax  # the Adam workloads compare against optax.adam (ImportError when it is absent)

        tx = optax.adam(spec["lr"])

        def train_step(p, o, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, loss

        opt_state = tx.init(params)
    else:
        def train_step(p, o, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            p = jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grads)
            return p, o, loss

        opt_state = ()

    train_step = jax.jit(train_step, donate_argnums=(0, 1))

    xs = [jax.device_put(x) for x in data["X"]]
    ys = [jax.device_put(y.astype(np.int32) if y.dtype.kind == "i" else y) for y in data["Y"]]
    n = len(xs)
    state = {"p": params, "o": opt_state}

    def step(i):
        k = i % n
        state["p"], state["o"], loss = train_step(state["p"], state["o"], xs[k], ys[k])
        return loss

    def sync():
        jax.block_until_ready(state["p"])

    return step, sync


MAKERS = {"torch": make_torch_step, "jax": make_jax_step}

#: The JAX LSTM's formulations: ``x_t @ W_x`` per step inside the scan, or the
#: input projection of all steps hoisted into one einsum before it.  Neither
#: is faster everywhere (issue 17: on lstm-mid at 1 thread the hoisted one ran
#: at 724 sequences/s, the per-step one at 1,038-1,471), so the benchmark
#: measures both and compares against the faster.
LSTM_JAX_VARIANTS = ("xw-in-scan", "einsum-hoisted")


def variants(framework, spec):
    """The formulations of ``framework`` the benchmark measures for a
    workload (``[None]``: just the one)."""
    if framework == "jax" and spec["kind"] == "lstm":
        return list(LSTM_JAX_VARIANTS)
    return [None]


def framework_version(name):
    """Installed version of a peer framework without importing it (None if absent)."""
    try:
        from importlib import metadata

        if name == "jax":
            return metadata.version("jax") + " (jaxlib " + metadata.version("jaxlib") + ")"
        return metadata.version(name)
    except Exception:
        return None
