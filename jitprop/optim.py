"""Stochastic gradient descent over a model's flat parameter vector."""

import numpy as np

from ._checks import check_float
from ._registry import Registry
from .kernels import raw as K

__all__ = ["SGD", "OPTIMIZERS"]

#: Optimizer types a checkpoint can name (``@OPTIMIZERS.register`` adds one;
#: the class needs ``state_dict``, ``load_state_dict`` and ``from_state_dict``).
OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register
class SGD:
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

    def __init__(self, model, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False, clip_norm=None):
        self.model = model
        self.lr = check_float("lr", lr, minimum=0.0)
        self.momentum = check_float("momentum", momentum, minimum=0.0)
        self.weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov=True requires momentum > 0")
        self.clip_norm = None if clip_norm is None else check_float("clip_norm", clip_norm, minimum=0.0)
        p, g = model.flat_params, model.flat_grads
        if p.shape != g.shape or p.dtype != g.dtype or p.ndim != 1:
            raise ValueError("model.flat_params and model.flat_grads must be 1-D arrays of one shape and dtype")
        self.velocity = np.zeros_like(p)
        self.last_grad_norm = None
        self.steps = 0

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
                coef = self.clip_norm / (norm + 1e-6)
                if coef < 1.0:
                    K.scale_inplace(m.flat_grads, coef)
            self.last_grad_norm = norm
        K.sgd_step(m.flat_params, m.flat_grads, self.velocity, self.lr, self.momentum,
                   self.weight_decay, self.nesterov)
        self.steps += 1
        return norm

    def state_dict(self):
        """Optimizer state (hyper-parameters, momentum buffer, step count)."""
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "clip_norm": self.clip_norm,
                "velocity": self.velocity.copy(), "steps": self.steps}

    @classmethod
    def from_state_dict(cls, model, state):
        """A new optimizer for ``model`` in the state :meth:`state_dict` returned."""
        opt = cls(model, lr=state["lr"], momentum=state["momentum"], weight_decay=state["weight_decay"],
                  nesterov=state["nesterov"], clip_norm=state["clip_norm"])
        opt.load_state_dict(state)
        return opt

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned."""
        v = np.asarray(state["velocity"])
        if v.shape != self.velocity.shape:
            raise ValueError(f"velocity must have shape {self.velocity.shape}, got {v.shape}")
        self.velocity[...] = v
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.nesterov = bool(state["nesterov"])
        self.clip_norm = None if state["clip_norm"] is None else float(state["clip_norm"])
        self.steps = int(state["steps"])

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov}, clip_norm={self.clip_norm})")
