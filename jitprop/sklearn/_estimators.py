"""MLPClassifier and MLPRegressor with scikit-learn's parameters, attributes
and behaviour, trained by the compiled kernels of :mod:`._kernels`."""

import threading
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import (
    _check_partial_fit_first_call,
    type_of_target,
    unique_labels,
)
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from .._threads import batch_parts, single_thread_blas
from . import _kernels as K

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC = ("sgd", "adam")
_HIDDEN = {"identity": K.ACT_IDENTITY, "relu": K.ACT_RELU, "logistic": K.ACT_LOGISTIC,
           "tanh": K.ACT_TANH}
_OUT = {"identity": K.ACT_IDENTITY, "logistic": K.ACT_LOGISTIC, "softmax": K.ACT_SOFTMAX,
        "exp": K.ACT_EXP}
#: Batch parts hold at least this many rows ...
MIN_PART_ROWS = 32
#: ... and a batch is cut only when its largest product has this many multiply-adds.
MIN_PART_PRODUCT = 1 << 18


def _n_parts(rows, units):
    """Parts of a batch of ``rows`` rows that run at the same time: from the
    batch and the machine's core count (NUMBA_NUM_THREADS), never from the
    current thread count, so the thread count never changes results."""
    largest = max(a * b for a, b in zip(units[:-1], units[1:])) * rows
    if largest < MIN_PART_PRODUCT:
        return 1
    return batch_parts(rows, MIN_PART_ROWS)


class _Net:
    """Flat layout of one network, as scikit-learn packs it: every weight
    matrix, then every intercept.  Builds workspaces for the kernels."""

    def __init__(self, units, hact, oact):
        self.units = list(units)
        L = len(units) - 1
        table = np.zeros((L, 4), np.int64)
        off = 0
        for i in range(L):
            table[i] = units[i], units[i + 1], off, 0
            off += units[i] * units[i + 1]
        self.ncoef = off
        for i in range(L):
            table[i, 3] = off
            off += units[i + 1]
        self.n_params = off
        self.table = table
        self.hact, self.oact = hact, oact

    def pack(self, coefs, intercepts, dtype):
        flat = np.empty(self.n_params, dtype)
        for i, (c, b) in enumerate(zip(coefs, intercepts)):
            n_in, n_out, oW, ob = self.table[i]
            if c.shape != (n_in, n_out) or b.shape != (n_out,):
                raise ValueError(f"coefs_[{i}] / intercepts_[{i}] have shapes {c.shape} / {b.shape}, "
                                 f"expected {(int(n_in), int(n_out))} / {(int(n_out),)} for "
                                 f"layer sizes {self.units}")
            flat[oW:oW + n_in * n_out] = c.ravel()
            flat[ob:ob + n_out] = b
        return flat

    def views(self, flat):
        coefs, intercepts = [], []
        for n_in, n_out, oW, ob in self.table:
            coefs.append(flat[oW:oW + n_in * n_out].reshape(n_in, n_out))
            intercepts.append(flat[ob:ob + n_out])
        return coefs, intercepts

    def workspace(self, rows, dtype, nparts, grad_blocks):
        """``(ws, stride, offs, hoff, rows_ws)`` for parts of ``rows`` rows."""
        rows_ws = max(1, min(rows, K.BLOCK_ROWS))
        u = self.units
        hoff = []
        off = 0
        for w in u[1:]:
            hoff.append(off)
            off += rows_ws * w
        offs = np.zeros(7, np.int64)
        dmax = rows_ws * max(u[1:])
        for idx, size in ((K.OFF_XB, rows_ws * u[0]), (K.OFF_D0, dmax), (K.OFF_D1, dmax),
                          (K.OFF_RL, rows_ws), (K.OFF_YB, rows_ws * u[-1]), (K.OFF_WB, rows_ws),
                          (K.OFF_TG, self.n_params if grad_blocks and rows > rows_ws else 0)):
            offs[idx] = off
            off += size
        return np.zeros(nparts * off, dtype), off, offs, np.array(hoff, np.int64), rows_ws


def _as_kernel_input(X, dtype):
    """``(X dense or (0, F), data, indices, indptr, sparse)`` for the kernels."""
    if sp.issparse(X):
        X = X.tocsr()
        data = np.ascontiguousarray(X.data, dtype=dtype)
        return (np.zeros((0, X.shape[1]), dtype), data, np.ascontiguousarray(X.indices, np.int64),
                np.ascontiguousarray(X.indptr, np.int64), True)
    e = np.zeros(0, np.int64)
    return np.ascontiguousarray(X, dtype=dtype), np.zeros(0, dtype), e, e, False


class _WorkerThreads:
    """Numba threads during a fit or predict: one inside a joblib worker
    thread (threading backend), where several fits share the process, so
    that Python threads and Numba threads do not multiply.  Process workers
    (loky, multiprocessing) need nothing: joblib starts them with
    NUMBA_NUM_THREADS, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set to
    cores // n_jobs.  Numba's thread count is per thread, so this does not
    touch other threads."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is not threading.main_thread() and _in_joblib_worker():
            import numba

            self.old = numba.get_num_threads()
            numba.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            import numba

            numba.set_num_threads(self.old)


def _in_joblib_worker():
    try:
        from joblib.parallel import get_active_backend
    except ImportError:  # pragma: no cover - joblib comes with scikit-learn
        return False
    backend, _ = get_active_backend()
    return (getattr(backend, "nesting_level", 0) or 0) > 0


class _Optimizer:
    """scikit-learn's SGD / Adam state over the flat parameter vector, and its
    learning-rate schedule (``iteration_ends``, ``trigger_stopping``)."""

    def __init__(self, est, n_params, dtype):
        self.solver = est.solver
        self.learning_rate_init = est.learning_rate_init
        self.learning_rate = float(est.learning_rate_init)
        self.lr_schedule = est.learning_rate
        self.momentum = est.momentum
        self.nesterov = est.nesterovs_momentum
        self.power_t = est.power_t
        self.beta_1, self.beta_2, self.epsilon = est.beta_1, est.beta_2, est.epsilon
        self.t = 0
        empty = np.zeros(0, dtype)
        if self.solver == "sgd":
            self.vel, self.m1, self.m2 = np.zeros(n_params, dtype), empty, empty
        else:
            self.vel, self.m1, self.m2 = empty, np.zeros(n_params, dtype), np.zeros(n_params, dtype)

    def iteration_ends(self, time_step):
        if self.solver == "sgd" and self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.solver == "adam" or self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class _BaseMLP(BaseEstimator):
    """Shared fit/predict machinery (not for direct use)."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dtype": [None, StrOptions({"float32", "float64"}), type, np.dtype],
    }

    # -- shared helpers ---------------------------------------------------------
    def _train_dtype(self, X):
        if self.dtype is None:
            return X.dtype
        dt = np.dtype(self.dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be None, float32 or float64, got {self.dtype!r}")
        return dt

    def _loss_code(self):
        if self.out_activation_ == "softmax":
            return K.LOSS_LOG
        if self.out_activation_ == "logistic":
            return K.LOSS_BINARY_LOG
        if self.out_activation_ == "exp":
            return K.LOSS_POISSON
        return K.LOSS_SQUARED

    def _net(self):
        units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        return _Net(units, _HIDDEN[self.activation], _OUT[self.out_activation_])

    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        # the same draws from the same RandomState as scikit-learn (Glorot
        # uniform, weights then intercept, layer by layer): same random_state,
        # same initial weights
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
            self.intercepts_.append(self._random_state.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        if self.solver in _STOCHASTIC:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _fit(self, X, y, sample_weight=None, incremental=False):
        self._validate_params()
        hidden = self.hidden_layer_sizes
        if not hasattr(hidden, "__iter__"):
            hidden = [hidden]
        hidden = list(hidden)
        if np.any(np.array(hidden) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % hidden)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = self._train_dtype(X)
        if X.dtype != dtype:
            X = X.astype(dtype)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype)
        net = self._net()
        if net.units != layer_units:
            raise ValueError(f"the fitted network has layer sizes {net.units}, but this fit needs "
                             f"{layer_units}: set warm_start=False or keep hidden_layer_sizes")
        with _WorkerThreads(), single_thread_blas():
            if self.solver in _STOCHASTIC:
                self._fit_stochastic(X, y, sample_weight, net, dtype, incremental)
            else:
                self._fit_lbfgs(X, y, sample_weight, net, dtype)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    def _kernel_args(self, X, Y, sample_weight, dtype):
        x, xd, xi, xp, sparse = _as_kernel_input(X, dtype)
        Yk = np.ascontiguousarray(Y, dtype=dtype)
        if sample_weight is None:
            return x, xd, xi, xp, sparse, Yk, np.zeros(0, dtype), False
        return x, xd, xi, xp, sparse, Yk, np.ascontiguousarray(sample_weight, dtype=dtype), True

    def _fit_stochastic(self, X, y, sample_weight, net, dtype, incremental):
        flat = net.pack(self.coefs_, self.intercepts_, dtype)
        self.coefs_, self.intercepts_ = net.views(flat)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = _Optimizer(self, net.n_params, dtype)
        opt = self._optimizer
        if opt.vel.size + opt.m1.size != net.n_params or (opt.vel.size and opt.vel.dtype != dtype) or \
                (opt.m1.size and opt.m1.dtype != dtype):
            self._optimizer = opt = _Optimizer(self, net.n_params, dtype)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            if sample_weight is None:
                X_train, X_val, y_train, y_val = train_test_split(
                    X, y, random_state=self._random_state, test_size=self.validation_fraction,
                    stratify=stratify)
                sw_train = sw_val = None
            else:
                X_train, X_val, y_train, y_val, sw_train, sw_val = train_test_split(
                    X, y, sample_weight, random_state=self._random_state,
                    test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None

        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=np.int64)
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        x, xd, xi, xp, sparse, Yk, sw, use_sw = self._kernel_args(X_train, y_train, sw_train, dtype)
        nparts = _n_parts(batch_size, net.units)
        ws, stride, offs, hoff, rows_ws = net.workspace(-(-batch_size // nparts), dtype, nparts, True)
        grads = np.zeros(net.n_params, dtype)
        gx = np.zeros((nparts - 1, net.n_params), dtype)
        part_loss = np.zeros(nparts, np.float64)
        loss_code = self._loss_code()
        eps_clip = float(np.finfo(dtype).eps)
        update = K.UPDATE_SGD if self.solver == "sgd" else K.UPDATE_ADAM
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    # the draws of scikit-learn's shuffle(sample_idx, random_state=...),
                    # without its per-call argument validation (most of an epoch on small data)
                    perm = np.arange(n_samples)
                    self._random_state.shuffle(perm)
                    sample_idx = sample_idx[perm]
                lr = opt.learning_rate if update == K.UPDATE_SGD else opt.learning_rate_init
                acc, opt.t = K.train_epoch(
                    x, xd, xi, xp, sparse, Yk, sw, use_sw, sample_idx, batch_size, net.table,
                    net.ncoef, net.hact, net.oact, loss_code, float(self.alpha), eps_clip, flat, grads,
                    gx, ws, stride, offs, hoff, rows_ws, part_loss, update, lr, float(opt.momentum),
                    bool(opt.nesterov), float(opt.beta_1), float(opt.beta_2), float(opt.epsilon),
                    opt.t, opt.vel, opt.m1, opt.m2)
                self.n_iter_ += 1
                self.loss_ = acc / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sw_val)
                opt.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than tol=%f for %d consecutive "
                               "epochs." % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f for %d consecutive "
                               "epochs." % (self.tol, self.n_iter_no_change))
                    if opt.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                                  "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            self.coefs_ = self._best_coefs
            self.intercepts_ = self._best_intercepts

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight):
        if early_stopping:
            val_score = self._score(X, y, sample_weight=sample_weight)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            last = self.validation_scores_[-1]
            if last < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last > self.best_validation_score_:
                self.best_validation_score_ = last
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    def _fit_lbfgs(self, X, y, sample_weight, net, dtype):
        # L-BFGS-B runs in float64 (scipy's arithmetic), so the objective is
        # evaluated in float64 too; the weights are stored back in ``dtype``
        f64 = np.float64
        x, xd, xi, xp, sparse, Yk, sw, use_sw = self._kernel_args(X, y, sample_weight, f64)
        n = X.shape[0]
        nparts = _n_parts(n, net.units)
        ws, stride, offs, hoff, rows_ws = net.workspace(-(-n // nparts), f64, nparts, True)
        flat = net.pack(self.coefs_, self.intercepts_, f64)
        grads = np.zeros(net.n_params, f64)
        gx = np.zeros((nparts - 1, net.n_params), f64)
        part_loss = np.zeros(nparts, f64)
        order = np.arange(n, dtype=np.int64)
        loss_code = self._loss_code()
        empty = np.zeros(0, f64)
        eps_clip = float(np.finfo(f64).eps)
        alpha = float(self.alpha)

        def loss_grad(w):
            flat[:] = w
            acc, _ = K.train_epoch(x, xd, xi, xp, sparse, Yk, sw, use_sw, order, n, net.table, net.ncoef,
                                   net.hact, net.oact, loss_code, alpha, eps_clip, flat, grads, gx, ws,
                                   stride, offs, hoff, rows_ws, part_loss, K.UPDATE_NONE, 0.0, 0.0, False,
                                   0.0, 0.0, 1.0, 0, empty, empty, empty)
            return acc / n, grads.copy()

        res = scipy.optimize.minimize(loss_grad, flat.copy(), method="L-BFGS-B", jac=True,
                                      options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                                               "gtol": self.tol})
        if res.status != 0:
            warnings.warn("lbfgs failed to converge after %d iteration(s) (status=%d):\n%s\n\n"
                          "Increase the number of iterations to improve the convergence "
                          "(max_iter=%d).\nYou might also want to scale the data as shown in:\n"
                          "    https://scikit-learn.org/stable/modules/preprocessing.html"
                          % (res.nit, res.status, res.message, self.max_iter), ConvergenceWarning)
        self.n_iter_ = min(res.nit, self.max_iter)
        self.loss_ = float(res.fun)
        if self.verbose:
            print("L-BFGS-B: %d iterations, loss = %.8f (%s)" % (self.n_iter_, self.loss_, res.message))
        self.coefs_, self.intercepts_ = net.views(res.x.astype(dtype))

    def _forward_pass_fast(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        dtype = np.result_type(X.dtype, self.coefs_[0].dtype)
        if dtype.kind != "f" or dtype.itemsize < 4:
            dtype = np.dtype(np.float64)
        net = self._net()
        flat = net.pack(self.coefs_, self.intercepts_, dtype)
        x, xd, xi, xp, sparse = _as_kernel_input(X, dtype)
        n = X.shape[0]
        out = np.empty((n, self.n_outputs_), dtype)
        if n == 0:
            return out
        nparts = _n_parts(n, net.units)
        ws, stride, offs, hoff, rows_ws = net.workspace(-(-n // nparts), dtype, nparts, False)
        with _WorkerThreads(), single_thread_blas():
            K.predict(x, xd, xi, xp, sparse, np.arange(n, dtype=np.int64), net.table, flat, net.hact,
                      net.oact, ws, stride, offs, hoff, rows_ws, nparts, out)
        return out

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {ndarray, sparse matrix} of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC:
            raise AttributeError("partial_fit is only available for stochastic optimizers. "
                                 "%s is not stochastic." % self.solver)
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_DOC_PARAMS = """
    Parameters
    ----------
    As scikit-learn's ``{name}`` (same names, order, defaults and meaning),
    followed by the jitprop-only parameter:

    dtype : None, 'float32' or 'float64', default=None
        Training dtype.  None follows scikit-learn: float32 input trains in
        float32, anything else in float64.  ``'float32'`` converts float64
        input once and trains in float32 (about twice the throughput).

    See the README section "scikit-learn drop-in" for the few places where
    results differ from scikit-learn's and why.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron classifier, a drop-in for "
               "``sklearn.neural_network.MLPClassifier`` trained by jitprop's compiled kernels.\n"
               + _DOC_PARAMS.format(name="MLPClassifier"))

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    loss = "log_loss"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in "
                                     f"the previous call to fit. Previously got {self.classes_}, `y` "
                                     f"has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def predict(self, X):
        """Predict using the multi-layer perceptron classifier."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single iteration over the given data
        (``classes`` is required on the first call)."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def predict_proba(self, X):
        """Probability estimates, shape (n_samples, n_classes)."""
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("Multi-layer perceptron regressor, a drop-in for "
               "``sklearn.neural_network.MLPRegressor`` trained by jitprop's compiled kernels.\n"
               + _DOC_PARAMS.format(name="MLPRegressor"))

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, dtype=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype

    def predict(self, X):
        """Predict using the multi-layer perceptron model."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    # as in scikit-learn 1.9, partial_fit is offered for every solver (its
    # availability test is not called there); with lbfgs it runs lbfgs
    @available_if(lambda est: est._check_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single iteration over the given data."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
