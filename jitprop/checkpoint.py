"""Checkpoints: a portable ``.npz`` file with a JSON header, written atomically.

File format (version 1), an uncompressed NumPy ``.npz`` archive with members:

``header``
    0-d unicode array holding JSON: ``{"format": "jitprop-checkpoint",
    "version": 1, "dtype": ..., "layers": [{"type": "Dense", "config":
    {...}}, ...], "fuse": true, "loss": "MSELoss", "optimizer":
    {hyper-parameters, steps, and "type" for an optimizer other than SGD},
    "state": {epoch, step, rng state, running totals, ...} or null,
    "history": {...}, "params_sha256": ...}``.
``params``
    the model's flat parameter vector.
``velocity``
    SGD's momentum buffer (empty for other optimizers).
``optimizer/<name>``
    the optimizer's other per-parameter state arrays (Adam's ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``), named in the header's optimizer
    record under ``"arrays"``.
``order``
    the sample order of the epoch in progress (empty when none).
``state/<key>/...``
    arrays inside the training position (e.g. early stopping's best
    parameters); the header holds ``{"__array__": member}`` in their place.

A layer with state besides its parameters (Dropout's call counter) adds
``"state"`` to its entry in ``"layers"``.

No Python objects are pickled: loading never executes code from the file.
A write goes to a temporary file in the same directory, is flushed and
fsync'ed, then renamed over the target, so a crash mid-write leaves either
the old checkpoint or the new one, never a half-written file.

This module reads and writes plain records (:class:`Checkpoint`); the types
it names are found in the registries beside their classes (``LAYERS``,
``LOSSES``, ``OPTIMIZERS``).  :meth:`jitprop.Trainer.load` and
:func:`jitprop.load` build a trainer from one.
"""

import hashlib
import json
import os
import tempfile
import zipfile
from typing import NamedTuple

import numpy as np

from .layers import LAYERS
from .losses import LOSSES
from .lstm import LSTM  # noqa: F401  (registers the LSTM layer type)
from .model import Sequential
from .optim import OPTIMIZERS

__all__ = ["save", "read", "load_record", "Checkpoint", "CheckpointError"]

FORMAT = "jitprop-checkpoint"
VERSION = 1
#: The optimizer of version-1 headers that name none.
DEFAULT_OPTIMIZER = "SGD"


class CheckpointError(ValueError):
    """A checkpoint file is missing pieces, corrupt, or of an unknown format."""


class Checkpoint(NamedTuple):
    """What a checkpoint holds, rebuilt: the model, loss and optimizer (with its
    state), the history, and the training position (a plain dict with ``n``,
    ``batch_size``, ``epoch``, ``step``, ``total``, ``rng`` (bit-generator
    state) and ``order``; None when the file has none)."""

    model: Sequential
    loss: object
    optimizer: object
    history: object
    state: object


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _arrays_out(obj, path, members):
    """``obj`` with every ndarray inside (dicts and lists) replaced by
    ``{"__array__": member}``, the arrays put into ``members``."""
    if isinstance(obj, np.ndarray):
        members[path] = obj
        return {"__array__": path}
    if isinstance(obj, dict):
        return {k: _arrays_out(v, f"{path}/{k}", members) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_arrays_out(v, f"{path}/{i}", members) for i, v in enumerate(obj)]
    return obj


def _arrays_in(obj, arrays, path):
    """Undo :func:`_arrays_out` with the members read from ``path``."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            if obj["__array__"] not in arrays:
                raise CheckpointError(f"{path!r} is missing the array {obj['__array__']!r}")
            return arrays[obj["__array__"]]
        return {k: _arrays_in(v, arrays, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_arrays_in(v, arrays, path) for v in obj]
    return obj


def save(path, model, loss, optimizer, history=None, state=None):
    """Write a model, its loss type, optimizer state, history and training
    position (a plain dict as in :class:`Checkpoint`, or None) to ``path``
    atomically."""
    layers = []
    for layer in model.layers:
        if not hasattr(layer, "get_config"):
            raise TypeError(f"layer {layer!r} cannot be saved (no get_config)")
        spec = {"type": type(layer).__name__, "config": layer.get_config()}
        layer_state = layer.state_dict()
        if layer_state:
            spec["state"] = layer_state
        layers.append(spec)
    state = dict(state) if state else None
    order = np.zeros(0, np.int64)
    if state is not None and state.get("order") is not None:
        order = np.asarray(state.pop("order"), dtype=np.int64)
    members = {}
    state = _arrays_out(state, "state", members)
    opt_arrays = optimizer.state_arrays()
    opt_header = {k: v for k, v in optimizer.state_dict().items() if k not in opt_arrays}
    if type(optimizer).__name__ != DEFAULT_OPTIMIZER:
        opt_header["type"] = type(optimizer).__name__
        opt_header["arrays"] = list(opt_arrays)
        members.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
    velocity = opt_arrays.get("velocity", np.zeros(0, model.dtype))
    params = model.flat_params
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": model.dtype.name,
        "layers": layers,
        "fuse": model.fuse,
        "loss": type(loss).__name__,
        "optimizer": opt_header,
        "state": _jsonable(state),
        "history": _jsonable(history),
        "params_sha256": hashlib.sha256(params.tobytes()).hexdigest(),
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), params=params,
                     velocity=velocity, order=order, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
    return path


def read(path):
    """Read and verify a checkpoint; returns (header dict, arrays dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path!r} is not a readable jitprop checkpoint (corrupt or truncated): {e}") from e
    for key in ("header", "params", "velocity", "order"):
        if key not in arrays:
            raise CheckpointError(f"{path!r} is missing {key!r}: not a jitprop checkpoint")
    try:
        header = json.loads(str(arrays.pop("header")))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path!r} has a corrupt header: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a jitprop checkpoint")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has format version {header.get('version')}, this jitprop reads {VERSION}")
    if hashlib.sha256(arrays["params"].tobytes()).hexdigest() != header.get("params_sha256"):
        raise CheckpointError(f"{path!r}: parameters do not match their checksum (corrupt file)")
    return header, arrays


def load_record(path):
    """Read a checkpoint and rebuild its parts: a :class:`Checkpoint`."""
    header, arrays = read(path)
    built = []
    for spec in header["layers"]:
        cls = LAYERS.get(spec["type"])
        if cls is None:
            raise CheckpointError(f"unknown layer type {spec['type']!r} in {path!r}")
        layer = cls.from_config(spec["config"])
        layer.load_state_dict(spec.get("state", {}))
        built.append(layer)
    model = Sequential(built, fuse=header.get("fuse", True))
    if model.flat_params.shape != arrays["params"].shape or model.dtype.name != header["dtype"]:
        raise CheckpointError(f"{path!r}: parameter vector does not fit the stored architecture")
    model.set_params(arrays["params"])
    loss_cls = LOSSES.get(header["loss"])
    if loss_cls is None:
        raise CheckpointError(f"unknown loss {header['loss']!r} in {path!r}")
    o = dict(header["optimizer"])
    opt_name = o.pop("type", DEFAULT_OPTIMIZER)
    opt_cls = OPTIMIZERS.get(opt_name)
    if opt_cls is None:
        raise CheckpointError(f"unknown optimizer {opt_name!r} in {path!r}")
    names = o.pop("arrays", ["velocity"])
    opt_arrays = {k: arrays["velocity"] if k == "velocity" else arrays.get(f"optimizer/{k}") for k in names}
    missing = [k for k, v in opt_arrays.items() if v is None]
    if missing:
        raise CheckpointError(f"{path!r} is missing the optimizer's {', '.join(missing)}")
    opt = opt_cls.from_state_dict(model, dict(o, **opt_arrays))
    state = header.get("state")
    if state is not None:
        state = _arrays_in(state, arrays, path)
        state["order"] = arrays["order"].astype(np.int64)
    return Checkpoint(model, loss_cls(), opt, header.get("history"), state)
