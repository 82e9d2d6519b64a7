"""Optimisers over a model's flat parameter vector: SGD, Adam and AdamW.

Every optimiser updates all of a model's parameters in one compiled call over
:attr:`~jitprop.Sequential.flat_params`, optionally after clipping the global
gradient norm, and allocates its state once, at construction.
"""

import numpy as np

from ._checks import check_betas, check_float
from ._registry import Registry
from .kernels import raw as K

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS"]

#: Optimizer types a checkpoint can name (``@OPTIMIZERS.register`` adds one;
#: the class needs ``state_dict``, ``load_state_dict`` and ``from_state_dict``).
OPTIMIZERS = Registry("optimizer")


class Optimizer:
    """Base class of jitprop optimisers.

    Subclasses set :attr:`state_names` (their per-parameter state arrays, each
    allocated here as zeros like the parameters), :attr:`hyper_names` (the
    constructor's float/bool arguments other than ``lr`` and ``clip_norm``) and
    implement :meth:`_update`.

    Attributes
    ----------
    model : Sequential
    lr : float
        Learning rate; may be read and assigned between steps (schedules do).
    clip_norm : float or None
        If set, the global L2 norm of all gradients is clipped to this value
        before the update (as ``torch.nn.utils.clip_grad_norm_``).
    steps : int
        Number of updates applied so far.
    last_grad_norm : float or None
        Gradient norm before clipping at the last step (when clipping).
    """

    state_names = ()
    hyper_names = ()

    def __init__(self, model, lr, clip_norm):
        self.model = model
        self.lr = lr
        self.clip_norm = None if clip_norm is None else check_float("clip_norm", clip_norm, minimum=0.0)
        p, g = model.flat_params, model.flat_grads
        if p.shape != g.shape or p.dtype != g.dtype or p.ndim != 1:
            raise ValueError("model.flat_params and model.flat_grads must be 1-D arrays of one shape and dtype")
        self.last_grad_norm = None
        self.steps = 0

    @property
    def lr(self):
        """The learning rate (a float >= 0)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_float("lr", value, minimum=0.0)

    def _alloc_state(self, names):
        for name in names:
            setattr(self, name, np.zeros_like(self.model.flat_params))

    def state_arrays(self):
        """The live per-parameter state arrays, by name (in :attr:`state_names` order)."""
        return {name: getattr(self, name) for name in self.state_names}

    def step(self, grad_norm=None):
        """Update the parameters from the current gradients.

        Parameters
        ----------
        grad_norm : float, optional
            The global gradient norm if the caller already computed it (saves
            a pass over the gradients when clipping).

        Returns
        -------
        float or None
            The gradient norm before clipping when ``clip_norm`` is set.
        """
        m = self.model
        norm = None
        if self.clip_norm is not None:
            if grad_norm is None:
                norm = K.clip_grad_norm(m.flat_grads, self.clip_norm)
            else:
                norm = grad_norm
                coef = self.clip_norm / (norm + K.CLIP_EPS)
                if coef < 1.0:
                    K.scale_inplace(m.flat_grads, coef)
            self.last_grad_norm = norm
        self._update()
        self.steps += 1
        return norm

    def _update(self):
        raise NotImplementedError

    def hyperparams(self):
        """The constructor's arguments (without the model) as a dict."""
        out = {"lr": self.lr}
        out.update({k: getattr(self, k) for k in self.hyper_names})
        out["clip_norm"] = self.clip_norm
        return out

    def state_dict(self):
        """Hyper-parameters, copies of the state arrays and the step count."""
        out = self.hyperparams()
        out.update({k: v.copy() for k, v in self.state_arrays().items()})
        out["steps"] = self.steps
        return out

    @classmethod
    def from_state_dict(cls, model, state):
        """A new optimizer for ``model`` in the state :meth:`state_dict` returned."""
        kwargs = {k: state[k] for k in ("lr",) + cls.hyper_names + ("clip_norm",)}
        opt = cls(model, **kwargs)
        opt.load_state_dict(state)
        return opt

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""
        arrays = {}
        for name, live in self.state_arrays().items():
            a = np.asarray(state[name])
            if a.shape != live.shape:
                raise ValueError(f"{name} must have shape {live.shape}, got {a.shape}")
            arrays[name] = a
        for name, a in arrays.items():
            getattr(self, name)[...] = a
        self.lr = state["lr"]
        for k in self.hyper_names:
            cur = getattr(self, k)
            setattr(self, k, tuple(float(b) for b in state[k]) if isinstance(cur, tuple)
                    else type(cur)(state[k]))
        self.clip_norm = None if state["clip_norm"] is None else float(state["clip_norm"])
        self.steps = int(state["steps"])

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


@OPTIMIZERS.register
class SGD(Optimizer):
    """SGD with momentum, weight decay and Nesterov momentum.

    Same update as ``torch.optim.SGD`` with dampening 0::

        g = grad + weight_decay * p
        v = momentum * v + g
        p -= lr * (g + momentum * v if nesterov else v)

    applied to every parameter of the model in one compiled call over its flat
    parameter vector.

    Parameters
    ----------
    model : Sequential
        Any object with ``flat_params`` and ``flat_grads`` arrays of one shape.
    lr : float, default 0.01
    momentum : float, default 0
    weight_decay : float, default 0
    nesterov : bool, default False
    clip_norm : float or None
        If set, the global L2 norm of all gradients is clipped to this value
        before the update (as ``torch.nn.utils.clip_grad_norm_``).

    Attributes
    ----------
    velocity : ndarray (n_params,)
        The momentum buffer (zeros until the first step with momentum).
    last_grad_norm : float or None
        Gradient norm before clipping at the last step (when clipping).
    """

    state_names = ("velocity",)
    hyper_names = ("momentum", "weight_decay", "nesterov")

    def __init__(self, model, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False, clip_norm=None):
        self.momentum = check_float("momentum", momentum, minimum=0.0)
        self.weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov=True requires momentum > 0")
        super().__init__(model, lr, clip_norm)
        self._alloc_state(self.state_names)

    def _update(self):
        m = self.model
        # small models take the serial twin: same arithmetic, no parallel kernel to compile
        step = K.sgd_step_serial if m.flat_params.size < K.PAR_MIN else K.sgd_step
        step(m.flat_params, m.flat_grads, self.velocity, self.lr, self.momentum, self.weight_decay, self.nesterov)


@OPTIMIZERS.register
class Adam(Optimizer):
    """Adam, with the arithmetic of ``torch.optim.Adam``.

    Per parameter, at step ``t`` (1 for the first)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g          (as torch's lerp)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v), used for v         (amsgrad)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    in one compiled call over the model's flat parameter vector.

    Parameters
    ----------
    model : Sequential
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999), each in [0, 1)
    eps : float, default 1e-8
    weight_decay : float, default 0 (L2 penalty added to the gradient)
    amsgrad : bool, default False
    clip_norm : float or None
        Clip the global gradient norm first (as ``torch.nn.utils.clip_grad_norm_``).

    Attributes
    ----------
    exp_avg, exp_avg_sq : ndarray (n_params,)
        First and second moments (torch's names).
    max_exp_avg_sq : ndarray (n_params,) with amsgrad, else (0,)
    steps : int
        Steps taken (torch's ``state["step"]``).
    """

    decoupled = False
    hyper_names = ("betas", "eps", "weight_decay", "amsgrad")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 clip_norm=None):
        self.betas = check_betas(betas)
        self.eps = check_float("eps", eps, minimum=0.0)
        self.weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"amsgrad must be a bool, got {amsgrad!r}")
        self.amsgrad = bool(amsgrad)
        super().__init__(model, lr, clip_norm)
        self.state_names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        self._alloc_state(self.state_names)
        if not self.amsgrad:
            self.max_exp_avg_sq = np.zeros(0, model.flat_params.dtype)

    def _update(self):
        m = self.model
        b1, b2 = self.betas
        # small models take the serial twin: same arithmetic, no parallel kernel to compile
        step = K.adam_step_serial if m.flat_params.size < K.PAR_MIN else K.adam_step
        step(m.flat_params, m.flat_grads, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq,
             self.steps + 1, self.lr, b1, b2, self.eps, self.weight_decay, self.amsgrad, self.decoupled)

    def load_state_dict(self, state):
        if bool(state["amsgrad"]) != self.amsgrad:
            raise ValueError(f"the state has amsgrad={bool(state['amsgrad'])}, this optimiser {self.amsgrad}")
        super().load_state_dict(state)


@OPTIMIZERS.register
class AdamW(Adam):
    """AdamW, with the arithmetic of ``torch.optim.AdamW``: as :class:`Adam`,
    but the decay is decoupled from the gradient and applied to the
    parameters first, ``p *= 1 - lr * weight_decay``.

    Parameters as :class:`Adam`, with ``weight_decay`` defaulting to 1e-2.
    """

    decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 clip_norm=None):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         clip_norm=clip_norm)
